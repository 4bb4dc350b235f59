"""Map a corpus over an agent in partitions, then merge: the ``fanout-map`` flow.

The run, inside one Prefect flow run:

1. (``topic:agent=NAME`` only) classify every item with the classifier agent.
2. Partition the items; each item becomes one agent-call task tagged
   ``partition:KEY``, submitted with at most ``max_workers`` in flight, the
   partitions interleaved so they all progress together.
3. When a partition's last item finishes, a ``partition:KEY`` task writes
   ``partitions/partition-{safe key}.jsonl`` atomically, retried with
   exponential backoff; a partition still failing after that is dead-lettered.
4. Merge: ``final.jsonl`` (one line per item, input order), ``dead_letters.jsonl``,
   optionally ``reduce.json`` (:mod:`prefect_fanout.mapping.reduce`), and last
   ``summary.json``; then the run's artifacts.

A failed item never fails its partition, and a failed partition never fails the
run. Each call is cached by content, so rerunning the same command after a
crash or a partial failure makes only the calls that have no stored answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prefect_fanout.batch.ledger import BATCH_DIR
from prefect_fanout.batch.phase import BatchPhase, run_batch_phase
from prefect_fanout.bounded import now_or_by_the_end
from prefect_fanout.call.recording import recording_guard
from prefect_fanout.call.stored import (
    first_commit_error,
    quiet_commit_errors,
    storage_path,
    unstored,
)
from prefect_fanout.call.tags import LIMITED_TAGS
from prefect_fanout.call.window import CallOutcome, CallWindow
from prefect_fanout.engine.child_runs import join_ended_children_of_this_run
from prefect_fanout.engine.run import Engine
from prefect_fanout.errors import describe
from prefect_fanout.files import remove_stale_temp_files, write_json_atomic, write_jsonl_atomic
from prefect_fanout.llm.request import output_as_text
from prefect_fanout.llm.testmodel import is_offline
from prefect_fanout.mapping.classify import classify_items
from prefect_fanout.mapping.corpus import Item
from prefect_fanout.mapping.job import MapJob
from prefect_fanout.mapping.partition import partition
from prefect_fanout.mapping.reduce import Piece, TreeReduce, tree_reduce
from prefect_fanout.mapping.stage import (
    PARTITIONS_DIR,
    MapStage,
    earlier_partition_files,
    item_row,
    map_partitions,
    partition_file_names,
)
from prefect_fanout.mapping.summary import MapSummary, ReduceReport
from prefect_fanout.outputs import OutputClaim, claim_output
from prefect_fanout.outputs.writing import OutputWrites
from prefect_fanout.ui.artifacts import publish_run_artifacts
from prefect_fanout.ui.failures import publish_failures
from prefect_fanout.usage import CallRecord, Ledger, limit_wait_by_endpoint

__all__ = ["FILES", "run_map"]

FILES = {
    "final": "final.jsonl",
    "summary": "summary.json",
    "dead_letters": "dead_letters.jsonl",
    "partitions": PARTITIONS_DIR,
    "reduce": "reduce.json",
}


def _logger() -> Any:
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # outside a run
        return logging.getLogger("prefect_fanout.map")


def _record(
    job: MapJob,
    item: Item,
    key: str,
    done: CallOutcome[Any],
    status: str,
    error: str | None,
    batch_id: str | None = None,
) -> CallRecord:
    if done.result is not None:
        record = CallRecord.from_result(item.id, done.result, partition=key)
        return record.model_copy(update={"status": status, "error": error, "batch_id": batch_id})
    request = job.requests[item.id]
    record = CallRecord.from_error(
        item.id, request.agent, request.model, done.error, status, error, partition=key
    )
    endpoint = None if is_offline(request.base_url) else request.base_url
    return record.model_copy(update={"endpoint": endpoint, "batch_id": batch_id})


def _merge(
    job: MapJob,
    groups: Mapping[str, list[Item]],
    stage: MapStage,
    records: list[CallRecord],
    writes: OutputWrites,
    batch_of: Mapping[str, str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Write final.jsonl and dead_letters.jsonl; return the failed, dead-letter, skipped ids.

    final.jsonl's rows are made while the file is written, one at a time (at 100,000 items
    a list of them would add about 30 MB to the run's peak).
    """
    batch_of = batch_of or {}
    key_of = {item.id: key for key, items in groups.items() for item in items}
    dead_rows: list[dict[str, Any]] = []
    failed: list[str] = []
    skipped: list[str] = []
    for item in job.items:
        key, done = key_of[item.id], stage.outcomes[item.id]
        reason = stage.dead.get(key)
        if reason is not None:
            dead_rows.append({"id": item.id, "partition": key, "reason": reason})
            records.append(
                _record(job, item, key, done, "dead_letter", reason, batch_of.get(item.id))
            )
            continue
        if done.over_budget:
            skipped.append(item.id)
            records.append(
                CallRecord(
                    id=item.id,
                    agent=job.agent.name,
                    status="skipped",
                    error=f"budget: {done.error}",
                    partition=key,
                )
            )
            continue
        if not done.ok:
            failed.append(item.id)
        status, error = ("completed", None) if done.ok else ("failed", describe(done.error))
        records.append(_record(job, item, key, done, status, error, batch_of.get(item.id)))

    def final_rows() -> Iterator[dict[str, Any]]:
        for item in job.items:
            key = key_of[item.id]
            reason = stage.dead.get(key)
            if reason is not None:
                yield {"id": item.id, "partition": key, "status": "dead_letter", "error": reason}
            else:
                yield item_row(item, key, stage.outcomes[item.id])

    out = job.output_dir
    writes.attempt(FILES["final"], lambda: write_jsonl_atomic(out / FILES["final"], final_rows()))
    writes.attempt(
        FILES["dead_letters"], lambda: write_jsonl_atomic(out / FILES["dead_letters"], dead_rows)
    )
    return failed, [row["id"] for row in dead_rows], skipped


