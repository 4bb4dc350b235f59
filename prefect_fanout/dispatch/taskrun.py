"""Bookkeeping of one plan task during a dispatch: attempts, result, outcome, trace."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect.futures import PrefectFuture

from prefect_fanout.dispatch.result import Acceptance, TaskOutcome, Verdict
from prefect_fanout.llm.pricing import add_costs
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.plan.model import TaskSpec
from prefect_fanout.ui.traces import iso
from prefect_fanout.usage import Usage


@dataclass
class TaskRun:
    """What the dispatcher knows about one plan task while the plan runs."""

    spec: TaskSpec
    status: str = "pending"  # pending | running | completed | failed | skipped
    chain: list[str] = field(default_factory=list)
    step: int = 0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    future: PrefectFuture[Any] | None = None
    result: AgentResult | None = None
    error: str | None = None
    request: CallRequest | None = None
    started: float | None = None  # wall clock, for traces
    started_mono: float | None = None
    attempt_started: float | None = None
    finished: float | None = None
    duration_s: float | None = None
    trace: str | None = None
    # The acceptance loop (tasks with ``acceptance``; see dispatch/acceptance.py):
    revision_limit: int = 0  # the task's max_revisions, else config.max_revisions
    phase: str = "answer"  # answer | judge | revise: what the call in flight is
    revisions: int = 0
    verdicts: list[Verdict] = field(default_factory=list)
    spent: list[AgentResult] = field(default_factory=list)  # paid calls besides ``result``
    loop_calls: list[dict[str, Any]] = field(default_factory=list)  # judge and revision calls
    acceptance_prompt: str | None = None  # the first answer's prompt, shown to the judge
    phase_request: CallRequest | None = None
    call_started: float | None = None

    @property
    def agent(self) -> str:
        """The agent that answered, else the last one tried, else the planned one."""
        if self.attempts:
            return str(self.attempts[-1]["agent"])
        return self.spec.agent

    def outcome(self) -> TaskOutcome:
        """The task's outcome for the dispatch result."""
        result = self.result if self.status == "completed" else None
        paid = [result] if result else []
        if self.spec.acceptance is not None:  # every call of the loop, accepted or not
            paid = ([self.result] if self.result else []) + self.spent
        failed = [a for a in self.attempts if a["status"] == "failed"]  # failed asks spend too
        prompt = sum(int(a.get("prompt_tokens") or 0) for a in failed)
        prompt += sum(call.prompt_tokens for call in paid)
        completion = sum(int(a.get("completion_tokens") or 0) for a in failed)
        completion += sum(call.completion_tokens for call in paid)
        cost: float | None = 0.0
        for attempt in failed:
            if attempt.get("prompt_tokens") or attempt.get("completion_tokens"):
                cost = add_costs(cost, attempt.get("cost_usd"))
        for call in paid:
            cost = add_costs(cost, call.run_cost_usd)
        last = self.attempts[-1] if self.attempts else {}
        return TaskOutcome(
            task_id=self.spec.task_id,
            agent=self.agent,
            status=self.status,  # type: ignore[arg-type]
            output=result.output if result else None,
            error=self.error,
            cached=bool(result and result.cached),
            attempts=sum(int(a["requests"]) for a in [*self.attempts, *self.loop_calls]),
            model=result.model if result else last.get("model"),
            finish_reason=result.finish_reason if result else last.get("finish_reason"),
            usage=Usage(
                prompt_tokens=prompt,
                completion_tokens=completion,
                cost_usd=cost,
            ),
            duration_s=self.duration_s,
            acceptance=self.acceptance(),
            limit_wait_s=round(
                sum(float(a.get("limit_wait_s") or 0.0) for a in failed)
                + sum(call.limit_wait_s for call in paid if not call.cached),
                6,
            ),
            endpoint=result.endpoint if result else None,
        )

    def acceptance(self) -> Acceptance | None:
        """The task's acceptance record, or ``None`` for a task without criteria."""
        spec = self.spec
        if spec.acceptance is None or spec.judge is None:
            return None
        return Acceptance(
            judge=spec.judge,
            criteria=list(spec.acceptance),
            max_revisions=self.revision_limit,
            revisions=self.revisions,
            accepted=bool(self.verdicts and self.verdicts[-1].passed),
            verdicts=list(self.verdicts),
        )

    def trace_record(self, flow_run_id: str | None) -> dict[str, Any]:
        """The task's trace file content (see :mod:`prefect_fanout.ui.traces`)."""
        outcome = self.outcome().model_dump(mode="json")
        request, result = self.request, self.result
        return {
            "task_id": self.spec.task_id,
            "status": self.status,
            "flow_run_id": flow_run_id,
            "agent": self.agent,
            "requested_agent": self.spec.agent,
            "model": outcome["model"] or (request.model if request else None),
            "finish_reason": outcome["finish_reason"],
            "input": {
                "description": self.spec.description,
                "input_data": self.spec.input_data,
                "dependencies": self.spec.dependencies,
            },
            "prompt": request.prompt if request else None,
            "messages": request.messages if request else None,
            "output": outcome["output"],
            "error": self.error,
            "cached": outcome["cached"],
            "cache_key": result.cache_key if result else None,
            "timing": {
                "started_at": iso(self.started),
                "finished_at": iso(self.finished),
                "duration_s": self.duration_s,
                "latency_s": result.latency_s if result else None,
            },
            "usage": outcome["usage"],
            "attempts": self.attempts,
            **self._acceptance_trace(outcome),
        }

    def _acceptance_trace(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """The trace's acceptance keys: the record and every judge and revision call."""
        if outcome.get("acceptance") is None:
            return {}
        return {"acceptance": outcome["acceptance"], "acceptance_calls": self.loop_calls}

    def index_entry(self) -> dict[str, Any]:
        """The task's entry in the run's trace index: definition, status, trace path."""
        return {
            **self.spec.model_dump(mode="json"),
            "status": self.status,
            "answered_by": self.agent if self.status == "completed" else None,
            "error": self.error,
            "trace": self.trace,
            **({"revisions": self.revisions} if self.spec.acceptance is not None else {}),
        }
