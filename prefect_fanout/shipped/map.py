"""The ``fanout-map`` flow and its Python entry points."""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import FlowRunContext
from pydantic import ValidationError

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.bounded import on_final_state, start_work_left
from prefect_fanout.budget.dryrun import DryRun
from prefect_fanout.engine.run import carried_result
from prefect_fanout.engine.run import final_state as final_state_of
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.mapping.dryrun import dry_run_map
from prefect_fanout.mapping.job import MapJob, prepare_map
from prefect_fanout.mapping.outcome import map_final_state
from prefect_fanout.mapping.run import run_map
from prefect_fanout.mapping.spec import MapSpec, spec_of
from prefect_fanout.mapping.summary import MapSummary
from prefect_fanout.options import RunOptions
from prefect_fanout.runners import check_task_runner
from prefect_fanout.runners.active import chosen_runner, on_task_runner, sends_chunks
from prefect_fanout.shipped.reporting import keep_outcome, reported_best_effort

__all__ = ["map_corpus", "map_flow", "run_map_flow"]


# A job prepared (and checked) by the caller in this process, handed to the flow run it
# starts so the corpus is not read (nor the agents resolved) twice. A context variable:
# the flow runs in the caller's context; a run started from the UI or a deployment finds
# none (or one for another spec) and prepares its job from its parameters.
_prepared_job: contextvars.ContextVar[MapJob | None] = contextvars.ContextVar(
    "fanout_prepared_map_job", default=None
)


def _map_run_name() -> str:
    from prefect.runtime import flow_run

    return spec_of(flow_run.parameters["spec"]).run_name()


@flow(
    name="fanout-map",
    flow_run_name=_map_run_name,
    log_prints=False,
    validate_parameters=True,
    # the run's artifacts are created once its state is set (in the fanout command)
    **on_final_state(start_work_left),
)
def map_flow(spec: MapSpec, options: RunOptions | None = None) -> Any:
    """Map a corpus over an agent in partitions, merge the outputs, optionally reduce them.

    Args:
        spec: The map's own settings: its corpus (``input``), ``agent``, ``partition``
            spec, ``output_dir``, ``agents_file``, ``prompt``, ``reduce`` and the rest of
            :class:`~prefect_fanout.mapping.spec.MapSpec`.
        options: The run's options: model, endpoint, max_workers (default 8), cache
            (``refresh`` asks again), max_tokens, temperature, timeout_seconds, the
            limits, task_runner and its addresses (see
            :class:`~prefect_fanout.options.RunOptions`).

    Returns:
        The final state carrying the run's summary (also written to ``summary.json``):
        Completed, Completed named ``Partial`` when items failed, or ``Cancelled`` named
        ``BudgetReached`` when the run's budget stopped it; calling the flow returns the summary.
    """
    job = _prepared_job.get()
    if job is None or job.settings != spec:
        job = prepare_map(spec, options)
    if job.options.dry_run:
        return keep_outcome(dry_run_map(job))
    with on_task_runner(job.options, job.max_workers, chunked=sends_chunks(job.options)):
        summary = run_map(job)
    if summary.budget_reached and summary.budget is not None:
        return final_state_of(
            "budget", summary.budget.message or "budget reached", keep_outcome(summary)
        )
    return map_final_state(keep_outcome(summary))  # "Partial" when items failed


def run_map_flow(job: MapJob) -> MapSummary:
    """Run a prepared job as a ``fanout-map`` flow run (or in the current flow run, if any).

    The flow run's parameters are the job's spec and its merged options; its task runner
    is the one they choose.

    Args:
        job: From :func:`~prefect_fanout.mapping.job.prepare_map`.

    Returns:
        The run's summary.

    Raises:
        ConfigurationError: The task runner choice is wrong (before the flow run starts).
        Exception: Whatever ended the flow run early (items failing never do).
    """
    if FlowRunContext.get() is not None:
        return run_map(job)
    runner = chosen_runner(job.options, job.max_workers, chunked=sends_chunks(job.options))
    token = _prepared_job.set(job)
    try:
        flow_ = map_flow.with_options(task_runner=runner)
        return reported_best_effort(
            lambda: carried_result(
                flow_(spec=job.settings, options=job.options, return_state=True),
                MapSummary,
                "the map flow",
            )
        )
    finally:
        _prepared_job.reset(token)


def map_corpus(
    items_or_path: Any,
    *,
    agent: str | AgentProfile,
    partition: Any,
    output_dir: str | Path,
    options: RunOptions | None = None,
    **settings: Any,
) -> MapSummary | DryRun:
    """Map a corpus over an agent in partitions, merge the outputs, optionally reduce them.

    Inside a flow it runs in that flow run (on its task runner); outside one it
    runs the ``fanout-map`` flow on the task runner the options choose
    (``thread`` by default: ``ThreadPoolTaskRunner(max_workers)``).

    Args:
        items_or_path: A JSONL file or a directory, or a list of ``Item``
            objects or of dicts with an ``id``.
        agent: The agent run on every item (a name or a profile).
        partition: A spec (``count:8``, ``time:month``, ...), or a function item -> key.
        output_dir: Where the outputs go.
        options: The run's options (see :class:`~prefect_fanout.options.RunOptions`).
        **settings: The map's own settings, as for
            :func:`~prefect_fanout.mapping.job.prepare_map`: ``agents``, ``prompt``,
            ``reduce``, ``reduce_budget``, ``active_partitions``, ``partition_retries``,
            ``partition_retry_delay``, ``encoding``, ``errors``, ``force``,
            ``follow_symlinks``.

    Returns:
        The run's :class:`MapSummary`; ``summary.ok`` is false when items failed, were
        dead-lettered or skipped for the budget. With ``options.dry_run``, the map's
        :class:`DryRun` instead (nothing is asked or written).

    Raises:
        CorpusError: The corpus cannot be read.
        PartitionSpecError: The partition spec is malformed.
        ConfigurationError: An agent, the endpoint, an option or the prompt
            template is wrong, or the task runner choice is (raised before any call
            is made).
    """
    merged = RunOptions.of(options)
    if FlowRunContext.get() is None:
        check_task_runner(
            merged.runner(), dask_address=merged.dask_address, ray_address=merged.ray_address
        )
    # profiles given in Python join the agents, and the spec names them
    profiles = dict(settings.pop("agents", None) or {})
    if isinstance(agent, AgentProfile):
        profiles[agent.name], agent = agent, agent.name
    if isinstance(reduce := settings.get("reduce"), AgentProfile):
        profiles[reduce.name], settings["reduce"] = reduce, reduce.name
    key = partition if callable(partition) and not isinstance(partition, str) else None
    is_path = isinstance(items_or_path, str | Path)
    given = None if is_path else list(items_or_path)
    try:
        spec = MapSpec(
            input=str(items_or_path) if is_path else f"<{len(given or ())} items>",
            agent=str(agent),
            partition=getattr(key, "__name__", "key") if key is not None else str(partition),
            output_dir=str(output_dir),
            **settings,
        )
    except ValidationError as exc:  # an unknown setting, or one of the wrong type
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ConfigurationError(f"map setting {where!r}: {error['msg']}") from None
    job = prepare_map(spec, merged, items=given, agents=profiles, key=key)
    if job.options.dry_run:
        return dry_run_map(job)
    return run_map_flow(job)
