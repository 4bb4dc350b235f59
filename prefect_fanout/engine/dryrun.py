"""A pattern's dry run: every call the pattern would make, looked up in the cache and counted.

The pattern runs as usual, but no call is submitted. Each call is built as the run would
build it and looked up in the cache: a hit returns its stored answer (free), so a later
call that depends on it gets its real prompt; a miss is counted with its estimate
(:mod:`prefect_fanout.budget.estimate`) and answered with a placeholder. A call whose
upstream results include a placeholder cannot be known before the run: it is counted as a
call to ask, estimated from its template (its prompt without the upstream results), and the
report says so. A ``split`` agent whose answer is a placeholder makes its node a leaf, so a
tree's dry run counts the nodes it can see (the real tree may be larger).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect_fanout.budget.dryrun import DryRun
from prefect_fanout.budget.estimate import estimate_call
from prefect_fanout.call.cache import CacheOptions, stored_answer
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.options import RunOptions

__all__ = ["PatternDryRun"]

NOT_KNOWN = "(dry run: this answer is not known before the run)"


class PatternDryRun:
    """The calls of one pattern's dry run, counted into a :class:`DryRun` report.

    Args:
        pattern: The pattern's name (``fan-out``, ``pipeline``, ...).
        options: The run's options (its budgets go into the report).
        cache: The run's cache settings.
    """

    def __init__(self, pattern: str, options: RunOptions, cache: CacheOptions) -> None:
        self.pattern = pattern
        self.cache = cache
        self.report = DryRun(
            key="total",
            kind="pattern",
            level="step",
            budget_tokens=options.budget_tokens,
            budget_usd=options.budget_usd,
        )

    def answer(
        self, request: CallRequest, context: Mapping[str, Any] | None, group: str
    ) -> AgentResult:
        """Count one call in ``group``; its stored answer, or a placeholder for a miss."""
        upstream = dict(context or {})
        if any(self._unknown(value) for value in upstream.values()):
            self.report.count(
                group, estimate_call(request), model=request.model, from_template=True
            )
            return self._placeholder(request)
        answered = request.with_context(upstream)
        hit = stored_answer(answered, self.cache)
        if hit is not None:
            self.report.count(group, None, model=request.model)
            return hit
        self.report.count(group, estimate_call(answered), model=request.model)
        return self._placeholder(request)

    def finish(self, notes: list[str]) -> DryRun:
        """The report, with what the estimate cannot know."""
        if self.report.from_template:
            self.report.notes.append(
                "calls whose upstream answers are not cached: their prompts are not known "
                "before the run; estimated from the template (without the upstream results)"
            )
        if self.pattern == "tree":
            self.report.notes.append(
                "tree: a split answer that is not cached is not known, so its node is counted "
                "as a leaf; the real tree may have more nodes"
            )
        self.report.notes.extend(notes)
        self.report.notes.append(self.report.batch_note())
        return self.report

    @staticmethod
    def _unknown(value: Any) -> bool:
        if isinstance(value, AgentResult):
            value = value.output
        return isinstance(value, str) and value == NOT_KNOWN

    @staticmethod
    def _placeholder(request: CallRequest) -> AgentResult:
        return AgentResult(
            agent=request.agent,
            item_id=request.item_id,
            output=NOT_KNOWN,
            raw_text=NOT_KNOWN,
            model=request.model,
        )
