"""Groups of calls as child flow runs of the run in context, side by side on threads.

Prefect's server draws at most 10,000 nodes in one flow run's graph (its setting
``PREFECT_SERVER_API_MAX_FLOW_RUN_GRAPH_NODES``), so a run that puts 100,000 calls in
one flow run has no graph at all. A map therefore runs each partition (and ``fan_out``
each group over :data:`DEFAULT_RUN_CALLS`) as a child flow run of its own flow run: the
parent's graph shows the children, each child's graph shows its calls, and each
child's state (``Completed``, ``Partial``, ``Failed``) is what the parent's list of
subflow runs shows.

A child is the ``fanout-partition-run`` flow called in a thread of this process with
the parent's context, which is how Prefect makes a subflow run; its body is handed to
it in a context variable, so the flow's parameters stay small (the flow and its
parameters travel to Dask and Ray workers in every task's context). Children start
one at a time (Prefect numbers a parent's task runs from a dict in the parent's
context, which one thread at a time must update) and then run side by side.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from prefect import Flow, flow
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_fanout.bounded import call_within, on_final_state
from prefect_fanout.call.recording import family_root, join_family
from prefect_fanout.call.window import CallOutcome, Submitted
from prefect_fanout.engine.chunks import cut_chunks
from prefect_fanout.errors import describe

__all__ = [
    "DEFAULT_RUN_CALLS",
    "CallGate",
    "ChildRun",
    "child_run_name",
    "group_state",
    "child_threads_joined_at_end",
    "join_ended_children",
    "join_ended_children_of_this_run",
    "run_as_child",
    "run_in_parts",
    "run_side_by_side",
]

K = TypeVar("K")

DEFAULT_RUN_CALLS = 5000
"""Most calls in one child flow run: half the server's graph limit of 10,000 nodes, leaving room
for the child's own task runs (a partition's write, Dask or Ray chunk tasks).

Prefect's UI draws a flow run's graph at once only up to 2,000 task runs; above that its page
shows "Display graph", and one click draws it. ``calls_per_run=1900`` draws every graph at once,
at the price of more child runs: B12 (docs/scale.md) measured 100,000 calls on SQLite 27% slower
with 60 child runs than with 20."""

START_WAIT_SECONDS = 90.0
"""How long the Prefect API may take to create a child run before the run asks whether the API
still answers: if not (a server that went away makes Prefect's client retry for about a
minute), the child's calls run in the parent; if it does (a busy SQLite server), it waits on."""

MOST_START_WAIT_SECONDS = 600.0
"""The longest a run waits for a child run that an answering API does not create."""

HEALTH_SECONDS = 5.0
"""How long the check that the API still answers may take."""

REPORT_WAIT_SECONDS = 15.0
"""How long a child run's end may take to be reported once its work is done."""

GATE_NOTE_SECONDS = 60.0
"""How often a call waiting for a free slot says so."""

_body: contextvars.ContextVar[Callable[[], Any] | None] = contextvars.ContextVar(
    "fanout_child_run_body", default=None
)
_on_final_state: contextvars.ContextVar[Callable[[State[Any]], None] | None] = (
    contextvars.ContextVar("fanout_child_run_final_state", default=None)
)
_starting = threading.Lock()
_api_away: set[Any] = set()  # parent flow runs whose children could not be created in time
_ending: list[threading.Thread] = []  # threads of child runs whose final state is reported
_ending_lock = threading.Lock()


def child_run_name(label: str, part: int, parts: int) -> str:
    """``label``, or ``label (part/parts)`` when a group is cut into several child runs."""
    return label if parts == 1 else f"{label} ({part}/{parts})"


def group_state(outcomes: Iterable[CallOutcome[Any]], calls: int) -> State[Any]:
    """A child run's final state by its calls' outcomes.

    Failed when every call failed, Completed named ``Partial`` when some failed or were
    not made (a budget, ``all_or_nothing``), else Completed.
    """
    outcomes = list(outcomes)
    failed = sum(1 for o in outcomes if not o.ok and not o.over_budget)
    skipped = calls - len(outcomes) + sum(1 for o in outcomes if o.over_budget)
    if calls and failed == calls:
        return Failed(message=f"all {calls} calls failed")
    if failed or skipped:
        parts = [f"{failed} of {calls} calls failed"] if failed else []
        parts += [f"{skipped} not made"] if skipped else []
        return Completed(name="Partial", message=", ".join(parts))
    return Completed(message=f"{calls} calls completed")