def _reduce(
    job: MapJob,
    groups: Mapping[str, list[Item]],
    stage: MapStage,
    window: CallWindow,
    logger: Any,
    writes: OutputWrites,
) -> TreeReduce:
    """Run the tree reduce over the completed outputs, partition by partition; write reduce.json."""
    assert job.reducer is not None
    pieces = [
        Piece(item.id, output_as_text(done.result.output), key)
        for key, items in groups.items()
        if key not in stage.dead
        for item in items
        if (done := stage.outcomes[item.id]).result is not None
    ]
    logger.info("reduce: combining %d outputs with agent %r", len(pieces), job.reducer.name)
    engine = Engine(
        "reduce",
        job.path,
        default_workers=job.max_workers,
        window=window,
        logger=logger,
    )
    tree = tree_reduce(
        pieces, agent=job.reducer, engine=engine, token_budget=job.settings.reduce_budget
    )
    path = job.output_dir / FILES["reduce"]
    writes.attempt(FILES["reduce"], lambda: write_json_atomic(path, tree.to_json()))
    if tree.status == "failed":
        logger.error("reduce failed: %s", tree.error)
    return tree


def _about(job: MapJob) -> dict[str, Any]:
    """The summary's fields that say which map this was (its run, input, agent, outputs)."""
    return {
        "flow_run_id": _flow_run_id(),
        "source": job.source,
        "agent": job.agent.name,
        "model": job.model_name,
        "partition_spec": job.spec_text,
        "output_dir": str(job.output_dir),
        "total": len(job.items),
    }


def run_map(job: MapJob) -> MapSummary:
    """Run a prepared map job inside the current flow run and write its outputs.

    Args:
        job: From :func:`~prefect_fanout.mapping.job.prepare_map`.

    Returns:
        The summary (also written to ``summary.json``).

    Raises:
        OutputOwnershipError: The output directory is not this run's to write
            (see :mod:`prefect_fanout.outputs.ownership`).

    """
    owner = claim_output(job.output_dir, job.source_path, job.settings.force, _flow_run_id())
    try:
        return _run_map(job, owner)
    finally:
        owner.release()
        # the partitions' runs ended (their states are set) while the map wrote its outputs;
        # their threads finish before the map's flow does (unless the fanout command joins
        # them before it exits), so no log line comes after the interpreter began to exit
        join_ended_children_of_this_run()


