"""The map stage: each partition a child flow run, each item an agent-call task run in it.

Each partition runs as a child flow run ``partition KEY`` of the map's flow run (a partition
over ``calls_per_run`` calls, 5,000 by default, as ``partition KEY (i/n)`` runs one after
another), so every flow run's graph stays well under the Prefect server's limit of 10,000
nodes: the map's graph shows its partitions and the reduce, a partition's graph its calls.
``active_partitions`` partitions run at once (the next starts as one ends), sharing
``max_workers`` calls in flight; bounding them makes partitions finish, and their files
appear, one after another. A failed call is recorded as a failed row; it never fails its
partition's file. As its last task a partition's run writes ``partitions/partition-{safe
key}.jsonl`` (task run ``partition:KEY``) through a temp file and ``os.replace``, retried
with exponential backoff. A partition whose write still fails after the retries is
dead-lettered: its items are listed for manual review and the run goes on. A partition's run
ends Completed, ``Partial`` (some calls failed) or Failed (dead-lettered, or every call
failed): the map's list of subflow runs is the partitions' status.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import Failed, State
from prefect.utilities.annotations import quote

from prefect_fanout.call.window import CallOutcome, CallWindow
from prefect_fanout.engine.child_runs import (
    DEFAULT_RUN_CALLS,
    CallGate,
    child_run_name,
    group_state,
    run_as_child,
    run_side_by_side,
)
from prefect_fanout.engine.chunks import ChunkRun, chunk_slots_for, cut_chunks
from prefect_fanout.engine.run import Call, Engine
from prefect_fanout.errors import AgentCallError, describe
from prefect_fanout.files import jsonable, write_jsonl_atomic
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.mapping.corpus import Item
from prefect_fanout.mapping.deployed import run_deployed_chunks
from prefect_fanout.mapping.job import MapJob
from prefect_fanout.mapping.partition import safe_partition_filenames
from prefect_fanout.mapping.summary import PartitionReport
from prefect_fanout.ui.progress import ProgressReporter
from prefect_fanout.usage import Ledger

__all__ = [
    "PARTITIONS_DIR",
    "MapStage",
    "item_row",
    "map_partitions",
    "partition_file_names",
    "earlier_partition_files",
    "write_partition",
]

PARTITIONS_DIR = "partitions"


@task(name="write-partition", cache_policy=NO_CACHE, persist_result=False)
def write_partition(path: str, rows: list[dict[str, Any]]) -> int:
    """Write one partition's rows to its JSONL file atomically (a Prefect task).

    Returns:
        The attempt that succeeded (1 for the first), from Prefect's run count.

    """
    from prefect.runtime import task_run

    write_jsonl_atomic(Path(path), rows)
    return max(1, int(task_run.run_count or 1))


def partition_file_names(keys: Iterable[str]) -> dict[str, str]:
    """Partition key -> ``partition-{safe key}.jsonl``, unique even case-insensitively."""
    return {key: f"partition-{safe}.jsonl" for key, safe in safe_partition_filenames(keys).items()}


def item_row(item: Item, key: str, done: CallOutcome[Any]) -> dict[str, Any]:
    """An item's line in its partition file and in final.jsonl."""
    row: dict[str, Any] = {"id": item.id, "partition": key}
    if done.over_budget:
        row.update(status="skipped", error=f"budget: {done.error}")
    elif done.ok and done.result is not None:
        row.update(
            status="completed",
            output=jsonable(done.result.output),
            model=done.result.model,
            finish_reason=done.result.finish_reason,
        )
        if done.result.truncated:  # long_inputs: truncate cut the input to fit
            row["truncated"] = True
        if done.result.chunks:  # long_inputs: chunk answered it in parts
            row["chunks"] = done.result.chunks
    else:
        row.update(
            status="failed",
            error=describe(done.error),
            model=getattr(done.error, "model", None),
            finish_reason=getattr(done.error, "finish_reason", None),
        )
    return row


def earlier_partition_files(parts_dir: Path, names: Mapping[str, str]) -> list[str]:
    """Partition files of earlier runs that this run does not write (kept, never deleted)."""
    if not parts_dir.is_dir():
        return []
    current = set(names.values())
    return sorted(
        f"{PARTITIONS_DIR}/{entry.name}"
        for entry in parts_dir.glob("partition-*.jsonl")
        if entry.name not in current and entry.is_file()
    )


