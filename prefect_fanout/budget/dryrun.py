"""The dry-run report: calls in all, already cached, to be asked; their tokens and cost.

A shape's dry run (:mod:`prefect_fanout.mapping.dryrun`, :mod:`prefect_fanout.dispatch.dryrun`)
resolves every call, looks it up in the cache and adds it here with its estimate
(:mod:`prefect_fanout.budget.estimate`), by group (a partition, a plan level). Cached calls
are free: only the calls to be asked add tokens and cost. A call whose prompt is not known
yet (a plan task whose upstream answers are not cached) is estimated from its template
(the prompt without the upstream results) and said so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from prefect_fanout.budget.estimate import CallEstimate
from prefect_fanout.llm.pricing import BATCH_PRICE_FACTOR, add_costs

__all__ = ["DryRun", "GroupEstimate"]


class GroupEstimate(BaseModel):
    """The calls of one group (a partition, a plan level) and what they would spend.

    Attributes:
        key: The partition key or ``level N``.
        calls: Calls in all.
        cached: Calls the cache answers (free).
        to_ask: Calls that would be asked.
        from_template: Of those, calls whose prompt is not known yet (estimated from the
            template: the upstream results are not in it).
        input_tokens: Estimated input tokens of the calls to ask.
        output_tokens_max: Their output tokens at most (``max_tokens`` each).
        usd_low: Their cost with empty answers; None when a price is unknown.
        usd_high: Their cost with full ``max_tokens`` answers; None when a price is unknown.
    """

    key: str
    calls: int = 0
    cached: int = 0
    to_ask: int = 0
    from_template: int = 0
    input_tokens: int = 0
    output_tokens_max: int = 0
    usd_low: float | None = 0.0
    usd_high: float | None = 0.0

    def add(self, estimate: CallEstimate | None, *, from_template: bool = False) -> None:
        """Count one call: ``None`` for a cache hit, else the estimate of a call to ask."""
        self.calls += 1
        if estimate is None:
            self.cached += 1
            return
        self.to_ask += 1
        self.from_template += int(from_template)
        self.input_tokens += estimate.input_tokens
        self.output_tokens_max += estimate.output_tokens
        self.usd_low = add_costs(self.usd_low, estimate.usd_low)
        self.usd_high = add_costs(self.usd_high, estimate.usd_high)


class DryRun(GroupEstimate):
    """A whole run's dry run (its totals) and its groups.

    Attributes:
        kind: ``map``, ``dispatch`` or ``pattern``.
        level: ``partition``, ``plan level`` or ``step``: what a group is.
        tokenizer: What counted the input tokens (``tiktoken:ENCODING`` or ``chars/4``).
        models: The models that would be asked.
        groups: Per partition or plan level.
        budget_tokens: The run's token budget, if any.
        budget_usd: The run's dollar budget, if any.
        notes: What the estimate cannot know (dependants' prompts, classifier labels,
            reduce calls, batch prices).
    """

    kind: Literal["map", "dispatch", "pattern"]
    level: str
    tokenizer: str = "chars/4"
    models: list[str] = Field(default_factory=list)
    groups: list[GroupEstimate] = Field(default_factory=list)
    budget_tokens: int | None = None
    budget_usd: float | None = None
    notes: list[str] = Field(default_factory=list)

    def batch_note(self) -> str:
        """What the calls to ask would cost through the Batch API (``--batch``, map only)."""
        if self.usd_low is None or self.usd_high is None:
            return "batch prices: unknown (a model has no price)"
        low, high = (
            round(value * BATCH_PRICE_FACTOR, 6) for value in (self.usd_low, self.usd_high)
        )
        return (
            f"batch prices (--batch, half the online price): ${low:.6f} - ${high:.6f}; an "
            "agent's own batch prices are not used in this estimate"
        )

    def group(self, key: str) -> GroupEstimate:
        """The group of ``key``, added at the end when new."""
        for group in self.groups:
            if group.key == key:
                return group
        self.groups.append(GroupEstimate(key=key))
        return self.groups[-1]

    def count(
        self,
        key: str,
        estimate: CallEstimate | None,
        *,
        model: str,
        from_template: bool = False,
    ) -> None:
        """Count one call in group ``key`` and in the totals (``None``: a cache hit)."""
        self.group(key).add(estimate, from_template=from_template)
        self.add(estimate, from_template=from_template)
        if estimate is not None:
            self.tokenizer = estimate.tokenizer
        if model not in self.models:
            self.models.append(model)
