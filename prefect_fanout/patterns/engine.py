"""What the patterns add to the engine: their common arguments and their result.

A :class:`PatternRun` is the :class:`~prefect_fanout.engine.run.Engine` of one pattern flow
run: it resolves every agent once through the run's
:class:`~prefect_fanout.call.path.CallPath`, makes each call through the engine's window,
keeps one record per call, applies the failure policy, and at the end computes the metrics,
publishes the artifacts and returns the final state carrying the :class:`PatternResult`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import Any

from prefect.context import FlowRunContext
from prefect.states import Completed, State

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.budget.report import BudgetReport
from prefect_fanout.call.path import CallPath
from prefect_fanout.engine.run import Agent, Call, Engine, RunStatus, agent_name, carried_result
from prefect_fanout.errors import PatternArgumentError
from prefect_fanout.options import RunOptions
from prefect_fanout.patterns.result import PatternResult, compute_metrics
from prefect_fanout.runners.active import on_task_runner, sends_chunks

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "PATTERN_TAG",
    "Agent",
    "Call",
    "PatternRun",
    "agent_name",
    "check_agent_arg",
    "pattern_result_of",
]

DEFAULT_MAX_WORKERS = 8
PATTERN_TAG = "fanout:pattern"


def check_agent_arg(argument: str, value: Any) -> Agent:
    """An agent argument: a non-empty name or a profile.

    Raises:
        PatternArgumentError: Anything else.
    """
    if isinstance(value, AgentProfile) or (isinstance(value, str) and value.strip()):
        return value
    raise PatternArgumentError(argument, f"expected an agent name or AgentProfile, got {value!r}")


class PatternRun(Engine):
    """One pattern's run inside its flow run.

    Args:
        pattern: The pattern's name (``fan-out``, ``fan-in``, ``pipeline``, ``tree``).
        agents: Extra profiles by name.
        options: The run's options (merged by the caller; None: all defaults).
    """

    def __init__(
        self,
        pattern: str,
        *,
        agents: Mapping[str, AgentProfile] | None = None,
        options: RunOptions | Mapping[str, Any] | None = None,
    ) -> None:
        merged = RunOptions.of(options)
        path = CallPath.of(merged, agents)
        super().__init__(pattern, path, default_workers=DEFAULT_MAX_WORKERS, tag=PATTERN_TAG)
        self.pattern = pattern

    def on_workers(self) -> contextlib.AbstractContextManager[None]:
        """The task runner the options name, for this run's calls (enter it around them).

        On ``dask`` or ``ray`` the runner is started for the flow run (unless it already
        runs there), and independent calls go to its workers in chunks; a dry run never
        starts one.
        """
        if self.dry is not None or self.options.runner() == "thread":
            return contextlib.nullcontext()
        return on_task_runner(self.options, self.workers, chunked=sends_chunks(self.options))

    def status(self, has_output: bool) -> RunStatus:
        """The run's status: ``completed``, ``partial`` or ``failed``."""
        if not has_output or self.stopped:
            return "failed"
        if all(record.status == "completed" for record in self.records):
            return "completed"
        return "partial"

    def finish(
        self, output: Any, *, has_output: bool = True, details: dict[str, Any] | None = None
    ) -> State[Any]:
        """Build the result, publish the artifacts and return the flow run's final state.

        ``completed`` and ``partial`` runs end ``Completed`` (``Partial`` by name);
        a ``failed`` run ends ``Failed``, still carrying the result as its data. A dry
        run ends ``Completed`` named ``DryRun``, carrying its
        :class:`~prefect_fanout.budget.dryrun.DryRun` report.
        """
        if self.dry is not None:
            report = self.dry.finish([])
            message = (
                f"dry run: {report.calls} call(s), {report.cached} cached, "
                f"{report.to_ask} to ask, about {report.input_tokens} input tokens"
            )
            self.logger.info("%s %s", self.name, message)
            return Completed(name="DryRun", message=message, data=report)
        status = self.status(has_output)
        metrics = compute_metrics(
            self.records,
            wall_s=time.monotonic() - self.started,
            workers=self.workers,
            peak_in_flight=self.window.peak,
        )
        context = FlowRunContext.get()
        result = PatternResult(
            pattern=self.pattern,
            status=status,
            output=output if status != "failed" else None,
            calls=list(self.records),
            metrics=metrics,
            flow_run_id=str(context.flow_run.id) if context and context.flow_run else None,
            details=details or {},
        )
        extra = {"Status": status, "Failure policy": self.failure_policy, **metrics.summary_lines()}
        budget = self._budget()
        if budget is not None:
            result.details["budget"] = budget.model_dump(mode="json")
            extra["Budget"] = budget.line()
            extra["Budget left"] = budget.left_text()
        self.publish(f"Fanout {self.pattern}", self.records, extra)
        if budget is not None and budget.reached:
            return self.end("budget", budget.message or "budget reached", result)
        message = (
            f"{metrics.completed} of {metrics.calls} call(s) completed, {metrics.failed} failed, "
            f"{metrics.skipped} skipped; speedup {metrics.speedup}, "
            f"cost multiplier {metrics.cost_multiplier}"
        )
        return self.end(status, message, result)

    def _budget(self) -> BudgetReport | None:
        meter = self.path.budget
        if meter is None:
            return None
        skipped = sum(1 for r in self.records if (r.error or "").startswith("budget: "))
        return meter.report(len(self.records) - skipped, len(self.records), skipped)


def pattern_result_of(state: State[Any]) -> PatternResult:
    """The :class:`PatternResult` a pattern flow run's final state carries, even when failed.

    Raises:
        Exception: The run failed before producing a result (its own error).
    """
    return carried_result(state, PatternResult, "the pattern flow")
