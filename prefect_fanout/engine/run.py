"""The engine of one run: see :mod:`prefect_fanout.engine`."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.bounded import now_or_by_the_end
from prefect_fanout.call.path import CallPath
from prefect_fanout.call.window import CallOutcome, CallWindow, Submitted
from prefect_fanout.engine.child_runs import (
    DEFAULT_RUN_CALLS,
    CallGate,
    group_state,
    join_ended_children_of_this_run,
    run_in_parts,
)
from prefect_fanout.engine.chunks import (
    ChunkRun,
    active_worker_slots,
    chunk_slots_for,
    run_chunks,
)
from prefect_fanout.engine.dryrun import PatternDryRun
from prefect_fanout.engine.heap import freeze_when_calls_start
from prefect_fanout.errors import AgentCallError, describe
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.options import RunOptions
from prefect_fanout.ui.artifacts import publish_run_artifacts
from prefect_fanout.usage import CallRecord

__all__ = ["Agent", "Call", "Engine", "RunStatus", "carried_result", "final_state"]

Agent = str | AgentProfile
RunStatus = Literal["completed", "partial", "failed", "budget"]
Logger = logging.Logger | logging.LoggerAdapter[Any]
ResultT = TypeVar("ResultT", bound=BaseModel)


@dataclass
class Call:
    """One agent call a shape wants made.

    Attributes:
        key: The call's id in records and context (``item-3``, ``split:0.1``, ``L1-G2``).
        agent: The agent's name or profile.
        prompt: The user prompt, before upstream results are added.
        context: Upstream results (or futures) by id, rendered as ``## Upstream results``.
        tags: Extra tags of the task run.
        run_name: The task run's name, instead of ``agent:key``.
        request: The call's request when the shape built it beforehand (a map's items,
            checked before any call); sent as it is, ``prompt`` and ``tags`` unused.
    """

    key: str
    agent: Agent
    prompt: str = ""
    context: Mapping[str, Any] | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    run_name: str | None = None
    request: CallRequest | None = None


def agent_name(agent: Agent) -> str:
    """An agent's name, for records."""
    return agent.name if isinstance(agent, AgentProfile) else str(agent)


def final_state(status: RunStatus, message: str, data: Any) -> State[Any]:
    """A flow run's final state: ``Completed``, ``Completed`` named ``Partial``, or ``Failed``.

    A run its budget stopped (``budget``) ends ``Cancelled`` named ``BudgetReached``, with
    the message ``budget of N tokens reached after K of M calls``: not completed, and not
    a failure either. The result is the state's data in every case, so
    ``state.result(raise_on_failure=False)`` returns it even for a failed run.
    """
    if status == "budget":
        return Cancelled(name="BudgetReached", message=message, data=data)
    if status == "completed":
        return Completed(message=message, data=data)
    if status == "partial":
        return Completed(name="Partial", message=message, data=data)
    return Failed(message=message, data=data)


def carried_result(state: State[Any], kind: type[ResultT], what: str) -> ResultT:
    """The result a shape's final state carries (see :func:`final_state`), even when failed.

    Args:
        state: The flow run's final state.
        kind: The result's model (``DispatchResult``, ``PatternResult``).
        what: The flow's description for the error (``the dispatch flow``).

    Raises:
        Exception: The run failed before producing a result (its own error is re-raised).
    """
    data = state.result(raise_on_failure=False)
    if isinstance(data, kind):
        return data
    if isinstance(data, Mapping):
        return kind.model_validate(data)
    if isinstance(data, BaseException):
        raise data
    raise RuntimeError(f"{what} ended {state.name} without a result: {state.message}")


