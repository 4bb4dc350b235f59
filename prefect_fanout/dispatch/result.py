"""The result of dispatching a plan: one outcome per task, counts, usage and status.

:class:`DispatchResult` is what :func:`prefect_fanout.dispatch.run.dispatch_plan`
returns and what ``fanout dispatch`` prints on stdout, so ``jq`` can read it::

    {"status": "partial", "flow_run_id": "...",
     "summary": {"total": 3, "completed": 1, "failed": 1, "skipped": 1, "cached": 0},
     "usage": {"prompt_tokens": 120, "completion_tokens": 80, "cost_usd": 0.0000666},
     "tasks": [{"task_id": "a", "agent": "coder", "status": "completed", "output": "...",
                "error": null, "cached": false, "attempts": 1,
                "usage": {...}, "duration_s": 0.61}, ...],
     "trace_index": null}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from prefect_fanout.budget.meter import BudgetMeter
from prefect_fanout.budget.report import BudgetReport
from prefect_fanout.errors import EXIT_BUDGET, EXIT_FAILED, EXIT_OK
from prefect_fanout.llm.pricing import add_costs
from prefect_fanout.usage import CallRecord, Ledger, Usage

DISPATCH_TAG = "fanout:dispatch"
"""The tag on every task run a dispatch makes."""

BUDGET_SKIP = "skipped: budget: "
"""How the error of a task the budget did not let start begins."""

TaskStatus = Literal["completed", "failed", "skipped"]
"""The final status of one plan task."""

DispatchStatus = Literal["completed", "partial", "failed"]
"""The status of a whole dispatch."""


class Verdict(BaseModel):
    """One judge's verdict on one answer of a task with acceptance criteria.

    Attributes:
        revision: Which answer was judged: 0 for the first, ``k`` for revision ``k``.
        passed: The answer meets every criterion (``"pass"`` in JSON).
        unmet: The criteria the judge found unmet (empty when it passed).
        notes: The judge's remarks, if any.

    """

    model_config = ConfigDict(populate_by_name=True)

    revision: int = 0
    passed: bool = Field(alias="pass")
    unmet: list[str] = Field(default_factory=list)
    notes: str | None = None

    @model_serializer(mode="wrap")
    def _as_judged(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)  # JSON says "pass", like the judge (without serialize_by_alias)
        return {("pass" if key == "passed" else key): value for key, value in data.items()}


class Acceptance(BaseModel):
    """The acceptance loop of one task: its criteria, judge and every verdict.

    Attributes:
        judge: The judge agent.
        criteria: The task's acceptance criteria.
        max_revisions: The most revisions the task could get.
        revisions: Revisions asked for (re-asks after a rejected answer).
        accepted: The last verdict passed (the task's answer is accepted).
        verdicts: Every verdict, in order (the last one decides).

    """

    judge: str
    criteria: list[str]
    max_revisions: int
    revisions: int = 0
    accepted: bool = False
    verdicts: list[Verdict] = Field(default_factory=list)


class TaskOutcome(BaseModel):
    """How one plan task ended.

    Attributes:
        task_id: The task's id.
        agent: The agent that answered (a fallback, if the primary failed); for
            failed and skipped tasks, the last agent tried or the planned agent.
        status: ``completed``, ``failed`` or ``skipped``.
        output: The answer: text, or the structured output for agents with an
            output schema; ``None`` unless completed.
        error: Why the task failed or was skipped; ``None`` when completed.
        cached: The answer came from the cache.
        attempts: HTTP requests this run sent for the task, over every agent
            tried (0 for a cache hit or a skipped task).
        model: The model that answered, as the server reported it (or the last one asked).
        finish_reason: Why the answer ended (``stop``, ``length``...), if it came.
        usage: Tokens and cost this run spent on the task: the answer's (cost 0 for
            a cache hit) plus every failed ask's.
        duration_s: Seconds from the task's submission to its end in this run;
            ``None`` for skipped tasks.
        acceptance: For a task with ``acceptance`` criteria, its judge's
            verdicts and revision count; absent from JSON for other tasks. Such
            a task's ``attempts`` and ``usage`` add up every call of its loop
            (answers, judge calls, revisions), also when it failed.
        limit_wait_s: Seconds its requests waited for the endpoint's limits in this run.
        endpoint: The endpoint (base URL) its answer came from, when known.

    """

    task_id: str
    agent: str
    status: TaskStatus
    output: Any = None
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    model: str | None = None
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    duration_s: float | None = None
    acceptance: Acceptance | None = None
    limit_wait_s: float = 0.0
    endpoint: str | None = None

    @model_serializer(mode="wrap")
    def _drop_no_acceptance(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("acceptance", 0) is None:
            del data["acceptance"]
        return data


class Summary(BaseModel):
    """Task counts of a dispatch."""

    total: int
    completed: int
    failed: int
    skipped: int
    cached: int


class DispatchResult(BaseModel):
    """What a dispatch did: overall status, counts, usage and every task's outcome.

    Attributes:
        status: ``completed`` when every task completed; ``failed`` when none
            completed, or when a task failed under ``all_or_nothing``;
            ``partial`` otherwise.
        flow_run_id: The ``fanout-dispatch`` flow run (the traces' correlation id).
        summary: Task counts.
        usage: Tokens and cost of the whole run.
        tasks: One outcome per task, in plan order.
        trace_index: Path of the ``dispatch-*.json`` trace index, when traces
            were written.

        synthesis: The ``config.synthesize`` call (id ``synthesize``) that got every
            completed task's output and wrote the final answer; ``None`` without one.
        budget: The run's budget (limits, spent, left, whether it stopped the run; the
            tasks it did not let start are ``skipped`` with ``skipped: budget: ...``);
            ``None`` without one.

    """

    status: DispatchStatus
    flow_run_id: str | None = None
    summary: Summary
    usage: Usage
    tasks: list[TaskOutcome]
    trace_index: str | None = None
    synthesis: TaskOutcome | None = None
    budget: BudgetReport | None = None

    @property
    def budget_reached(self) -> bool:
        """True when the budget stopped the run (some tasks were not started)."""
        return self.budget is not None and self.budget.reached

    @property
    def exit_code(self) -> int:
        """The CLI's exit code: 0 all completed, 3 the budget stopped the run, else 1."""
        if self.budget_reached:
            return EXIT_BUDGET
        return EXIT_OK if self.status == "completed" else EXIT_FAILED

    def task(self, task_id: str) -> TaskOutcome:
        """Return the outcome of one task.

        Raises:
            KeyError: No task has that id.

        """
        for outcome in self.tasks:
            if outcome.task_id == task_id:
                return outcome
        raise KeyError(f"no task {task_id!r} in the dispatch result")


