"""The tokens a request is counted for before it is sent.

The estimate is the prompt's characters divided by :data:`CHARS_PER_TOKEN`
(rounded up), plus :data:`TOKENS_PER_MESSAGE` for each message's framing, plus
the completion budget: the request's ``max_tokens``, or
:data:`DEFAULT_COMPLETION_TOKENS` when it sets none. English text averages about
four characters per token, so the estimate is usually above what the server
reports; after the answer, the limiter is corrected with the reported usage.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
DEFAULT_COMPLETION_TOKENS = 1024


def estimate_tokens(messages: Iterable[Mapping[str, Any]], max_tokens: int | None) -> int:
    """Tokens to count for a request before it is sent (prompt estimate + completion budget).

    Args:
        messages: The chat messages as sent.
        max_tokens: The request's completion budget, or None for the default.

    Returns:
        The estimate, at least 1.
    """
    prompt = 0
    for message in messages:
        content = message.get("content", "")
        text = content if isinstance(content, str) else str(content)
        prompt += math.ceil(len(text) / CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE
    completion = max_tokens if max_tokens is not None else DEFAULT_COMPLETION_TOKENS
    return max(1, prompt + completion)


def reported_tokens(body: Any) -> int | None:
    """The total tokens a chat-completions answer reports, or None when it reports none."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if total is None:
        total = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
    try:
        return int(total)
    except (TypeError, ValueError):
        return None
