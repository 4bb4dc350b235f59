"""``fanout map --dry-run``: every call of a map, looked up in the cache, counted and priced.

Nothing is asked and nothing is written: the job is prepared as for a run (corpus, agents,
endpoint, partitions, prompts), then each item's call is looked up in the cache; the calls
to ask are estimated (:mod:`prefect_fanout.budget.estimate`) per partition.
"""

from __future__ import annotations

from prefect_fanout.budget.dryrun import DryRun
from prefect_fanout.budget.estimate import estimate_call
from prefect_fanout.call.cache import stored_answer
from prefect_fanout.mapping.job import MapJob
from prefect_fanout.mapping.partition import partition

__all__ = ["dry_run_map"]

UNLABELLED = "(all items: labels come from the classifier)"


def dry_run_map(job: MapJob) -> DryRun:
    """The dry run of a prepared map job (no request is made).

    Args:
        job: From :func:`~prefect_fanout.mapping.job.prepare_map`.

    Returns:
        The calls, cache hits, calls to ask, tokens and cost, per partition.
    """
    options = job.options
    report = DryRun(
        key="total",
        kind="map",
        level="partition",
        budget_tokens=options.budget_tokens,
        budget_usd=options.budget_usd,
    )
    if job.classifier is not None:
        for item in job.items:
            request = job.classifier_requests[item.id]
            hit = stored_answer(request, job.cache)
            report.count("classify", None if hit else estimate_call(request), model=request.model)
        groups = {UNLABELLED: list(job.items)}
        report.notes.append(
            "topic:agent: partitions are known only after the classifier answers; the "
            "mapping calls are counted in one group"
        )
    else:
        groups = partition(job.items, job.partitioner)
    for key, items in groups.items():
        for item in items:
            request = job.requests[item.id]
            hit = stored_answer(request, job.cache)
            report.count(key, None if hit else estimate_call(request), model=request.model)
    if job.reducer is not None:
        report.notes.append(
            f"--reduce {job.reducer.name}: the reduce's calls depend on the answers and are "
            "not counted"
        )
    report.notes.append(report.batch_note())
    return report
