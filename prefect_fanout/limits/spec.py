"""An endpoint's limits as one checked value: concurrency, requests and tokens per minute."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect_fanout.errors import ConfigurationError

#: How each limit is named where a user sets it: block field, plan field, CLI flag.
LIMIT_NAMES: dict[str, tuple[str, str]] = {
    "max_concurrency": ("config.max_concurrency", "--max-concurrency"),
    "requests_per_minute": ("config.requests_per_minute", "--rpm"),
    "tokens_per_minute": ("config.tokens_per_minute", "--tpm"),
}


def check_limit(value: Any, where: str) -> int | None:
    """A limit as a whole number above 0, or None when unset.

    Args:
        value: The value given (None means "no limit").
        where: How the user set it (a flag, ``config.FIELD`` or a block field), for the message.

    Returns:
        The value as an int, or None.

    Raises:
        ConfigurationError: The value is not a whole number greater than 0.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ConfigurationError(
            f"{where} must be a whole number greater than 0, got {value!r}; "
            f"leave it unset for no limit"
        )
    if value <= 0:
        raise ConfigurationError(
            f"{where} must be greater than 0, got {value!r}; give a positive number "
            f"(e.g. {where} 60) or leave it unset for no limit"
            if where.startswith("--")
            else f"{where} must be greater than 0, got {value!r}; set a positive number "
            "or remove it for no limit"
        )
    return int(value)


@dataclass(frozen=True)
class LimitSpec:
    """The limits every call to one endpoint shares.

    Attributes:
        max_concurrency: Requests in flight at once, across every process.
        requests_per_minute: Requests started per minute, spread evenly.
        tokens_per_minute: Tokens (estimated before, corrected after) per minute.
    """

    max_concurrency: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    def __post_init__(self) -> None:
        for field in ("max_concurrency", "requests_per_minute", "tokens_per_minute"):
            check_limit(getattr(self, field), field)

    @property
    def any(self) -> bool:
        """True when at least one limit is set."""
        return bool(self.max_concurrency or self.requests_per_minute or self.tokens_per_minute)

    @classmethod
    def of(cls, source: Any) -> LimitSpec:
        """The limits an endpoint (or anything with the three attributes) carries."""
        return cls(
            max_concurrency=getattr(source, "max_concurrency", None),
            requests_per_minute=getattr(source, "requests_per_minute", None),
            tokens_per_minute=getattr(source, "tokens_per_minute", None),
        )


def check_request_fits(tokens_per_minute: int | None, estimate: int, what: str) -> None:
    """Refuse a request counted for more tokens than the whole per-minute limit.

    Such a request could never be sent within the limit (a smaller one always can:
    one bigger than a span takes a span of its own and owes the rest).

    Args:
        tokens_per_minute: The endpoint's token limit (None: no limit, nothing to check).
        estimate: The tokens the request is counted for before it is sent.
        what: How the estimate is made up, for the message (e.g. ``max_tokens 1024 + prompt``).

    Raises:
        ConfigurationError: The estimate is above ``tokens_per_minute``.
    """
    if tokens_per_minute is None or estimate <= tokens_per_minute:
        return
    raise ConfigurationError(
        f"--tpm {tokens_per_minute} (tokens_per_minute) is below one request's estimate "
        f"of {estimate:,} tokens ({what}), so no request could ever be sent; lower the "
        f"completion budget (--max-tokens, the profile's max_tokens) or the prompt so a "
        f"request is counted for at most {tokens_per_minute:,} tokens, or raise --tpm"
    )


def check_completion_budget(endpoint: Any, max_tokens: int | None) -> None:
    """Refuse, before any call, a completion budget that alone is above the token limit.

    Args:
        endpoint: The endpoint (its ``tokens_per_minute``, if any, is checked).
        max_tokens: The agent's completion budget (None: the default one).

    Raises:
        ConfigurationError: Even the smallest request would be counted for more tokens
            than ``tokens_per_minute``; the message names ``--tpm``, the estimate and
            ``--max-tokens``.
    """
    from prefect_fanout.limits.estimate import (
        DEFAULT_COMPLETION_TOKENS,
        TOKENS_PER_MESSAGE,
        estimate_tokens,
    )

    budget = DEFAULT_COMPLETION_TOKENS if max_tokens is None else max_tokens
    check_request_fits(
        getattr(endpoint, "tokens_per_minute", None),
        estimate_tokens([{"content": ""}], max_tokens),
        f"max_tokens {budget} + at least {TOKENS_PER_MESSAGE} for the prompt",
    )
