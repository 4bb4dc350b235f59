"""Calls on Dask and Ray: a chunk of calls is what goes to a worker.

Sending each call to a cluster on its own costs more than the call (prefect-dask
serialises Prefect's settings context with every submission; Ray starts a task in a
worker process that imports Prefect). On ``dask`` and ``ray`` a map (and ``fan_out``)
therefore cuts each partition (a group of independent calls) into chunks and sends
each chunk as one ``map-chunk`` task run. In the worker process the chunk runs its
calls as ``agent-call`` task runs on a thread pool of its own, through the same path
as the thread runner (cache lookup, call lock, transport retries, tag limits held on
the Prefect server), and sends back one outcome per call. The flow's process only
schedules chunks and keeps the books (a map: writes the partition files, merges and
reduces).

The split of ``max_workers``: the parent keeps at most two chunks per worker slot
in flight (a slot is one Dask worker thread, one Ray CPU), and each chunk runs
``ceil(max_workers / slots)`` calls at once, so about ``max_workers`` calls are in
flight over the whole cluster. A ``LocalCluster`` or local Ray started for a map
has one slot per worker process (one per CPU, at most ``max_workers``).

Chunk size: ``chunk_size`` calls at most (the run option), by default
``clamp(total / (4 * slots), 50, 500)``; a group is cut into equal chunks.
"""

from __future__ import annotations

import math
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from prefect_fanout.call.door import open_call
from prefect_fanout.call.path import CallPath
from prefect_fanout.call.window import CallOutcome, CallWindow
from prefect_fanout.errors import AgentCallError, describe
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.llm.transport import Transport
from prefect_fanout.options import CacheOptions

__all__ = [
    "WAIT_NOTE_SECONDS",
    "MIN_CHUNK",
    "MAX_CHUNK",
    "ChunkDone",
    "ChunkRun",
    "ChunkWork",
    "active_worker_slots",
    "chunk_slots_for",
    "chunk_size",
    "cut_chunks",
    "next_finished_chunk",
    "run_chunk",
    "run_chunks",
    "wait_bound",
    "worker_slots",
]

MIN_CHUNK = 50
"""Fewest calls in a default chunk (a chunk costs one task run and one round trip)."""

T = TypeVar("T")

MAX_CHUNK = 500
"""Most calls in a default chunk (smaller chunks balance the workers better)."""

WAIT_NOTE_SECONDS = 60.0
"""How often a run says which chunks (or child flow runs) it still waits for."""


@dataclass(frozen=True)
class ChunkWork:
    """What a worker needs to run one chunk: its calls and how to make them.

    Attributes:
        key: The group's key (a map's partition key).
        index: The chunk's position in its group.
        calls: (call id, request) of each call, in the group's order.
        transports: The transport of each model the calls use.
        cache: The cache settings of every call.
        threads: Calls in flight at most inside the worker.
    """

    key: str
    index: int
    calls: tuple[tuple[str, CallRequest], ...]
    transports: Mapping[str, Transport]
    cache: CacheOptions
    threads: int


@dataclass
class ChunkDone:
    """One chunk's outcomes, sent back to the flow's process.

    Attributes:
        key: The group's key.
        index: The chunk's position in its group.
        outcomes: (call id, result, error) of each call, in the order they finished.
        peak: The most requests (or calls) in flight at once inside the worker.
        duration_s: The chunk's wall time in the worker.
    """

    key: str
    index: int
    outcomes: list[tuple[str, AgentResult | None, BaseException | None]] = field(
        default_factory=list
    )
    peak: int = 0
    duration_s: float = 0.0