def _final_state_set(_flow: Any, _flow_run: Any, state: State[Any]) -> None:
    """A child run's state hook: tell the parent that the run's final state is set.

    A module-level function, so the child's flow object (sent to Dask and Ray workers
    in every task's context) holds no closure over this process's locks and events.
    """
    heard = _on_final_state.get()
    if heard is not None:
        heard(state)


@functools.lru_cache(maxsize=64)
def _child_flow(threads: int) -> Flow[..., Any]:
    """The child run's flow with a pool of ``threads``: built once per size, not per run.

    Building a Prefect flow builds its parameters' schema (15 ms, B1's whole map makes one
    child run); the run's name comes from its ``name`` parameter.
    """
    return partition_run.with_options(
        flow_run_name="{name}",
        task_runner=ThreadPoolTaskRunner(max_workers=threads),
        # Prefect calls a flow's state hooks as soon as its final state is set; the run's
        # end (joining its heartbeat thread, which sleeps in whole seconds) goes on after,
        # while the parent does its own work.
        **on_final_state(_final_state_set),
    )


def _the_body() -> Callable[[], Any]:
    body = _body.get()
    if body is None:
        raise RuntimeError(
            "fanout-partition-run runs only as a child of a map or pattern run "
            "(its work is handed over in this process)"
        )
    return body


@flow(
    name="fanout-partition-run",
    log_prints=False,
    persist_result=False,
    validate_parameters=False,
)
def partition_run(name: str, calls: int) -> Any:
    """One partition (or a part of one) of a map or pattern run, as a child flow run.

    Args:
        name: The run's name (``partition 2024-01``), shown as its flow run's name too.
        calls: The calls it makes, for the run's parameters in the UI.

    Returns:
        What its body returns: a final state (``Completed``, ``Partial``, ``Failed``).
    """
    return _the_body()()


@dataclass
class ChildRun:
    """One child flow run's outcome.

    Attributes:
        name: The flow run's name.
        state: Its final state (its body's, when the run's end was not reported); None
            when it could not run.
        error: Why it could not run (its creation failed, its engine failed).
        in_parent: The body ran in the parent's flow run instead (the API did not create
            the child in time).
    """

    name: str
    state: State[Any] | None
    error: BaseException | None = None
    in_parent: bool = False

    def why(self) -> str:
        """Why a call of this run has no outcome: the run's error, or its final state."""
        if self.error is not None:
            return f"its flow run could not run: {describe(self.error)}"
        if self.state is not None and self.state.message:
            return f"its flow run ended {self.state.name}: {self.state.message}"
        return "its flow run ended before the call"


class _Start:
    """The start lock, held from a child's creation until its body starts, released once."""

    def __init__(self) -> None:
        _starting.acquire()
        self._lock = threading.Lock()
        self._held = True

    def release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                _starting.release()