@dataclass
class MapStage:
    """What the map stage did.

    Attributes:
        outcomes: Each item's call outcome, by item id.
        reports: Each partition's report, by key (in partition order).
        dead: Dead-lettered partitions: key -> reason.
        usage: The mapping calls' usage.
        duration_s: Wall time of the stage.

    """

    outcomes: dict[str, CallOutcome[Any]] = field(default_factory=dict)
    reports: dict[str, PartitionReport] = field(default_factory=dict)
    dead: dict[str, str] = field(default_factory=dict)
    usage: Ledger = field(default_factory=Ledger)
    duration_s: float = 0.0


class _Mapper:
    def __init__(
        self,
        job: MapJob,
        parts_dir: Path,
        logger: Any,
        answered: Mapping[str, AgentResult | BaseException] | None = None,
    ) -> None:
        self.job = job
        self.answered = answered or {}
        self.parts_dir = parts_dir
        self.logger = logger
        self.stage = MapStage()
        self.lock = threading.Lock()
        self.progress: ProgressReporter | None = None
        self.total = 0
        self.count = 0

    def answers(self, items: Iterable[Item]) -> dict[str, AgentResult | BaseException]:
        """Batch mode's answers (or the errors that failed them for good) of ``items``."""
        return {item.id: self.answered[item.id] for item in items if item.id in self.answered}

    def request(self, key: str, item: Item) -> CallRequest:
        """An item's request, tagged with its partition."""
        return _in_partition(self.job.requests[item.id], key)

    def record(self, key: str, item: Item, done: CallOutcome[Any], logger: Any) -> None:
        """Keep one call's outcome (from any partition's thread) and report progress."""
        failed = not done.ok and not done.over_budget
        if failed:
            logger.warning("item %s (partition %s) failed: %s", item.id, key, done.error)
        with self.lock:
            stage = self.stage
            stage.outcomes[item.id] = CallOutcome(item.id, done.result, done.error)
            if not done.over_budget:  # a call not made spent nothing and is no call
                stage.usage.add(done.result, failed=not done.ok, error=done.error)
            if self.progress is not None:
                self.progress.advance(failed=failed)
            self.count += 1
            step = max(1, self.total // 10)
            if self.count % step == 0 or self.count == self.total:
                self.logger.info(
                    "map: %d/%d items done (%d failed)",
                    self.count,
                    self.total,
                    stage.usage.failed,
                )

    def submit_write(self, key: str, name: str, items: list[Item]) -> PrefectFuture[Any]:
        retries = self.job.settings.partition_retries
        delays = [self.job.settings.partition_retry_delay * 2**n for n in range(retries)]
        writer = write_partition.with_options(
            # No tags: every distinct tag set costs a concurrency-limit request per run.
            task_run_name=f"partition:{key}",
            retries=retries,
            retry_delay_seconds=delays or 0,
        )
        with self.lock:
            rows = [item_row(item, key, self.stage.outcomes[item.id]) for item in items]
        # quoted: Prefect would walk every row twice looking for futures (to record the task
        # run's inputs, then to resolve them), 0.1 s for 1,000 rows at the end of B1's map
        return writer.submit(str(self.parts_dir / name), quote(rows))

    def collect_write(
        self, key: str, name: str, items: list[Item], future: PrefectFuture[Any], logger: Any
    ) -> PartitionReport:
        with self.lock:
            outcomes = [self.stage.outcomes[item.id] for item in items]
        report = PartitionReport(
            key=key,
            file=f"{PARTITIONS_DIR}/{name}",
            items=len(items),
            completed=sum(1 for o in outcomes if o.ok),
            failed=sum(1 for o in outcomes if not o.ok and not o.over_budget),
            skipped=sum(1 for o in outcomes if o.over_budget),
            cached=sum(1 for o in outcomes if o.result is not None and o.result.cached),
        )
        try:
            future.wait()
            report.attempts = int(future.state.result(raise_on_failure=True))
        except Exception as exc:
            attempts = self.job.settings.partition_retries + 1
            reason = f"partition output could not be written after {attempts} attempt(s): "
            reason += describe(exc)
            logger.error("partition %s dead-lettered (%d items): %s", key, len(items), reason)
            report = PartitionReport(
                key=key,
                file=None,
                items=len(items),
                dead_letter=len(items),
                status="dead_letter",
                attempts=attempts,
                error=reason,
            )
            stale = self.parts_dir / name
            if stale.is_file():  # an earlier run's file would no longer tell the truth
                stale.unlink(missing_ok=True)
        with self.lock:
            if report.error is not None:
                self.stage.dead[key] = report.error
            self.stage.reports[key] = report
        return report

    def missing(self, key: str, items: Iterable[Item], reason: BaseException) -> None:
        """Fail the items a partition's run left without an outcome (it could not run)."""
        for item in items:
            with self.lock:
                known = item.id in self.stage.outcomes
            if not known:
                self.record(key, item, CallOutcome((key, item), None, reason), self.logger)


def chunk_slots(
    job: MapJob, answered: Mapping[str, AgentResult | BaseException] | None
) -> int | None:
    """Worker slots when this map goes to the workers in chunks, else None (call by call).

    Chunks go to Dask and Ray when the flow run's task runner is the one chosen; a
    run with a budget (spent call by call in this process), with batch answers or with
    an input over its context (``long_inputs`` applies here) sends its calls one by one.
    """
    if answered is not None:
        return None
    return chunk_slots_for(job.path, job.requests.values)


def calls_ahead(workers: int) -> int:
    """Calls a lone partition keeps queued beyond its ``workers`` threads: an eighth, 2 or more.

    Measured on B1 (1,000 calls of 0.5 s, 50 threads): with none queued a thread that ended a
    call idled until the collecting thread had submitted the next, and 44.6 calls were in
    flight on average; with some queued, 46.8.
    """
    return max(2, workers // 8)


def _tagged_requests(job: MapJob, groups: Mapping[str, list[Item]]) -> dict[str, CallRequest]:
    """Each item's request tagged with its partition, by id."""
    return {
        item.id: _in_partition(job.requests[item.id], key)
        for key, items in groups.items()
        for item in items
    }


def _in_partition(request: CallRequest, key: str) -> CallRequest:
    """``request`` tagged ``partition:KEY`` (a concurrency limit on the tag applies to it)."""
    return request.model_copy(update={"tags": (*request.tags, f"partition:{key}")})


def _part_state(outcomes: list[CallOutcome[Any]], report: PartitionReport | None) -> State[Any]:
    """A partition run's final state: Failed when dead-lettered, else by its calls."""
    if report is not None and report.status == "dead_letter":
        return Failed(message=f"dead-lettered: {report.error}")
    return group_state(outcomes, len(outcomes))


class _PartitionRuns:
    """Each partition of a map as child flow runs of the map's flow run (see engine.child_runs)."""

    def __init__(self, mapper: _Mapper, slots: int | None, partitions: int) -> None:
        self.mapper = mapper
        self.job = mapper.job
        self.slots = slots
        self.gate = CallGate(self.job.max_workers, mapper.logger)
        # one partition's run at a time: its own pool bounds its calls, no gate is shared
        self.alone = min(partitions, self.job.settings.active_partitions) == 1
        context = FlowRunContext.get()
        self.runner = context.task_runner if slots is not None and context else None
        self.peak = 0  # calls in flight at once in any one part (on workers: their threads)
        self.bound = self.job.options.calls_per_run or DEFAULT_RUN_CALLS

    @property
    def reached(self) -> int:
        """The most calls in flight at once: the shared gate's count, or the parts' own."""
        gated = self.slots is None and not self.alone
        return self.gate.peak if gated else self.peak

    def part(self, key: str, name: str, items: list[Item], part: list[Item], last: bool) -> Any:
        """The body of one child run: its calls, then (the last part) the partition's file."""
        from prefect.logging import get_run_logger

        mapper, logger = self.mapper, get_run_logger()
        by_id = {item.id: item for item in part}
        workers = self.job.max_workers
        # Alone, the child's pool of max_workers threads is the bound, and the window keeps
        # a few calls queued ahead: a thread that ends a call starts the next at once
        # instead of waiting for this thread to hear of the end and submit one. Side by
        # side, the gate shares max_workers between the partitions (no call queued ahead).
        ahead = calls_ahead(workers) if self.alone and self.runner is None else 0
        engine = Engine(
            f"partition {key}",
            self.job.path,
            default_workers=workers,
            window=CallWindow(workers + ahead),  # the recording guard of this child run
            logger=logger,
            gate=None if ahead else self.gate,  # max_workers over every partition at once
            on_outcome=lambda done: mapper.record(key, by_id[done.key], done, logger),
            keep_records=False,  # the partition's rows and the map's records are the books
            chunk_group=key,  # its chunks' task runs: chunk:KEY:i
        )
        engine.answered.update(mapper.answers(part))  # batch mode's, used as they are
        calls = [Call(item.id, self.job.agent, request=mapper.request(key, item)) for item in part]
        if self.runner is None:
            engine.run_calls(calls)
        else:  # Dask or Ray: this part's calls go to the map's workers in chunks
            context = FlowRunContext.get()
            assert context is not None
            with context.model_copy(update={"task_runner": self.runner}):
                engine.run_calls(calls)
        with mapper.lock:  # no more at once than the pool's threads, whatever was queued
            self.peak = max(self.peak, min(workers, engine.window.peak))
        report = None
        if last:
            future = mapper.submit_write(key, name, items)
            report = mapper.collect_write(key, name, items, future, logger)
        with mapper.lock:
            outcomes = [mapper.stage.outcomes[item.id] for item in part]
        return _part_state(outcomes, report)

    def partition(self, key: str, name: str, items: list[Item]) -> None:
        """Run one partition as its child flow run(s), one after another; report it."""
        mapper = self.mapper
        parts = cut_chunks(items, self.bound)
        for number, part in enumerate(parts, start=1):
            run_name = child_run_name(f"partition {key}", number, len(parts))
            last = number == len(parts)
            body = partial(self.part, key, name, items, list(part), last)
            child = run_as_child(
                run_name, len(part), body, threads=self.job.max_workers, logger=mapper.logger
            )
            if child.error is not None:
                mapper.logger.error(
                    "partition %s: its flow run %r could not run: %s",
                    key,
                    run_name,
                    describe(child.error),
                )
            why = child.why()
            reason = AgentCallError(f"the flow run {run_name!r} did not make this call: {why}")
            mapper.missing(key, part, reason)
        if key not in mapper.stage.reports:  # the last run could not write it: write it here
            future = mapper.submit_write(key, name, items)
            mapper.collect_write(key, name, items, future, mapper.logger)
        report = mapper.stage.reports[key]
        mapper.logger.info(
            "partition %s: %d items, %d completed, %d failed, %d skipped -> %s",
            key,
            report.items,
            report.completed,
            report.failed,
            report.skipped,
            report.file or "dead letters",
        )

    def run(self, groups: Mapping[str, list[Item]], names: Mapping[str, str]) -> None:
        """Every partition, ``active_partitions`` at once; raises the first job's own error."""
        jobs = [partial(self.partition, key, names[key], items) for key, items in groups.items()]
        errors = [
            error
            for error in run_side_by_side(
                jobs, self.job.settings.active_partitions, what="partition"
            )
            if error is not None
        ]
        if errors:
            raise errors[0]


def map_partitions(
    job: MapJob,
    groups: Mapping[str, list[Item]],
    names: Mapping[str, str],
    *,
    parts_dir: Path,
    window: CallWindow,
    logger: Any,
    answered: Mapping[str, AgentResult | BaseException] | None = None,
) -> MapStage:
    """Map every item of every partition (inside a flow) and write each partition's file.

    Each partition runs as a child flow run ``partition KEY`` of the map's flow run (cut
    into ``partition KEY (i/n)`` runs of at most ``calls_per_run`` calls), whose task runs
    are its calls and the write of its file; ``active_partitions`` run at once, sharing
    ``max_workers`` calls in flight. With ``partition_deployment`` each chunk is a flow
    run of that deployment instead.

    Args:
        job: The prepared job (its requests, resolver, cache and retry settings).
        groups: Partition key -> items.
        names: Partition key -> file name (see :func:`partition_file_names`).
        parts_dir: The directory of the partition files.
        window: Measures the concurrency reached.
        logger: Where progress and failures are logged.
        answered: Outcomes already known by item id (batch mode's answers, or the
            errors that failed them for good); the other items are submitted.

    Returns:
        The outcomes, partition reports, dead letters and usage.

    """
    started = time.perf_counter()
    mapper = _Mapper(job, parts_dir, logger, answered)
    stage = mapper.stage
    total = sum(len(items) for items in groups.values())
    meter = job.path.budget
    mapper.total = total
    mapper.progress = ProgressReporter(
        total,
        f"fanout map: {total} items in {len(groups)} partitions",
        note=meter.progress_line if meter is not None else None,
    )
    deployment = job.options.partition_deployment
    if deployment and answered is None and job.path.budget is None:
        measured = ChunkRun()
        finished = run_deployed_chunks(
            deployment,
            groups,
            _tagged_requests(job, groups),
            options=job.options,
            cache=job.cache,
            max_workers=job.max_workers,
            measured=measured,
            logger=logger,
        )
        remaining = {key: len(items) for key, items in groups.items()}
        writes: dict[str, PrefectFuture[Any]] = {}
        for done in finished:
            key, item = done.key
            mapper.record(key, item, done, logger)
            remaining[key] -= 1
            if remaining[key] == 0:
                writes[key] = mapper.submit_write(key, names[key], groups[key])
        mapper.progress.finish()
        for key in groups:
            mapper.collect_write(key, names[key], groups[key], writes[key], logger)
    else:
        runs = _PartitionRuns(mapper, chunk_slots(job, answered), len(groups))
        try:
            runs.run(groups, names)
        finally:
            mapper.progress.finish()
        window.note_peak(runs.reached)
    stage.duration_s = time.perf_counter() - started
    return stage