class Engine:
    """Runs one run's calls: a window of at most ``max_workers``, records, the failure policy.

    Args:
        name: The shape's name in logs and artifacts (``dispatch``, ``fan-out``, ``tree``).
        path: The run's call path (its resolver and cache settings).
        default_workers: ``max_workers`` when the options do not set it.
        tag: A tag on every task run of the shape (``fanout:pattern``).
        window: A window to share with the rest of a run (a map's reduce uses the map's);
            a new one of ``max_workers`` by default.
        logger: Where the run logs; the flow run's logger by default.
        gate: Calls in flight shared with other engines running side by side (a map's
            partitions share ``max_workers``); each call takes a slot first.
        on_outcome: Called with each finished call's outcome, in this thread, after it is
            recorded (a shape that keeps its own books: the classifier, a partition).
        keep_records: Record each call and apply the failure policy (False: the shape
            keeps the books through ``on_outcome``, and no failure stops the calls).
        chunk_group: The group in the names of chunk task runs (``chunk:GROUP:i``);
            the engine's name by default.
    """

    def __init__(
        self,
        name: str,
        path: CallPath,
        *,
        default_workers: int,
        tag: str | None = None,
        window: CallWindow[str] | None = None,
        logger: Logger | None = None,
        gate: CallGate | None = None,
        on_outcome: Callable[[CallOutcome[str]], None] | None = None,
        keep_records: bool = True,
        chunk_group: str | None = None,
    ) -> None:
        self.name = name
        self.chunk_group = chunk_group or name
        self.gate = gate
        self.on_outcome = on_outcome
        self.keep_records = keep_records
        self.path = path
        self.workers = path.options.workers(default_workers)
        self.failure_policy = path.options.policy()
        self.tag = tag
        self.window: CallWindow[str] = window or CallWindow(self.workers)
        self.records: list[CallRecord] = []
        self.requests: dict[str, CallRequest] = {}
        self.answered: dict[str, Any] = {}  # call key -> batch answer (or its final error)
        self.batch_of: dict[str, str] = {}  # call key -> its batch
        self.batch: Any = None  # batch mode's report, when the run used it
        self.stopped_by: str | None = None
        # A dry run counts the calls instead of making them (see engine.dryrun).
        self.dry: PatternDryRun | None = (
            PatternDryRun(name, path.options, path.cache) if path.options.dry_run else None
        )
        self.started = time.monotonic()
        self.logger: Logger = logger or get_run_logger()

    @property
    def options(self) -> RunOptions:
        """The run's merged options."""
        return self.path.options

    @property
    def resolver(self) -> Any:
        """The run's resolver."""
        return self.path.resolver

    @property
    def stopped(self) -> bool:
        """True once ``all_or_nothing`` met a failure: no new call is made."""
        return self.stopped_by is not None

    def check(self, agents: Iterable[Agent]) -> None:
        """Resolve every agent (and the endpoint when a model needs one) before any call.

        Raises:
            ConfigurationError: An agent is unknown or no endpoint is configured.
        """
        self.resolver.check(agents)

    def failed(self, what: str) -> None:
        """A call or step failed: under ``all_or_nothing`` the run stops starting new calls."""
        if self.failure_policy == "all_or_nothing" and self.stopped_by is None:
            self.stopped_by = what

    # ------------------------------------------------------------------ calls

    def submitter(self, call: Call) -> Callable[[], Submitted]:
        """What submits ``call`` when the window has room (its request is built then)."""
        submit = partial(self._submit, call)
        return self.gate.gated(submit) if self.gate is not None else submit

    def _request(self, call: Call) -> CallRequest:
        if call.request is not None:
            return call.request
        tags = (self.tag, *call.tags) if self.tag else call.tags
        return self.path.request(call.prompt, agent=call.agent, item_id=call.key, tags=tags)

    def _submit(self, call: Call) -> Submitted:
        answered = self.answered.pop(call.key, None)  # batch mode's answer, used once
        if answered is not None:
            return answered
        request = self._request(call)
        self.requests[call.key] = request
        if self.dry is not None:
            group = call.tags[0] if call.tags else call.key.split(":", 1)[0]
            group = group if ":" in call.key or call.tags else self.name
            return self.dry.answer(request, call.context, group)
        return self.path.submit(request, context=call.context, run_name=call.run_name)

    def answer_in_batches(self, calls: list[Call]) -> None:
        """Batch mode (``options.batch``): answer the calls through the Batch API first.

        Only calls without upstream context are batched. Their batches are recorded under
        the result storage's directory, in ``.fanout-batches/HASH`` (HASH: of the calls'
        cache keys), so the same calls rerun find them; calls whose lines failed go online
        when submitted (see :mod:`prefect_fanout.batch.phase`).
        """
        from prefect_fanout.batch.check import check_batch_endpoint, check_batch_requests
        from prefect_fanout.batch.phase import BatchPendingError, run_batch_phase
        from prefect_fanout.call.cache import lock_directory

        requests = {call.key: self._request(call) for call in calls if not call.context}
        if not requests or self.dry is not None:  # a dry run prices the batch in its report
            return
        self.requests.update(requests)  # the records of batch answers name their requests
        check_batch_requests(requests.values())
        endpoint = self.resolver.endpoint()
        check_batch_endpoint(endpoint)
        digest = hashlib.sha256("".join(sorted(r.cache_key() for r in requests.values())).encode())
        phase = run_batch_phase(
            requests,
            endpoint=endpoint,
            transport=self.resolver.transport(next(iter(requests.values())).model),
            cache=self.path.cache,
            options=self.options,
            output_dir=lock_directory().parent / ".fanout-batches" / digest.hexdigest()[:16],
            logger=self.logger,
        )
        if phase.pending:
            raise BatchPendingError(
                f"{len(phase.pending)} call(s) wait in batches at the provider "
                f"({', '.join(r.batch_id or '?' for r in phase.report.batches)}); run the same "
                "calls again to collect them"
            )
        self.answered.update(phase.outcomes)
        self.batch_of.update(phase.batch_of)
        self.batch = phase.report

    def stream(self, calls: Iterable[Call]) -> Iterator[CallOutcome[str]]:
        """Make the calls (at most ``max_workers`` in flight); yield outcomes as they finish.

        Nothing is recorded and no policy applied: for shapes that keep their own books.
        """
        yield from self.window.run((call.key, self.submitter(call)) for call in calls)

    def run_calls(self, calls: Iterable[Call]) -> dict[str, CallOutcome[str]]:
        """Make the calls, record each, apply the failure policy; the outcomes by key.

        Calls not yet submitted when ``all_or_nothing`` meets a failure are recorded as
        ``skipped`` and have no outcome. On a Dask or Ray task runner, independent calls
        go to the workers in chunks (see :meth:`run_in_chunks`).
        """
        calls = list(calls)
        bound = self.options.calls_per_run or DEFAULT_RUN_CALLS
        if len(calls) > bound and self.dry is None and FlowRunContext.get() is not None:
            return self.run_in_child_runs(calls, bound)
        return self._run_here(calls)

    def _run_here(self, calls: list[Call]) -> dict[str, CallOutcome[str]]:
        freeze_when_calls_start()  # what is alive now is never walked again (engine.heap)
        slots = self.chunk_slots(calls)
        if slots is not None:
            return self.run_in_chunks(calls, slots)
        outcomes: dict[str, CallOutcome[str]] = {}
        for outcome in self.window.run(self._entries(calls)):
            outcomes[outcome.key] = outcome
            self.finished(outcome)
        return outcomes

    def run_in_child_runs(self, calls: list[Call], bound: int) -> dict[str, CallOutcome[str]]:
        """More calls than one flow run's graph should hold: child flow runs of ``bound`` calls.

        Each group runs, one after another, as a child flow run ``NAME (i/n)`` of this run
        whose task runs are its calls (on Dask or Ray, its chunks), so every graph stays
        under the Prefect server's node limit. A child ends Completed, ``Partial`` or
        Failed by its calls; the records and the failure policy are this run's.
        """
        context = FlowRunContext.get()
        assert context is not None
        on_workers = active_worker_slots(self.options.runner()) is not None
        workers = context.task_runner if on_workers else None
        window, outcomes = self.window, {}
        run_part = partial(self._child_run, workers=workers, outcomes=outcomes)
        try:
            for group, child in run_in_parts(
                self.name, calls, bound, run_part, threads=self.workers, logger=self.logger
            ):
                window.note_peak(self.window.peak)
                self.window = window
                if child.error is not None:
                    self.logger.error("%s: the flow run %r could not run: %s", self.name,
                                      child.name, describe(child.error))  # fmt: skip
                for call in group:  # a child that could not run made none of its calls
                    if call.key not in outcomes:
                        outcomes[call.key] = CallOutcome(
                            call.key, None, AgentCallError(child.why())
                        )
                        self.finished(outcomes[call.key])
        finally:
            self.window = window
        return outcomes

    def _child_run(
        self, group: list[Call], workers: Any, outcomes: dict[str, CallOutcome[str]]
    ) -> State[Any]:
        """The body of one child run: its calls, then its state by their outcomes."""
        self.window = CallWindow(self.workers)  # the recording guard of this child run
        if workers is not None:  # the calls go to the run's Dask or Ray workers in chunks
            here = FlowRunContext.get()
            assert here is not None
            with here.model_copy(update={"task_runner": workers}):
                done = self._run_here(group)
        else:
            done = self._run_here(group)
        outcomes.update(done)
        return group_state([done[c.key] for c in group if c.key in done], len(group))

    def chunk_slots(self, calls: list[Call]) -> int | None:
        """Worker slots when these calls go to the workers in chunks, else None.

        They do on a started Dask or Ray runner of the kind the options name, when no
        call has upstream context, the run has no budget (spent in this process), no
        batch answers, is no dry run, and every input fits its context.
        """
        if self.dry is not None or self.answered or not calls:
            return None
        if any(call.context for call in calls):
            return None

        def requests() -> list[CallRequest]:
            self.requests.update({call.key: self._request(call) for call in calls})
            return [self.requests[call.key] for call in calls]

        return chunk_slots_for(self.path, requests, self.logger)

    def run_in_chunks(self, calls: list[Call], slots: int) -> dict[str, CallOutcome[str]]:
        """Send the calls to the workers in chunks (``map-chunk`` task runs); record each.

        Each worker runs its chunk's calls as agent-call task runs on a thread pool of its
        own (see :mod:`prefect_fanout.engine.chunks`). Under ``all_or_nothing`` a failure
        stops sending chunks: the calls of chunks not sent are recorded ``skipped``.
        """
        requests = {call.key: self.requests[call.key] for call in calls}
        measured = ChunkRun()
        finished = run_chunks(
            {self.chunk_group: [call.key for call in calls]},
            requests,
            transports={
                m: self.resolver.transport(m) for m in {r.model for r in requests.values()}
            },
            cache=self.path.cache,
            max_workers=self.workers,
            slots=slots,
            given_size=self.options.chunk_size,
            measured=measured,
            logger=self.logger,
        )
        outcomes: dict[str, CallOutcome[str]] = {}
        for outcome in finished:
            outcomes[outcome.key] = outcome
            self.finished(outcome)
            if self.stopped:
                finished.close()
                break
        for call in calls:
            if call.key not in outcomes:
                self.skip(call.key, call.agent, f"not collected: {self.stopped_by} failed")
        self.window.note_peak(min(self.workers, measured.peak * min(slots, measured.chunks)))
        self.logger.info(
            "%s: %d call(s) sent to %d worker slot(s) in %d chunk(s) of up to %d, %d at once "
            "in each",
            self.name,
            len(calls),
            measured.slots,
            measured.chunks,
            measured.size,
            measured.threads,
        )
        return outcomes

    def _entries(self, calls: Iterable[Call]) -> Iterator[tuple[str, Any]]:
        for call in calls:
            if self.stopped:
                self.skip(call.key, call.agent, f"not started: {self.stopped_by} failed")
                continue
            yield call.key, self.submitter(call)

    # ---------------------------------------------------------------- records

    def finished(self, outcome: CallOutcome[str]) -> None:
        """A call finished: record it (unless the shape keeps its own books), then tell it."""
        if self.keep_records:
            self.record(outcome)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def record(self, outcome: CallOutcome[str]) -> None:
        """Record a finished call; a failure is logged and may stop the run."""
        request = self.requests.get(outcome.key)
        if outcome.result is not None:
            record = CallRecord.from_result(outcome.key, outcome.result)
            batch_id = self.batch_of.get(outcome.key)
            self.records.append(record.model_copy(update={"batch_id": batch_id}))
            return
        if outcome.over_budget:  # not made: skipped, never a failure
            agent = request.agent if request else "?"
            self.skip(outcome.key, agent, f"budget: {outcome.error}")
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
        self.logger.error("%s call %r failed: %s", self.name, outcome.key, describe(error))
        self.failed(f"call {outcome.key!r}")

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
        self.failed(f"step {key!r}")

    # ----------------------------------------------------------------- the end

    def publish(
        self,
        title: str,
        records: list[CallRecord],
        extra: Mapping[str, object],
        links: Mapping[str, Path] | None = None,
    ) -> None:
        """Publish the run's artifacts (best effort: the result is what counts).

        In the ``fanout`` command they are created while the run ends
        (:func:`~prefect_fanout.bounded.now_or_by_the_end`).
        """
        now_or_by_the_end(self._publish, title, list(records), dict(extra), dict(links or {}))

    def _publish(
        self,
        title: str,
        records: list[CallRecord],
        extra: dict[str, object],
        links: dict[str, Path],
    ) -> None:
        try:
            publish_run_artifacts(self.name, title, records, extra, links=links)
        except Exception as exc:  # artifacts are informative
            self.logger.warning("could not publish the run's artifacts: %s", exc)

    def end(self, status: RunStatus, message: str, data: Any) -> State[Any]:
        """Log the run's end and return the flow run's final state carrying ``data``."""
        join_ended_children_of_this_run()  # their threads end before this run (a script's)
        self.logger.info("%s %s: %s", self.name, status, message)
        return final_state(status, message, data)
