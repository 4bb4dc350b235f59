"""A call's context: how many tokens one request may fill, and how its input is counted.

The context of an agent's calls, first found:

1. the profile's ``context_tokens``;
2. the endpoint's ``context_tokens``;
3. what the server says (llama.cpp's ``/props``, vLLM's ``/v1/models``; see
   :mod:`prefect_fanout.llm.serverinfo`);
4. unknown: no input is checked, and a long one fails at the server as before.

The input is counted, first that works, by:

1. the server's own tokenizer (llama.cpp's ``POST /tokenize``);
2. tiktoken, for a model it knows (OpenAI's; only when tiktoken is installed:
   ``pip install 'prefect-fanout[tokens]'``);
3. the estimate: characters / 4, rounded up.

Each message adds :data:`~prefect_fanout.limits.estimate.TOKENS_PER_MESSAGE` for its framing.
An input fits when its tokens plus the answer's ``max_tokens`` fit the context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefect_fanout.budget.estimate import count_text, tokenizer_name
from prefect_fanout.limits.estimate import DEFAULT_COMPLETION_TOKENS, TOKENS_PER_MESSAGE
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.serverinfo import count_tokens_at_server

__all__ = ["TokenCounter", "answer_reserve"]


def answer_reserve(max_tokens: int | None) -> int:
    """The tokens kept in the context for the answer: ``max_tokens`` (1024 when unset)."""
    return max_tokens if max_tokens is not None else DEFAULT_COMPLETION_TOKENS


@dataclass(frozen=True)
class TokenCounter:
    """Counts text in a model's tokens, by the best means at hand (see the module).

    Attributes:
        model: The model whose tokens are counted.
        endpoint: The server asked to tokenize (None: tiktoken or the estimate).
    """

    model: str
    endpoint: LLMEndpoint | None = None

    @property
    def name(self) -> str:
        """What counts: ``server /tokenize``, ``tiktoken:ENCODING`` or ``chars/4``."""
        if self.endpoint is not None and count_tokens_at_server(self.endpoint, "x") is not None:
            return "server /tokenize"
        return tokenizer_name(self.model)

    def count(self, text: str) -> int:
        """The tokens of ``text``."""
        if self.endpoint is not None:
            counted = count_tokens_at_server(self.endpoint, text)
            if counted is not None:
                return counted
        return count_text(text, self.model)

    def messages(self, messages: Sequence[Mapping[str, Any]]) -> int:
        """The prompt tokens of chat messages (their texts counted together, plus framing)."""
        texts = [_text(message) for message in messages]
        return self.count("\n".join(texts)) + TOKENS_PER_MESSAGE * len(texts)


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content", "")
    return content if isinstance(content, str) else str(content)


def chars_per_token(text: str, tokens: int) -> float:
    """How many characters one token of ``text`` stood for (at least 1)."""
    return max(1.0, len(text) / max(1, tokens))


def fitting_prefix(text: str, budget: int, counter: TokenCounter) -> str:
    """The longest prefix of ``text`` (found in a few counts) of at most ``budget`` tokens."""
    if budget <= 0:
        return ""
    tokens = counter.count(text)
    if tokens <= budget:
        return text
    end = int(len(text) * budget / tokens * 0.97)
    while end > 0 and counter.count(text[:end]) > budget:
        end = int(end * 0.9)
    return text[: max(0, end)]


def split_text(text: str, budget: int, overlap: int, counter: TokenCounter) -> list[str]:
    """``text`` in overlapping pieces of at most ``budget`` tokens each, in order.

    A piece ends at a line break when one is in its last fifth; the next begins about
    ``overlap`` tokens before it ends, so nothing that straddles a cut is seen only in halves.
    """
    budget = max(1, budget)
    ratio = chars_per_token(text, counter.count(text))
    size = max(1, int(budget * ratio * 0.95))
    back = max(0, min(int(overlap * ratio), size // 2))
    pieces: list[str] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = text.rfind("\n", start + int(size * 0.8), end)
            end = cut + 1 if cut > start else end
        piece = fitting_prefix(text[start:end], budget, counter)
        if not piece:  # a budget below one character's tokens: take one character
            piece = text[start : start + 1]
        end = start + len(piece)
        pieces.append(piece)
        if end >= len(text):
            break
        start = max(start + 1, end - back)
    return pieces


def ceil_div(a: int, b: int) -> int:
    """``a / b`` rounded up."""
    return math.ceil(a / max(1, b))