def run_as_child(
    name: str,
    calls: int,
    body: Callable[[], State[Any] | None],
    *,
    threads: int,
    logger: Any = None,
) -> ChildRun:
    """Run ``body`` as a child flow run named ``name`` of the run in context.

    The child runs on a thread of its own with this thread's context; this thread waits
    for it. When the Prefect API does not create the child within
    :data:`START_WAIT_SECONDS` (or fails to), ``body`` runs here, in the parent's flow run,
    and so do the parent's later children: its calls never wait on an API that went
    away. When the body has returned but the child's end is not reported within
    :data:`REPORT_WAIT_SECONDS`, the body's state is returned and the child's thread
    left to finish (a daemon). Outside a flow run ``body`` simply runs here.

    Args:
        name: The child flow run's name.
        calls: The calls ``body`` makes (a parameter of the run, for the UI).
        body: Makes the calls (submitting task runs to the child's runner) and returns
            the child's final state.
        threads: The child's thread pool: calls in flight at most.
        logger: Where the fallbacks are said.

    Returns:
        The child's final state, or the error that kept it from running.
    """
    parent = FlowRunContext.get()
    parent_id = parent.flow_run.id if parent is not None and parent.flow_run else None
    if parent_id is None or parent_id in _api_away:
        return ChildRun(name, body(), in_parent=parent_id is not None)
    claim = threading.Lock()
    moved, finished, done = threading.Event(), threading.Event(), threading.Event()
    ended = threading.Event()  # the child's final state is set, or its thread is done
    box: dict[str, Any] = {}
    start = _Start()

    def reported(state: State[Any]) -> None:
        box["reported"] = state
        ended.set()

    def started() -> State[Any] | None:
        start.release()
        moved.set()
        if not claim.acquire(blocking=False):  # too late: the parent ran the body
            return Cancelled(message="its calls ran in the parent flow run")
        try:
            box["body"] = body()
            return box["body"]
        finally:
            finished.set()

    def work() -> None:
        token, heard = _body.set(started), _on_final_state.set(reported)
        join_family(family)  # the child's calls report to the parent's recording guard
        try:
            box["state"] = _child_flow(threads)(name=name, calls=calls, return_state=True)
        except BaseException as exc:  # the run could not be created, or its engine failed
            box["error"] = exc
        finally:
            _body.reset(token)
            _on_final_state.reset(heard)
            start.release()
            done.set()
            ended.set()
            moved.set()

    family = family_root() or parent_id
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(work,), name="fanout-child", daemon=True)
    thread.start()
    waited, away = 0.0, False
    while not moved.wait(START_WAIT_SECONDS):  # a slow server is waited for; a gone one is not
        waited += START_WAIT_SECONDS
        away = not _api_answers() or waited >= MOST_START_WAIT_SECONDS
        if away:
            break
        if logger is not None:
            logger.info("waiting for the Prefect API to create flow run %r (%.0f s)", name, waited)
    if not finished.is_set() and claim.acquire(blocking=False):  # the body never started
        start.release()
        error = box.get("error")
        if away or error is not None:  # the API is gone: the parent's later runs go here too
            _api_away.add(parent_id)
        if logger is not None:
            why = describe(error) if error is not None else f"no answer in {waited:g} s"
            logger.warning(
                "the Prefect API did not create flow run %r (%s): its calls, and those of "
                "the runs after it, run in this flow run",
                name,
                why,
            )
        return ChildRun(name, body(), error=None, in_parent=True)
    finished.wait()  # the body's calls are bounded by their own deadlines
    if not ended.wait(REPORT_WAIT_SECONDS):
        if logger is not None:
            logger.warning(
                "flow run %r did its work; its end was not reported to the Prefect API within %g s",
                name,
                REPORT_WAIT_SECONDS,
            )
        return ChildRun(name, box.get("body"))
    if not done.is_set():  # reported: its thread ends by itself, at the latest at exit
        with _ending_lock:
            _ending.append(thread)
    state = box.get("state", box.get("reported", box.get("body")))
    return ChildRun(name, state, box.get("error"))


def join_ended_children(timeout: float = REPORT_WAIT_SECONDS) -> None:
    """Wait (at most ``timeout`` seconds in all) for the threads of child runs that have ended.

    A child run's final state is reported before its thread is done (see
    :func:`run_as_child`): the thread goes on to join Prefect's heartbeat thread (which
    sleeps in whole seconds) and log the run's last line, while the parent does its own
    work. They are joined before the interpreter begins to exit: a thread still logging
    then made Prefect's log handler print a traceback (seen in scripts/demo.sh). A shape
    joins them before its own flow run ends (:func:`join_ended_children_of_this_run`: the
    map after writing its outputs, the patterns in ``Engine.end``), unless it runs inside
    :func:`child_threads_joined_at_end` (the ``fanout`` command), which joins them at the
    block's end; the process's exit calls this again.
    """
    deadline = time.monotonic() + timeout
    while True:
        with _ending_lock:
            if not _ending:
                return
            thread = _ending.pop()
        thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(join_ended_children)  # returns at once when no child run's thread is left

_left_to_end: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fanout_child_threads_joined_at_end", default=False
)


@contextmanager
def child_threads_joined_at_end() -> Iterator[None]:
    """Within: shapes leave the ended child runs' threads to the block's end, which joins them.

    The ``fanout`` command runs its flow in this block, so a child's last second (Prefect's
    heartbeat join) overlaps the end of its parent's flow run instead of adding to it; the
    threads are still joined before the interpreter begins to exit. Code that calls a flow
    from Python has no such block: there each shape joins its children before its run ends.
    A block left by an error (an interrupted command) does not wait: the exit's join does.
    """
    token = _left_to_end.set(True)
    try:
        yield
    finally:
        _left_to_end.reset(token)
    join_ended_children()