def _run_map(job: MapJob, owner: OutputClaim) -> MapSummary:
    started = time.perf_counter()
    LIMITED_TAGS.refresh()  # a limit created before this run applies to it
    logger = _logger()
    quiet_commit_errors()  # a full result storage is reported once, below
    writes = OutputWrites(logger)
    window = CallWindow(job.max_workers)
    out, parts_dir = job.output_dir, job.output_dir / PARTITIONS_DIR
    parts_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    remove_stale_temp_files(parts_dir)
    usage: dict[str, Ledger] = {}
    records: list[CallRecord] = []
    labels = None
    if job.classifier is not None:
        labels, usage["classify"], classified = classify_items(
            job.classifier_requests,
            path=job.path,
            window=window,
            logger=logger,
        )
        records.extend(classified)
    groups = partition(job.items, job.partitioner, labels=labels)
    names = partition_file_names(groups)
    kept = earlier_partition_files(parts_dir, names)
    if kept:
        logger.warning(
            "map: %d partition file(s) of an earlier run are not written by this run and are "
            "kept as they are: %s",
            len(kept),
            ", ".join(kept[:5]) + (" ..." if len(kept) > 5 else ""),
        )
    targets = [FILES["final"], FILES["summary"], FILES["dead_letters"]]
    targets += [f"{PARTITIONS_DIR}/{name}" for name in names.values()]
    if job.reducer is not None:
        targets.append(FILES["reduce"])
    replaced = sorted(name for name in targets if (out / name).is_file())
    owner.record(targets)  # listed before written: a killed run still owns what it left
    logger.info(
        "map: %d items in %d partitions (%s), agent %r, up to %d calls at once",
        len(job.items),
        len(groups),
        job.spec_text,
        job.agent.name,
        job.max_workers,
    )
    batch = _batch_phase(job, logger) if job.options.batch else None
    if batch is not None and batch.pending:
        return _pending_summary(job, batch, started, logger)
    stage = map_partitions(
        job,
        groups,
        names,
        parts_dir=parts_dir,
        window=window,
        logger=logger,
        answered=batch.outcomes if batch is not None else None,
    )
    usage["map"] = stage.usage
    unstored_ids = _unstored(job, stage, logger)
    failed_ids, dead_ids, skipped_ids = _merge(
        job, groups, stage, records, writes, batch and batch.batch_of
    )
    meter = job.path.budget
    reduce_report = None
    if job.reducer is not None and meter is not None and meter.reached:
        logger.warning("reduce: not started: %s", meter.reason())
        reduce_report = ReduceReport(
            agent=job.reducer.name,
            status="skipped",
            inputs=0,
            token_budget=job.settings.reduce_budget,
            error=f"budget: {meter.reason()}",
        )
    elif job.reducer is not None:
        tree = _reduce(job, groups, stage, window, logger, writes)
        usage["reduce"] = tree.usage
        reduce_report = ReduceReport(
            agent=tree.agent,
            status=tree.status,
            inputs=tree.inputs,
            levels=tree.levels,
            calls=tree.calls,
            cached=tree.cached,
            token_budget=tree.token_budget,
            error=tree.error,
        )
    else:
        owner.remove(FILES["reduce"])  # an earlier run's, and only if fanout wrote it
    total = Ledger()
    for figures in usage.values():
        total.merge(figures)
    dead = set(dead_ids)
    outcomes = stage.outcomes
    summary = MapSummary(
        **_about(job),
        completed=sum(1 for i in job.items if outcomes[i.id].ok and i.id not in dead),
        failed=len(failed_ids),
        dead_letter=len(dead_ids),
        skipped=len(skipped_ids),
        skipped_ids=skipped_ids,
        cached=sum(1 for o in outcomes.values() if o.result is not None and o.result.cached),
        partitions=[stage.reports[key] for key in groups],
        failed_ids=failed_ids,
        dead_letter_ids=dead_ids,
        usage=usage,
        cost_usd=total.cost_usd,
        duration_s=round(time.perf_counter() - started, 3),
        map_duration_s=round(stage.duration_s, 3),
        items_per_second=round(len(job.items) / stage.duration_s, 2) if stage.duration_s else 0.0,
        max_workers=job.max_workers,
        concurrency_reached=window.peak,
        reduce=reduce_report,
        files={k: v for k, v in FILES.items() if k != "reduce" or job.reducer is not None},
        replaced=replaced,
        kept=kept,
        limit_wait_s={
            name: round(waited, 3) for name, (_, waited) in limit_wait_by_endpoint(records).items()
        },
        recording_wait_s=round(guard.waited_s, 3) if (guard := recording_guard()) else 0.0,
        unstored=len(unstored_ids),
        unstored_ids=unstored_ids,
        missing_outputs=writes.missing,
        batch=batch.report if batch is not None else None,
        budget=(
            meter.report(len(job.items) - len(skipped_ids), len(job.items), len(skipped_ids))
            if meter is not None
            else None
        ),
    )
    if summary.budget_reached and summary.budget is not None:
        logger.warning("map: %s", summary.budget.message)
    document = summary.model_dump(mode="json")
    if not writes.attempt(
        FILES["summary"], lambda: write_json_atomic(out / FILES["summary"], document)
    ):
        summary.missing_outputs = dict(writes.missing)  # stdout still carries the summary
    now_or_by_the_end(_publish, summary, records, out, logger)
    now_or_by_the_end(_publish_failures, job, summary, records, logger)
    return summary