def _travelling(error: BaseException | None) -> BaseException | None:
    """The error itself when it pickles back to the flow's process, else its description."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        copy = AgentCallError(describe(error))
        copy.model = getattr(error, "model", None)  # type: ignore[attr-defined]
        copy.finish_reason = getattr(error, "finish_reason", None)  # type: ignore[attr-defined]
        return copy


def _run_calls(work: ChunkWork) -> ChunkDone:
    started = time.perf_counter()
    done = ChunkDone(work.key, work.index)
    window: CallWindow[str] = CallWindow(work.threads)
    jobs = (
        (
            item_id,
            partial(open_call, request, transport=work.transports[request.model], cache=work.cache),
        )
        for item_id, request in work.calls
    )
    for outcome in window.run(jobs):
        done.outcomes.append((outcome.key, outcome.result, _travelling(outcome.error)))
    done.peak = window.peak
    done.duration_s = time.perf_counter() - started
    return done


@task(name="map-chunk", cache_policy=NO_CACHE, persist_result=False, retries=0)
def run_chunk(work: ChunkWork) -> ChunkDone:
    """Run one chunk's calls as agent-call task runs on a thread pool in this process.

    Runs inside a worker (a Prefect task run of the map's flow run): the calls are
    submitted to a ``ThreadPoolTaskRunner`` of ``work.threads`` put in place of the
    flow's task runner for this chunk, so each call is a task run of the same flow
    run, made exactly as on the thread runner.

    Returns:
        The chunk's outcomes, one per call.
    """
    from prefect.context import FlowRunContext, SyncClientContext
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect.transactions import CommitMode, transaction

    from prefect_fanout.call.tags import LIMITED_TAGS

    LIMITED_TAGS.refresh()  # this worker process may not have looked the limits up yet
    # The calls are task runs nested in this one: by default their transactions would
    # commit (store their answers, release their call locks) only when the whole chunk
    # ends. Eager commits store each answer as its call ends, as on the thread runner,
    # so a chunk that dies leaves what it answered for the rerun.
    # One Prefect client for the chunk's calls: without a client in context each task
    # run on the pool builds two (an SSL context each), a tenth of a worker's CPU.
    with transaction(commit_mode=CommitMode.EAGER), SyncClientContext.get_or_create():
        context = FlowRunContext.get()
        if context is None:  # not on a worker of a flow run: run the calls where we are
            return _run_calls(work)
        runner = ThreadPoolTaskRunner(max_workers=work.threads)
        with runner, context.model_copy(update={"task_runner": runner}):
            return _run_calls(work)


def wait_bound(calls: int, threads: int, timeout_seconds: float) -> float:
    """The longest to wait for ``calls`` run ``threads`` at a time: each to its deadline, twice.

    Plus 600 s for the cluster's own delays (a worker starting, a chunk queued behind another).
    """
    return 600.0 + 2.0 * timeout_seconds * max(1, calls) / max(1, threads)


def chunk_size(total: int, slots: int, given: int | None) -> int:
    """The most calls in one chunk: ``given``, or ``clamp(total / (4 * slots), 50, 500)``."""
    if given is not None:
        return max(1, given)
    return max(MIN_CHUNK, min(MAX_CHUNK, math.ceil(total / (4 * max(1, slots)))))


def cut_chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """A group's items cut into equal chunks of at most ``size`` (input order kept)."""
    if not items:
        return []
    count = math.ceil(len(items) / size)
    step = len(items) / count
    bounds = [round(n * step) for n in range(count + 1)]
    return [items[bounds[n] : bounds[n + 1]] for n in range(count)]


def worker_slots(runner: Any) -> int:
    """Chunks a started Dask or Ray task runner runs at once: worker threads, or CPUs."""
    try:
        client = getattr(runner, "client", None)  # prefect-dask's DaskTaskRunner
        if client is not None and hasattr(client, "nthreads"):
            return max(1, sum(client.nthreads().values()))
    except Exception:
        pass
    try:
        import ray

        if ray.is_initialized():
            return max(1, int(ray.cluster_resources().get("CPU", 1)))
    except Exception:
        pass
    return 1


@dataclass
class ChunkRun:
    """What the chunked map stage measured: chunks, their peak, the slots it used."""

    chunks: int = 0
    slots: int = 1
    size: int = 0
    threads: int = 1
    peak: int = 0


def active_worker_slots(kind: str) -> int | None:
    """Worker slots of the flow run's task runner when it is a started ``kind`` runner.

    None when ``kind`` is ``thread``, outside a flow run, or when the flow run's runner
    is another kind: the calls then go one by one.
    """
    from prefect.context import FlowRunContext

    from prefect_fanout.runners import runner_matches

    if kind == "thread":
        return None
    context = FlowRunContext.get()
    if context is None or not runner_matches(context.task_runner, kind):
        return None
    return worker_slots(context.task_runner)


def chunk_slots_for(
    path: CallPath,
    requests: Callable[[], Iterable[CallRequest]],
    logger: Any = None,
) -> int | None:
    """Worker slots when the calls of ``path`` go to the workers in chunks, else None.

    They do on a started Dask or Ray runner of the kind the run's options name, when the
    run has no budget (spent call by call in this process) and every input fits its
    context (``long_inputs`` applies in this process, call by call). ``requests`` is
    called only when a runner is there to send to.
    """
    if path.budget is not None:
        return None
    slots = active_worker_slots(path.options.runner())
    if slots is None:
        return None
    if not all(path.fits(request) for request in requests()):
        if logger is not None:
            logger.info("long inputs: the calls go one by one in this process")
        return None
    return slots


def run_chunks(
    groups: Mapping[str, Sequence[str]],
    requests: Mapping[str, CallRequest],
    *,
    transports: Mapping[str, Transport],
    cache: CacheOptions,
    max_workers: int,
    slots: int,
    given_size: int | None,
    measured: ChunkRun,
    logger: Any,
) -> Iterator[CallOutcome[str]]:
    """Send every group's chunks to the workers; yield each call's outcome by call id.

    Chunks go in group order, at most ``2 * slots`` in flight; outcomes come back a
    chunk at a time, as the chunks finish. A chunk whose task run failed (a worker
    died and the cluster gave up on it) yields its calls as failed: what they answered
    is stored, so the rerun asks only the missing ones. Closing the generator sends no
    further chunk (those in flight finish on their workers).

    Args:
        groups: Group key (a map's partition) -> the ids of its calls, in order.
        requests: Each call's request, by id.
        transports: The transport of each model.
        cache: The cache settings of every call.
        max_workers: Calls in flight at most over the cluster.
        slots: Chunks the cluster runs at once.
        given_size: The ``chunk_size`` option, if set.
        measured: Filled with the chunk count, size, threads and peak.
        logger: Where the waits for slow chunks are reported.
    """
    total = sum(len(ids) for ids in groups.values())
    size = chunk_size(total, slots, given_size)
    threads = max(1, math.ceil(max_workers / slots))
    measured.slots, measured.size, measured.threads = slots, size, threads
    pending = (
        ChunkWork(
            key=key,
            index=index,
            calls=tuple((call_id, requests[call_id]) for call_id in chunk),
            transports=transports,
            cache=cache,
            threads=threads,
        )
        for key, ids in groups.items()
        for index, chunk in enumerate(cut_chunks(ids, size))
    )
    in_flight: dict[int, tuple[ChunkWork, PrefectFuture[Any]]] = {}
    deadlines: dict[int, float] = {}  # chunk number -> when to give up on it (monotonic)
    allowed: dict[int, float] = {}  # chunk number -> its bound in seconds
    finished: list[int] = []
    ready = threading.Condition()

    def on_done(number: int, _future: Any) -> None:
        with ready:
            finished.append(number)
            ready.notify()

    number = 0
    exhausted = False
    while True:
        while not exhausted and len(in_flight) < 2 * slots:
            work = next(pending, None)
            if work is None:
                exhausted = True
                break
            chunk_task = run_chunk.with_options(task_run_name=f"chunk:{work.key}:{work.index}")
            future = chunk_task.submit(work)
            in_flight[number] = (work, future)
            # Queued behind at most one chunk per slot: twice its own calls' bound.
            longest = max(request.timeout_seconds for _id, request in work.calls)
            allowed[number] = wait_bound(2 * len(work.calls), threads, longest)
            deadlines[number] = time.monotonic() + allowed[number]
            future.add_done_callback(partial(on_done, number))
            number += 1
            measured.chunks += 1
        if not in_flight:
            return
        overdue = next_finished_chunk(ready, finished, in_flight, deadlines, logger)
        if overdue is not None:  # past its bound: its calls fail, the rest of the run goes on
            work, _future = in_flight.pop(overdue)
            deadlines.pop(overdue)
            logger.error(
                "chunk %s:%d did not finish on its worker in time; its calls are failed "
                "(what they answered is stored: a rerun asks the rest)",
                work.key,
                work.index,
            )
            reason = AgentCallError(
                f"chunk {work.index} of {work.key} did not finish on its worker "
                f"within {allowed[overdue]:.0f} s (its calls' deadlines, twice, plus 600 s)"
            )
            for call_id, _request in work.calls:
                yield CallOutcome(call_id, None, reason)
            continue
        done_number = finished.pop(0)
        if done_number not in in_flight:  # a chunk given up on earlier finished after all
            continue
        work, future = in_flight.pop(done_number)
        deadlines.pop(done_number, None)
        yield from _outcomes(work, future, measured)


def next_finished_chunk(
    ready: threading.Condition,
    finished: list[int],
    in_flight: Mapping[int, tuple[ChunkWork, Any]],
    deadlines: Mapping[int, float],
    logger: Any,
) -> int | None:
    """Wait until a chunk finishes (None) or one in flight passes its bound (its number).

    Says every minute which chunks it still waits for.
    """
    with ready:
        while not finished:
            now = time.monotonic()
            late = [n for n in in_flight if deadlines.get(n, now + 1) <= now]
            if late:
                return late[0]
            soonest = min((deadlines[n] for n in in_flight if n in deadlines), default=now)
            if not ready.wait(timeout=max(0.1, min(WAIT_NOTE_SECONDS, soonest - now))):
                logger.info(
                    "waiting for %d chunk(s) on the workers: %s",
                    len(in_flight),
                    ", ".join(f"{w.key}:{w.index}" for w, _ in list(in_flight.values())[:5]),
                )
    return None


def _outcomes(
    work: ChunkWork, future: PrefectFuture[Any], measured: ChunkRun
) -> Iterator[CallOutcome[str]]:
    try:
        done = future.result(raise_on_failure=True)
    except Exception as exc:  # the chunk's task run failed: every call of it is failed
        reason = AgentCallError(
            f"chunk {work.index} of {work.key} failed on its worker: {describe(exc)}"
        )
        for call_id, _request in work.calls:
            yield CallOutcome(call_id, None, reason)
        return
    measured.peak = max(measured.peak, done.peak)
    seen = set()
    for call_id, result, error in done.outcomes:
        seen.add(call_id)
        yield CallOutcome(call_id, result, error)
    for call_id, _request in work.calls:  # never expected: a call the chunk did not report
        if call_id not in seen:
            yield CallOutcome(call_id, None, AgentCallError("no outcome from its chunk"))
