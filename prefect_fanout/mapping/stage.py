"""The map stage: each item an agent-call task, each partition written atomically or dead-lettered.

Items are submitted round-robin across ``active_partitions`` open partitions
(the next one opens as soon as an open one has handed out all its items), with
at most ``max_workers`` calls in flight. Bounding the open partitions makes
partitions finish, and their files appear, one after another; it also keeps
Prefect's per-tag-set concurrency-slot requests (one per task run, one queue
per distinct tag set, and ``partition:KEY`` makes each partition a tag set)
from contending on the server: with 8 partitions of 125 instant calls, 8 open
partitions took 2-3 times longer than 1 or 2. A failed call
is recorded as a failed row; it never fails its partition. When a partition's
last item finishes, a ``partition:KEY`` task writes
``partitions/partition-{safe key}.jsonl`` through a temp file and
``os.replace``, retried with exponential backoff. A partition whose write still
fails after the retries is dead-lettered: its items are listed for manual
review and the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture

from prefect_fanout.call.window import CallOutcome, CallWindow, Submitted
from prefect_fanout.engine.chunks import ChunkRun, chunk_slots_for, run_chunks
from prefect_fanout.errors import describe
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


def interleave(groups: Mapping[str, list[Item]], active: int) -> Iterator[tuple[str, Item]]:
    """Items round-robin across at most ``active`` open partitions, in partition order.

    A partition opens when one of the open ones has handed out all its items,
    so ``active`` partitions progress together and finish one after another.
    """
    waiting = iter(groups.items())
    opened: list[tuple[str, list[Item], list[int]]] = []  # key, items, [next position]
    while True:
        while len(opened) < max(1, active):
            entry = next(waiting, None)
            if entry is None:
                break
            if entry[1]:
                opened.append((entry[0], entry[1], [0]))
        if not opened:
            return
        for slot in list(opened):
            key, items, position = slot
            yield key, items[position[0]]
            position[0] += 1
            if position[0] == len(items):
                opened.remove(slot)


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

    def submitter(self, key: str, item: Item) -> Callable[[], Submitted]:
        if item.id in self.answered:  # answered in batch mode (or failed there for good)
            answer = self.answered[item.id]
            return lambda: answer
        request = self.job.requests[item.id]
        request = request.model_copy(update={"tags": (*request.tags, f"partition:{key}")})
        return partial(self.job.path.submit, request)

    def submit_write(self, key: str, name: str, items: list[Item]) -> PrefectFuture[Any]:
        retries = self.job.partition_retries
        delays = [self.job.partition_retry_delay * 2**n for n in range(retries)]
        writer = write_partition.with_options(
            # No tags: every distinct tag set costs a concurrency-limit request per run.
            task_run_name=f"partition:{key}",
            retries=retries,
            retry_delay_seconds=delays or 0,
        )
        rows = [item_row(item, key, self.stage.outcomes[item.id]) for item in items]
        return writer.submit(str(self.parts_dir / name), rows)

    def collect_write(
        self, key: str, name: str, items: list[Item], future: PrefectFuture[Any]
    ) -> None:
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
            attempts = self.job.partition_retries + 1
            reason = f"partition output could not be written after {attempts} attempt(s): "
            reason += describe(exc)
            self.logger.error("partition %s dead-lettered (%d items): %s", key, len(items), reason)
            self.stage.dead[key] = reason
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
        self.stage.reports[key] = report


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


def _tagged_requests(job: MapJob, groups: Mapping[str, list[Item]]) -> dict[str, CallRequest]:
    """Each item's request tagged with its partition, by id."""
    requests = {}
    for key, items in groups.items():
        for item in items:
            request = job.requests[item.id]
            tagged = (*request.tags, f"partition:{key}")
            requests[item.id] = request.model_copy(update={"tags": tagged})
    return requests


def _chunked(
    job: MapJob,
    groups: Mapping[str, list[Item]],
    slots: int,
    measured: ChunkRun,
    logger: Any,
) -> Iterator[CallOutcome[tuple[str, Item]]]:
    """The map's outcomes, its partitions sent to the workers in chunks."""
    requests = _tagged_requests(job, groups)
    models = {request.model for request in requests.values()}
    by_id = {item.id: (key, item) for key, items in groups.items() for item in items}
    finished = run_chunks(
        {key: [item.id for item in items] for key, items in groups.items()},
        requests,
        transports={model: job.resolver.transport(model) for model in models},
        cache=job.cache,
        max_workers=job.max_workers,
        slots=slots,
        given_size=job.options.chunk_size,
        measured=measured,
        logger=logger,
    )
    first = True
    for outcome in finished:
        if first:
            logger.info(
                "map: partitions sent to %d worker slot(s) in %s-call chunks, %d call(s) at "
                "once in each",
                measured.slots,
                measured.size,
                measured.threads,
            )
            first = False
        yield CallOutcome(by_id[outcome.key], outcome.result, outcome.error)


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

    Args:
        job: The prepared job (its requests, resolver, cache and retry settings).
        groups: Partition key -> items.
        names: Partition key -> file name (see :func:`partition_file_names`).
        parts_dir: The directory of the partition files.
        window: Bounds the calls in flight and measures the concurrency reached.
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
    remaining = {key: len(items) for key, items in groups.items()}
    writes: dict[str, PrefectFuture[Any]] = {}
    meter = job.path.budget
    progress = ProgressReporter(
        total,
        f"fanout map: {total} items in {len(groups)} partitions",
        note=meter.progress_line if meter is not None else None,
    )
    slots = chunk_slots(job, answered)
    measured = ChunkRun()
    deployment = job.options.partition_deployment
    if deployment and answered is None and job.path.budget is None:
        slots = None
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
    elif slots is None:
        order = interleave(groups, job.active_partitions)
        jobs = (((key, item), mapper.submitter(key, item)) for key, item in order)
        finished = window.run(jobs)
    else:
        finished = _chunked(job, groups, slots, measured, logger)
    step = max(1, total // 10)
    for count, done in enumerate(finished, start=1):
        key, item = done.key
        stage.outcomes[item.id] = CallOutcome(item.id, done.result, done.error)
        if not done.over_budget:  # a call not made spent nothing and is no call
            stage.usage.add(done.result, failed=not done.ok, error=done.error)
        progress.advance(failed=not done.ok and not done.over_budget)
        if not done.ok and not done.over_budget:
            logger.warning("item %s (partition %s) failed: %s", item.id, key, done.error)
        remaining[key] -= 1
        if remaining[key] == 0:
            writes[key] = mapper.submit_write(key, names[key], groups[key])
        if count % step == 0 or count == total:
            logger.info("map: %d/%d items done (%d failed)", count, total, stage.usage.failed)
    progress.finish()
    if slots is not None:
        window.note_peak(min(job.max_workers, measured.peak * min(slots, measured.chunks)))
    for key in groups:
        mapper.collect_write(key, names[key], groups[key], writes[key])
    stage.duration_s = time.perf_counter() - started
    return stage
