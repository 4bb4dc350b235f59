"""What a provider says of its own rate limits: the ``x-ratelimit-*`` headers of an answer.

OpenAI, and many OpenAI-compatible providers and proxies, send with every answer
(429s included)::

    x-ratelimit-limit-requests: 600        x-ratelimit-limit-tokens: 150000
    x-ratelimit-remaining-requests: 599    x-ratelimit-remaining-tokens: 148976
    x-ratelimit-reset-requests: 100ms      x-ratelimit-reset-tokens: 409ms

``limit`` is the per-minute rate, ``remaining`` what is left of it now, ``reset``
the time until it is whole again. :func:`read_headers` turns them into a
:class:`ProviderLimits` (None when an answer has none of them); the limiter paces
to the limits it learns (:mod:`prefect_fanout.limits.limiter`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect_fanout.limits.backoff import reset_seconds


@dataclass(frozen=True)
class ProviderLimits:
    """The rate limits one answer reported.

    Attributes:
        requests_per_minute: ``x-ratelimit-limit-requests``.
        tokens_per_minute: ``x-ratelimit-limit-tokens``.
        remaining_requests: ``x-ratelimit-remaining-requests``.
        remaining_tokens: ``x-ratelimit-remaining-tokens``.
        reset_requests_s: ``x-ratelimit-reset-requests``, in seconds.
        reset_tokens_s: ``x-ratelimit-reset-tokens``, in seconds.
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests_s: float | None = None
    reset_tokens_s: float | None = None


def _whole(value: Any) -> int | None:
    try:
        number = int(float(str(value).strip()))
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None


def read_headers(headers: Mapping[str, str] | None) -> ProviderLimits | None:
    """The limits in an answer's headers, or None when it carries none.

    Args:
        headers: The HTTP answer's headers (any case; httpx's are case-insensitive).

    Returns:
        What they say; a limit of 0 or one that cannot be read counts as absent.
    """
    if not headers:
        return None

    def get(name: str) -> str | None:
        value = headers.get(name)
        if value is None and not hasattr(headers, "get_list"):
            value = next((v for k, v in headers.items() if k.lower() == name), None)
        return value

    rpm = _whole(get("x-ratelimit-limit-requests"))
    tpm = _whole(get("x-ratelimit-limit-tokens"))
    if not rpm and not tpm:
        return None
    resets = [get(f"x-ratelimit-reset-{kind}") for kind in ("requests", "tokens")]
    return ProviderLimits(
        requests_per_minute=rpm or None,
        tokens_per_minute=tpm or None,
        remaining_requests=_whole(get("x-ratelimit-remaining-requests")),
        remaining_tokens=_whole(get("x-ratelimit-remaining-tokens")),
        reset_requests_s=reset_seconds(resets[0]) if resets[0] else None,
        reset_tokens_s=reset_seconds(resets[1]) if resets[1] else None,
    )