def join_ended_children_of_this_run() -> None:
    """Join the ended child runs' threads before this shape's run ends (see above)."""
    if not _left_to_end.get():
        join_ended_children()


def run_in_parts(
    label: str,
    keys: list[K],
    bound: int,
    run_part: Callable[[list[K]], State[Any] | None],
    *,
    threads: int,
    logger: Any = None,
) -> Iterator[tuple[list[K], ChildRun]]:
    """``keys`` cut into parts of at most ``bound``, each run by ``run_part`` as a child run.

    The parts run one after another as child runs ``LABEL (i/n)``; each is yielded with its
    outcome once it ends, so the caller can account for keys a run left without an outcome.
    """
    parts = cut_chunks(keys, bound)
    for number, part in enumerate(parts, start=1):
        name = child_run_name(label, number, len(parts))
        body = partial(run_part, list(part))
        yield list(part), run_as_child(name, len(part), body, threads=threads, logger=logger)


def _api_answers() -> bool:
    """True when the Prefect API answers its health check within :data:`HEALTH_SECONDS`."""
    from prefect.client.orchestration import get_client

    def check() -> bool:
        with get_client(sync_client=True) as client:
            return client.api_healthcheck() is None

    try:
        return call_within(HEALTH_SECONDS, "a health check", check)
    except Exception:
        return False


def run_side_by_side(
    jobs: Iterable[Callable[[], None]], at_once: int, *, what: str
) -> Iterator[BaseException | None]:
    """Run ``jobs`` (each runs child flow runs) on ``at_once`` threads with this context.

    Yields each job's error (None when it returned) as it ends. The threads are never
    abandoned: the caller consumes the generator to the end.

    Args:
        jobs: Each job starts its child runs with :func:`run_as_child`.
        at_once: Jobs running at once.
        what: What a job is, for the thread names.
    """
    pending = iter(jobs)
    ended: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
    running = 0

    def start(job: Callable[[], None], number: int) -> None:
        context = contextvars.copy_context()  # the flow run's, so a child is its subflow

        def work() -> None:
            error: BaseException | None = None
            try:
                context.run(job)
            except BaseException as exc:  # reported to the caller, never lost in a thread
                error = exc
            ended.put(error)

        threading.Thread(target=work, name=f"fanout-{what}-{number}", daemon=True).start()

    number = 0
    while True:
        while running < max(1, at_once):
            job = next(pending, None)
            if job is None:
                break
            start(job, number)
            number += 1
            running += 1
        if running == 0:
            return
        # each job's calls are bounded by their own deadlines; this wait is theirs
        error = ended.get()
        running -= 1
        yield error


class CallGate:
    """At most ``slots`` calls in flight over every child run of a run (``max_workers``).

    Args:
        slots: Calls in flight at most.
        logger: Where a call waiting more than a minute for a slot says so.
    """

    def __init__(self, slots: int, logger: Any = None) -> None:
        self.slots = max(1, slots)
        self._free = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self._in_flight = 0
        self.peak = 0
        self._logger = logger

    def _take(self) -> None:
        waited = 0.0
        while not self._free.acquire(timeout=GATE_NOTE_SECONDS):
            waited += GATE_NOTE_SECONDS
            if self._logger is not None:
                self._logger.info(
                    "a call waits for one of the %d calls in flight to end (%.0f s so far)",
                    self.slots,
                    waited,
                )
        with self._lock:
            self._in_flight += 1
            self.peak = max(self.peak, self._in_flight)

    def _give(self, *_done: Any) -> None:
        with self._lock:
            self._in_flight -= 1
        self._free.release()

    def gated(self, submit: Callable[[], Submitted]) -> Callable[[], Submitted]:
        """``submit`` made to take a slot first and give it back when the call ends."""

        def take_then_submit() -> Submitted:
            self._take()
            try:
                submitted = submit()
            except BaseException:
                self._give()
                raise
            if isinstance(submitted, PrefectFuture):
                submitted.add_done_callback(self._give)
            else:  # answered already (a cache hit, a batch answer): no slot held
                self._give()
            return submitted

        return take_then_submit
