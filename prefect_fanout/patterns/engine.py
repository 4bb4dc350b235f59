"""The machinery every pattern shares: one resolver, one call window, one list of records.

A :class:`PatternRun` lives for one pattern flow run. It checks the arguments the
patterns have in common, resolves every agent once (a missing endpoint or an
unknown agent fails before any call), submits each agent call as the library's
agent-call task through a :class:`~prefect_fanout.call.window.CallWindow`, keeps
one :class:`~prefect_fanout.usage.CallRecord` per call, applies the failure
policy, and at the end computes the metrics, publishes the run's artifacts and
returns the flow run's final state carrying the :class:`PatternResult`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from prefect.states import Completed, Failed, State

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.call.cache import CacheMode, CacheOptions
from prefect_fanout.call.task import submit_or_reuse
from prefect_fanout.call.window import CallOutcome, CallWindow, Submitted
from prefect_fanout.errors import AgentCallError, PatternArgumentError, describe
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.patterns.result import PatternResult, PatternStatus, compute_metrics
from prefect_fanout.plan.policies import FAILURE_POLICIES
from prefect_fanout.ui.artifacts import publish_run_artifacts
from prefect_fanout.usage import CallRecord

DEFAULT_MAX_WORKERS = 8
PATTERN_TAG = "fanout:pattern"

Agent = str | AgentProfile
CacheArg = CacheOptions | CacheMode | str | None


@dataclass
class Call:
    """One agent call a pattern wants made.

    Attributes:
        key: The call's id in records and context (e.g. ``item-3``, ``split:0.1``).
        agent: The agent's name or profile.
        prompt: The user prompt, before upstream results are added.
        context: Upstream results (or futures) by id, rendered as ``## Upstream results``.
    """

    key: str
    agent: Agent
    prompt: str
    context: Mapping[str, Any] | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


def agent_name(agent: Agent) -> str:
    """An agent's name, for records."""
    return agent.name if isinstance(agent, AgentProfile) else str(agent)


def check_agent_arg(argument: str, value: Any) -> Agent:
    """An agent argument: a non-empty name or a profile.

    Raises:
        PatternArgumentError: Anything else.
    """
    if isinstance(value, AgentProfile) or (isinstance(value, str) and value.strip()):
        return value
    raise PatternArgumentError(argument, f"expected an agent name or AgentProfile, got {value!r}")