def _publish_failures(
    job: MapJob, summary: MapSummary, records: list[CallRecord], logger: Any
) -> None:
    """The failed calls' errors and prompt excerpts as a markdown artifact."""

    def prompt_of(record: CallRecord) -> str | None:
        request = job.requests.get(record.id)
        return request.prompt if request is not None else None

    title = f"fanout map: {summary.agent}"
    try:
        publish_failures("map", title, records, prompt_of)
    except Exception as exc:  # artifacts inform; they never fail a finished run
        logger.warning("could not publish the failures artifact: %s", exc)


def _unstored(job: MapJob, stage: MapStage, logger: Any) -> list[str]:
    """Ids of answers of this run that did not reach result storage; logged once."""
    answered = [
        (item.id, result.cache_key or job.requests[item.id].cache_key())
        for item in job.items
        if (result := stage.outcomes[item.id].result) is not None
        and not result.cached
        # a cut or chunked input was stored under the requests actually sent
        and not result.truncated
        and not result.chunks
    ]
    missing = unstored(answered, job.cache)
    if missing:
        logger.error(
            "map: %d of %d answer(s) could not be stored in result storage %s (%s); they are "
            "in the outputs, but a rerun asks for them again",
            len(missing),
            len(answered),
            storage_path(job.cache),
            first_commit_error() or "missing or empty records",
        )
    return missing


def _batch_phase(job: MapJob, logger: Any) -> BatchPhase:
    """Batch mode: the map's uncached calls through the Batch API (:mod:`prefect_fanout.batch`)."""
    return run_batch_phase(
        {item.id: job.requests[item.id] for item in job.items},
        endpoint=job.resolver.endpoint(),
        transport=job.resolver.transport(job.model_name),
        cache=job.cache,
        options=job.options,
        output_dir=job.output_dir,
        logger=logger,
    )


def _pending_summary(job: MapJob, batch: BatchPhase, started: float, logger: Any) -> MapSummary:
    """The summary of a batch run that submitted and did not wait (``batch_wait`` false).

    Nothing but ``summary.json`` and ``batches/`` is written: the partition files and
    ``final.jsonl`` come with the run that collects the batches.
    """
    logger.info(
        "map: %d call(s) wait in %d batch(es); rerun the same command to collect them",
        len(batch.pending),
        sum(1 for row in batch.report.batches if row.status not in ("completed", "failed")),
    )
    summary = MapSummary(
        **_about(job),
        completed=0,
        failed=0,
        dead_letter=0,
        cached=0,
        partitions=[],
        usage={},
        cost_usd=0.0,
        duration_s=round(time.perf_counter() - started, 3),
        map_duration_s=0.0,
        items_per_second=0.0,
        max_workers=job.max_workers,
        concurrency_reached=0,
        files={"summary": FILES["summary"], "batches": BATCH_DIR},
        batch=batch.report,
    )
    write_json_atomic(job.output_dir / FILES["summary"], summary.model_dump(mode="json"))
    return summary


def _flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


def _publish(summary: MapSummary, records: list[CallRecord], out: Path, logger: Any) -> None:
    extra: dict[str, Any] = {
        "Items": summary.total,
        "Completed": summary.completed,
        "Failed": summary.failed,
        "Dead letters": summary.dead_letter,
        "Skipped (budget)": summary.skipped,
        "Partitions": len(summary.partitions),
        "Items per second": summary.items_per_second,
        "Concurrency reached": f"{summary.concurrency_reached} of {summary.max_workers}",
        "Output directory": summary.output_dir,
    }
    if summary.batch is not None:
        report = summary.batch
        extra["Batch"] = (
            f"{report.answered} answered by {len(report.batches)} batch(es) "
            f"({report.created} created, {report.resumed} resumed), {report.online} sent "
            f"online after their batch, cost {report.cost_usd} (online: {report.online_cost_usd})"
        )
    if summary.budget is not None:
        extra["Budget"] = summary.budget.line()
        extra["Budget left"] = summary.budget.left_text()
    if summary.reduce is not None:
        extra["Reduce"] = (
            f"{summary.reduce.status}, {summary.reduce.levels} level(s), "
            f"{summary.reduce.calls} call(s)"
        )
    links = {name: out / name for name in (FILES["final"], FILES["summary"])}
    title = f"fanout map: {summary.agent} over {summary.total} items ({summary.partition_spec})"
    try:
        publish_run_artifacts("map", title, records, extra=extra, links=links)
    except Exception as exc:  # artifacts inform; they never fail a finished run
        logger.warning("could not publish the run's artifacts: %s", exc)
