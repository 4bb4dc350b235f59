"""The result of one agent call."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field


class AgentResult(BaseModel):
    """What an agent call returned, and what it took.

    ``prompt_tokens``, ``completion_tokens`` and ``cost_usd`` describe the call
    that produced the answer. When the answer came from the cache, ``cached`` is
    true and ``run_cost_usd`` is zero: this run paid nothing, while the original
    usage stays visible. ``limit_wait_s`` is the time the call's requests waited for
    the endpoint's limits (:mod:`prefect_fanout.limits`); ``endpoint`` is the base URL
    they went to (None for the offline ``test`` model and older cached results).
    ``truncated`` is true when the input was cut to fit the context (``long_inputs:
    truncate``); ``chunks`` is how many chunks a long input was answered in (``long_inputs:
    chunk``), None for an input answered whole.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    agent: str
    item_id: str | None = None
    output: Any
    raw_text: str
    model: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    attempts: int = 1
    cached: bool = False
    cache_key: str | None = None
    limit_wait_s: float = 0.0
    endpoint: str | None = None
    truncated: bool = False
    chunks: int | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @computed_field  # type: ignore[prop-decorator]
    @property
    def run_cost_usd(self) -> float | None:
        """What this run paid: zero for a cache hit, else ``cost_usd``."""
        return 0.0 if self.cached else self.cost_usd

    def as_cached(self) -> AgentResult:
        """A copy marked as served from the cache."""
        return self.model_copy(update={"cached": True})