class PatternRun:
    """One pattern's run inside its flow run.

    Args:
        pattern: The pattern's name (``fan-out``, ``fan-in``, ``pipeline``, ``tree``).
        agents: Extra profiles by name.
        model: A model for every agent (``test`` runs offline).
        endpoint: An ``LLMEndpoint`` block name or object; None uses ``OPENAI_*``.
        cache: ``on``, ``refresh``, ``off`` or :class:`CacheOptions`.
        max_workers: Most calls in flight (None: ``DEFAULT_MAX_WORKERS``).
        failure_policy: ``partial`` or ``all_or_nothing``.

    Raises:
        PatternArgumentError: ``max_workers`` or ``failure_policy`` is invalid.
    """

    def __init__(
        self,
        pattern: str,
        *,
        agents: Mapping[str, AgentProfile] | None = None,
        model: str | None = None,
        endpoint: str | LLMEndpoint | None = None,
        cache: CacheArg = None,
        max_workers: int | None = None,
        failure_policy: str = "partial",
    ) -> None:
        if failure_policy not in FAILURE_POLICIES:
            raise PatternArgumentError(
                "failure_policy",
                f"expected one of {', '.join(FAILURE_POLICIES)}, got {failure_policy!r}",
            )
        workers = DEFAULT_MAX_WORKERS if max_workers is None else max_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise PatternArgumentError("max_workers", f"must be an integer >= 1, got {workers!r}")
        self.pattern = pattern
        self.failure_policy = failure_policy
        self.workers = workers
        self.resolver = Resolver(agents=agents, endpoint=endpoint, model=model)
        self.cache = CacheOptions.of(cache)
        self.window: CallWindow[str] = CallWindow(workers)
        self.records: list[CallRecord] = []
        self.requests: dict[str, CallRequest] = {}
        self.stopped_by: str | None = None
        self.started = time.monotonic()
        self.logger = get_run_logger()

    # ------------------------------------------------------------------ calls

    def check(self, agents: Iterable[Agent]) -> None:
        """Resolve every agent (and the endpoint when a model needs one) before any call.

        Raises:
            ConfigurationError: An agent is unknown or no endpoint is configured.
        """
        self.resolver.check(agents)

    @property
    def stopped(self) -> bool:
        """True once ``all_or_nothing`` met a failure: no new call is made."""
        return self.stopped_by is not None

    def run_calls(self, calls: Iterable[Call]) -> dict[str, CallOutcome[str]]:
        """Make the calls (at most ``max_workers`` in flight) and return their outcomes by key.

        Calls not yet submitted when ``all_or_nothing`` meets a failure are
        recorded as ``skipped`` and have no outcome.
        """
        outcomes: dict[str, CallOutcome[str]] = {}
        for outcome in self.window.run(self._entries(calls)):
            outcomes[outcome.key] = outcome
            self._record(outcome)
        return outcomes

    def _entries(self, calls: Iterable[Call]) -> Iterator[tuple[str, Any]]:
        for call in calls:
            if self.stopped:
                self.skip(call.key, call.agent, f"not started: {self.stopped_by} failed")
                continue
            yield call.key, partial(self._submit, call)

    def _submit(self, call: Call) -> Submitted:
        request = self.resolver.request(
            call.prompt, agent=call.agent, item_id=call.key, tags=(PATTERN_TAG, *call.tags)
        )
        self.requests[call.key] = request
        transport = self.resolver.transport(request.model)
        return submit_or_reuse(request, context=call.context, transport=transport, cache=self.cache)

    def _record(self, outcome: CallOutcome[str]) -> None:
        request = self.requests.get(outcome.key)
        if outcome.result is not None:
            self.records.append(CallRecord.from_result(outcome.key, outcome.result))
            return
        error = outcome.error
        self.records.append(
            CallRecord(
                id=outcome.key,
                agent=request.agent if request else "?",
                model=request.model if request else None,
                status="failed",
                attempts=error.attempts if isinstance(error, AgentCallError) else 0,
                error=describe(error),
            )
        )
        self.logger.error("%s call %r failed: %s", self.pattern, outcome.key, describe(error))
        if self.failure_policy == "all_or_nothing" and self.stopped_by is None:
            self.stopped_by = f"call {outcome.key!r}"

    def skip(self, key: str, agent: Agent, reason: str) -> None:
        """Record a call that will not be made."""
        self.records.append(
            CallRecord(id=key, agent=agent_name(agent), status="skipped", error=reason)
        )

    def fail(self, key: str, agent: Agent, error: str) -> None:
        """Record a step that failed without a call (e.g. a ``split`` function that raised)."""
        self.records.append(
            CallRecord(id=key, agent=agent_name(agent), status="failed", error=error)
        )
        if self.failure_policy == "all_or_nothing" and self.stopped_by is None:
            self.stopped_by = f"step {key!r}"

    # ----------------------------------------------------------------- the end

    def status(self, has_output: bool) -> PatternStatus:
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
        a ``failed`` run ends ``Failed``, still carrying the result as its data.
        """
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
        extra = {
            "Status": status,
            "Failure policy": self.failure_policy,
            **metrics.summary_lines(),
        }
        try:
            publish_run_artifacts(self.pattern, f"Fanout {self.pattern}", self.records, extra)
        except Exception as exc:  # artifacts are informative; the result is what counts
            self.logger.warning("could not publish the run's artifacts: %s", exc)
        message = (
            f"{metrics.completed} of {metrics.calls} call(s) completed, {metrics.failed} failed, "
            f"{metrics.skipped} skipped; speedup {metrics.speedup}, "
            f"cost multiplier {metrics.cost_multiplier}"
        )
        self.logger.info("%s %s: %s", self.pattern, status, message)
        if status == "completed":
            return Completed(message=message, data=result)
        if status == "partial":
            return Completed(name="Partial", message=message, data=result)
        return Failed(message=message, data=result)


def pattern_result_of(state: State[Any]) -> PatternResult:
    """The :class:`PatternResult` a pattern flow run's final state carries, even when failed.

    Raises:
        Exception: The run failed before producing a result (its own error).
    """
    data = state.result(raise_on_failure=False)
    if isinstance(data, PatternResult):
        return data
    if isinstance(data, Mapping):
        return PatternResult.model_validate(data)
    if isinstance(data, BaseException):
        raise data
    raise RuntimeError(f"the pattern flow ended {state.name} without a result: {state.message}")