def overall_status(outcomes: Iterable[TaskOutcome], failure_policy: str) -> DispatchStatus:
    """The status of a dispatch from its task outcomes.

    Args:
        outcomes: Every task's outcome.
        failure_policy: ``partial`` or ``all_or_nothing``.

    Returns:
        ``completed``, ``partial`` or ``failed`` (see :class:`DispatchResult`).

    """
    statuses = [outcome.status for outcome in outcomes]
    completed = statuses.count("completed")
    if completed == len(statuses):
        return "completed"
    if completed == 0 or failure_policy == "all_or_nothing":
        return "failed"
    return "partial"


def call_record(outcome: TaskOutcome, model: str | None = None) -> CallRecord:
    """The artifacts' view of a task outcome."""
    return CallRecord(
        id=outcome.task_id,
        agent=outcome.agent,
        model=outcome.model or model,
        finish_reason=outcome.finish_reason,
        status=outcome.status,
        attempts=outcome.attempts,
        cached=outcome.cached,
        prompt_tokens=outcome.usage.prompt_tokens,
        completion_tokens=outcome.usage.completion_tokens,
        cost_usd=outcome.usage.cost_usd,
        latency_s=outcome.duration_s,
        error=outcome.error,
        limit_wait_s=outcome.limit_wait_s,
        endpoint=outcome.endpoint,
    )


def build_result(
    outcomes: list[TaskOutcome],
    *,
    failure_policy: str,
    flow_run_id: str | None,
    trace_index: str | None = None,
) -> DispatchResult:
    """Assemble the dispatch result from the task outcomes (in plan order).

    Args:
        outcomes: Every task's outcome, in plan order.
        failure_policy: The policy the run used.
        flow_run_id: The flow run's id.
        trace_index: Path of the trace index, if written.

    Returns:
        The result, with counts and usage added up.

    """
    ledger = Ledger.of_records(call_record(outcome) for outcome in outcomes)
    statuses = [outcome.status for outcome in outcomes]
    return DispatchResult(
        status=overall_status(outcomes, failure_policy),
        flow_run_id=flow_run_id,
        summary=Summary(
            total=len(outcomes),
            completed=statuses.count("completed"),
            failed=statuses.count("failed"),
            skipped=statuses.count("skipped"),
            cached=ledger.cached,
        ),
        usage=ledger.usage(),
        tasks=outcomes,
        trace_index=trace_index,
    )


def with_synthesis(result: DispatchResult, synthesis: TaskOutcome) -> DispatchResult:
    """The result with its synthesis call added: its usage counted, its failure a ``partial``.

    A completed dispatch whose synthesis did not complete is ``partial``; the
    task counts in ``summary`` stay the plan tasks'.
    """
    ledger = Ledger.of_records([call_record(synthesis)])
    usage = result.usage.model_copy(
        update={
            "prompt_tokens": result.usage.prompt_tokens + ledger.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens + ledger.completion_tokens,
            "cost_usd": add_costs(result.usage.cost_usd, ledger.cost_usd),
        }
    )
    status = result.status
    if status == "completed" and synthesis.status != "completed":
        status = "partial"
    return result.model_copy(update={"synthesis": synthesis, "usage": usage, "status": status})


def with_budget(result: DispatchResult, meter: BudgetMeter) -> DispatchResult:
    """The result with its budget report: limits, spent, left, and the tasks it skipped."""
    outcomes = [*result.tasks, *([result.synthesis] if result.synthesis else [])]
    skipped = sum(1 for o in outcomes if (o.error or "").startswith(BUDGET_SKIP))
    report = meter.report(len(outcomes) - skipped, len(outcomes), skipped)
    return result.model_copy(update={"budget": report})
