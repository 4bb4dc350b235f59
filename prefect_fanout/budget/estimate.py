"""What one call may spend, estimated before it is sent.

Input tokens are counted with ``tiktoken`` when it is installed and can load the encoding
of an OpenAI model (its encodings download on first use; offline, or for other models,
the count falls back). The fallback is the limiter's rule
(:mod:`prefect_fanout.limits.estimate`): characters / 4, rounded up, plus 4 per message.
Output tokens are bounded by the request's ``max_tokens`` (1024 when it sets none). The
cost range runs from the input alone (the answer might be empty) to the input plus a full
``max_tokens`` answer, at the request's prices (the profile's, else OpenAI's table for
OpenAI's base URL); None when the price is unknown.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prefect_fanout.limits.estimate import (
    CHARS_PER_TOKEN,
    DEFAULT_COMPLETION_TOKENS,
    TOKENS_PER_MESSAGE,
)
from prefect_fanout.llm.pricing import cost_usd
from prefect_fanout.llm.request import CallRequest

__all__ = ["CallEstimate", "count_text", "estimate_call", "input_tokens", "tokenizer_name"]

FALLBACK = "chars/4"
"""The name of the limiter's estimate, as reports show it."""


@dataclass(frozen=True)
class CallEstimate:
    """What one call may spend.

    Attributes:
        input_tokens: Prompt tokens (the tokenizer's count, or the estimate).
        output_tokens: Completion tokens at most: the request's ``max_tokens``.
        usd_low: Cost with an empty answer; None when the price is unknown.
        usd_high: Cost with a full ``max_tokens`` answer; None when the price is unknown.
        tokenizer: ``tiktoken:ENCODING`` or ``chars/4``.
    """

    input_tokens: int
    output_tokens: int
    usd_low: float | None
    usd_high: float | None
    tokenizer: str = FALLBACK

    @property
    def tokens(self) -> int:
        """Input plus the most output: what a budget reserves for the call."""
        return self.input_tokens + self.output_tokens


@functools.lru_cache(maxsize=32)
def _encoding(model: str) -> Any:
    """The tiktoken encoding of a model, or None (not installed, unknown model, offline)."""
    try:
        import tiktoken

        return tiktoken.encoding_for_model(model)
    except Exception:  # optional: missing, an unknown model, or no network for its file
        return None


def tokenizer_name(model: str) -> str:
    """What counts a model's input tokens here: ``tiktoken:ENCODING`` or ``chars/4``."""
    encoding = _encoding(model)
    return f"tiktoken:{encoding.name}" if encoding is not None else FALLBACK


def count_text(text: str, model: str) -> int:
    """The tokens of ``text`` for ``model``.

    tiktoken's count when it knows the model, else the estimate (characters / 4, rounded up).
    """
    encoding = _encoding(model)
    if encoding is not None:
        return len(encoding.encode(text, disallowed_special=()))
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content", "")
    return content if isinstance(content, str) else str(content)


def input_tokens(messages: Iterable[Mapping[str, Any]], model: str) -> int:
    """The prompt tokens of ``messages`` for ``model`` (a tokenizer's count, else the estimate)."""
    encoding = _encoding(model)
    total = 0
    for message in messages:
        text = _text(message)
        if encoding is not None:
            total += len(encoding.encode(text, disallowed_special=())) + TOKENS_PER_MESSAGE
        else:
            total += math.ceil(len(text) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE
    return total


def estimate_call(request: CallRequest) -> CallEstimate:
    """What ``request`` may spend (see the module for the rule)."""
    prompt = input_tokens(request.messages, request.model)
    completion = request.max_tokens or DEFAULT_COMPLETION_TOKENS
    prices = (request.input_price_per_million, request.output_price_per_million)
    low = cost_usd(request.model, prompt, 0, *prices, base_url=request.base_url)
    high = cost_usd(request.model, prompt, completion, *prices, base_url=request.base_url)
    return CallEstimate(prompt, completion, low, high, tokenizer_name(request.model))
