"""The flows prefect-fanout ships, and the Python entry points that run them.

Every shipped flow is a module-level ``@flow`` with real parameters, so each can
be deployed (``deployments/prefect.yaml`` names them by entrypoint) and rerun
from the UI:

- ``fanout-call`` (:func:`call_flow`): one agent call;
- ``fanout-dispatch`` (:func:`dispatch_flow`): a plan, given as a file path or
  a :class:`~prefect_fanout.Plan`;
- ``fanout-map`` (:func:`map_flow`): partition -> map -> merge -> reduce over a
  corpus path.

:func:`dispatch_plan` and :func:`map_corpus` are the Python entry points: they
check everything first (bad input raises a :class:`~prefect_fanout.FanoutError`
before any flow run starts), then run the flow, or run inside the caller's
flow run when there is one (``map_corpus``).
"""

from __future__ import annotations

import contextvars
import hashlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.context import FlowRunContext
from pydantic import ValidationError

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.bounded import start_work_left
from prefect_fanout.budget.dryrun import DryRun
from prefect_fanout.call.single import call_agent
from prefect_fanout.dispatch.dryrun import dry_run_plan
from prefect_fanout.dispatch.loop import DEFAULT_PLAN_WORKERS
from prefect_fanout.dispatch.result import DispatchResult
from prefect_fanout.dispatch.run import check_plan, final_state, result_of, run_plan
from prefect_fanout.engine.run import carried_result
from prefect_fanout.engine.run import final_state as final_state_of
from prefect_fanout.errors import ConfigurationError, describe
from prefect_fanout.files import write_text_atomic
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.mapping.deployed import run_partition_chunk
from prefect_fanout.mapping.dryrun import dry_run_map
from prefect_fanout.mapping.job import MapJob, prepare_map
from prefect_fanout.mapping.outcome import map_final_state
from prefect_fanout.mapping.run import run_map
from prefect_fanout.mapping.spec import MapSpec, spec_of
from prefect_fanout.mapping.summary import MapSummary
from prefect_fanout.options import RunOptions
from prefect_fanout.plan.agents import load_dispatch_plan, validate_dispatch_data
from prefect_fanout.plan.model import Plan
from prefect_fanout.runners import check_task_runner
from prefect_fanout.runners.active import chosen_runner, on_task_runner, sends_chunks

__all__ = [
    "call_flow",
    "partition_flow",
    "dispatch_flow",
    "dispatch_plan",
    "map_corpus",
    "map_flow",
    "run_dispatch_flow",
    "run_map_flow",
]


#: Flow parameters above this many bytes of JSON travel as a file reference: Prefect's
#: API refuses flow-run parameters over 512 KB.
INLINE_PARAMETER_BYTES = 256 * 1024


def stash(text: str, suffix: str) -> str:
    """Write a large parameter to a content-addressed file beside result storage; its path.

    Flow runs started on this machine (or by workers sharing that storage) read it
    back; the file is never deleted by a run, so a rerun from the UI still works.
    """
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    folder = Path(str(PREFECT_LOCAL_STORAGE_PATH.value())).expanduser() / ".fanout-inputs"
    path = folder / f"{digest}{suffix}"
    if not path.exists():
        write_text_atomic(path, text)
    return str(path)


#: After a run's work is done (outputs written), the longest its caller waits for Prefect
#: to record the end of the flow run; a Prefect API that went away is retried for minutes.
REPORT_WAIT_SECONDS = 10.0

# Where a dispatch or map flow body leaves its outcome, so the caller has it even when
# the flow engine then fails to report the run's end to a Prefect API that went away.
_outcome_box: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "fanout_outcome_box", default=None
)


def _keep(outcome: Any) -> Any:
    box = _outcome_box.get()
    if box is not None:
        box.append(outcome)
    return outcome


def _warn_unreported(reason: str) -> None:
    print(
        "fanout: warning: the run finished and its outputs are written, but it could not be "
        f"reported to the Prefect API ({reason}); the UI may show it unfinished",
        file=sys.stderr,
    )


def _reported_best_effort(run: Callable[[], Any]) -> Any:
    """Run a flow; once its work is done, wait a bounded time for Prefect to record it.

    The flow runs on a worker thread in the caller's context. When its body has
    returned its outcome, the caller waits at most :data:`REPORT_WAIT_SECONDS` more
    for the flow engine; if the engine fails or is still retrying a Prefect API that
    went away, the caller gets the outcome with a warning instead of an error.
    """
    box: list[Any] = []
    raised: list[BaseException] = []
    returned: list[Any] = []
    context = contextvars.copy_context()

    def work() -> None:
        _outcome_box.set(box)
        try:
            returned.append(run())
        except BaseException as exc:  # handed to the waiting caller
            raised.append(exc)

    worker = threading.Thread(target=context.run, args=(work,), name="fanout-flow", daemon=True)
    worker.start()
    done_at: float | None = None
    while worker.is_alive():
        worker.join(0.1)
        if box and done_at is None:
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() - done_at > REPORT_WAIT_SECONDS:
            _warn_unreported(f"no answer within {REPORT_WAIT_SECONDS:g} s")
            return box[0]
    if returned:
        return returned[0]
    if box:
        _warn_unreported(" ".join(describe(raised[0]).split())[:300])
        return box[0]
    raise raised[0]


@flow(name="fanout-call", log_prints=False)
def call_flow(
    prompt: str | None = None,
    agent: str = "default",
    system: str | None = None,
    prompt_path: str | None = None,
    options: RunOptions | None = None,
) -> AgentResult:
    """Make one agent call as a task run of this flow.

    Args:
        prompt: The user prompt (or give ``prompt_path``).
        agent: The agent's name (built-in or a saved AgentProfile block).
        system: A system prompt overriding the agent's.
        prompt_path: A file holding the prompt (large prompts travel this way).
        options: The run's options (model, endpoint, cache, max_tokens, temperature,
            timeout_seconds, limits; see :class:`~prefect_fanout.options.RunOptions`).

    Returns:
        The call's result.
    """
    if prompt_path is not None:
        prompt = Path(prompt_path).read_text(encoding="utf-8")
    if prompt is None:
        raise ConfigurationError("fanout-call needs a prompt or a prompt_path")
    return call_agent(prompt, agent=agent, system=system, options=options)


@flow(name="fanout-partition", log_prints=False, validate_parameters=True)
def partition_flow(
    chunk_file: str, options: RunOptions | None = None, threads: int = 8
) -> dict[str, Any]:
    """Run one chunk of a map's calls: what a map with ``partition_deployment`` starts.

    Deploy it on a work pool (``deployments/prefect.yaml``, entry ``partition``); a map
    run with ``--partition-deployment fanout-partition/partition`` starts one flow run
    per chunk and reads the answers from result storage (README "Task runners").

    Args:
        chunk_file: The chunk's calls, written by the map in its output directory.
        options: The map's options (endpoint as a block name, or ``OPENAI_*`` here).
        threads: Calls in flight at most.

    Returns:
        Counts of the chunk's calls: completed, failed, cached.
    """
    return run_partition_chunk(chunk_file, options, threads)


# The resolver a caller in this process checked a plan with, handed to the flow run it
# starts so the plan's agents and endpoint are not resolved twice. A run started from
# the UI or a deployment finds nothing here and checks its plan itself.
_checked_plan: contextvars.ContextVar[tuple[Plan, Resolver] | None] = contextvars.ContextVar(
    "fanout_checked_plan", default=None
)


def _checked_resolver(plan: Plan) -> Resolver | None:
    # A function, not inline in dispatch_flow: the flow object travels to Dask and Ray
    # workers in the run's context, and its body must not reference the ContextVar itself.
    handed = _checked_plan.get()
    return handed[1] if handed is not None and handed[0] is plan else None


@flow(
    name="fanout-dispatch",
    log_prints=False,
    validate_parameters=True,
    # the run's artifacts are created once its state is set (in the fanout command)
    on_completion=[start_work_left],
    on_failure=[start_work_left],
    on_cancellation=[start_work_left],
    on_crashed=[start_work_left],
)
def dispatch_flow(plan: Plan | str, options: RunOptions | None = None) -> Any:
    """Run a plan as this flow run: one agent-call task run per plan task.

    The flow ends ``Completed``, ``Partial`` (a completed state) or ``Failed``,
    following the dispatch status. Called directly it returns the
    :class:`DispatchResult`, except for a failed dispatch, where Prefect raises;
    call it with ``return_state=True`` and use ``result_of``, or use
    :func:`dispatch_plan`, to get the result in every case.

    Args:
        plan: A validated plan, or the path of a JSON/YAML plan file on the
            machine that runs the flow (validated here; an invalid plan fails
            the run before any call).
        options: The run's options; they win over the plan's ``config`` (see
            :class:`~prefect_fanout.options.RunOptions` for every field).

    Returns:
        The final state, carrying the :class:`DispatchResult`.
    """
    loaded = load_dispatch_plan(plan) if isinstance(plan, str) else plan
    resolver = _checked_resolver(loaded) or check_plan(loaded, options)
    merged = resolver.options
    if merged.dry_run:
        return _keep(dry_run_plan(loaded, resolver))
    with on_task_runner(merged, merged.workers(DEFAULT_PLAN_WORKERS)):
        outcome = run_plan(loaded, resolver=resolver)
    return final_state(_keep(outcome))


def run_dispatch_flow(plan: Plan, resolver: Resolver, options: RunOptions) -> DispatchResult:
    """Run a plan checked by :func:`~prefect_fanout.dispatch.run.check_plan` as a flow run.

    The flow gets the task runner the merged options choose (``thread``: a
    ``ThreadPoolTaskRunner(max_workers)``). Use :func:`dispatch_plan` unless the
    plan was checked already, as ``fanout dispatch`` does.

    Args:
        plan: The validated plan.
        resolver: Its resolver from ``check_plan`` (holding the merged options).
        options: The options as the caller gave them (the flow run's parameter).

    Returns:
        The dispatch result, whatever the flow run's final state.

    Raises:
        ConfigurationError: The task runner choice is wrong (before the flow run starts).
    """
    merged = resolver.options
    runner = chosen_runner(merged, merged.workers(DEFAULT_PLAN_WORKERS))
    text = plan.model_dump_json(exclude_none=True)
    reference: Plan | str = plan
    if len(text.encode("utf-8")) > INLINE_PARAMETER_BYTES:
        reference = stash(text, ".plan.json")  # too big for a flow-run parameter
    flow_ = dispatch_flow.with_options(task_runner=runner)
    token = _checked_plan.set((plan, resolver) if reference is plan else None)
    try:
        return _reported_best_effort(
            lambda: result_of(flow_(plan=reference, options=options, return_state=True))
        )
    finally:
        _checked_plan.reset(token)


def dispatch_plan(
    plan: Plan | str | Path, *, options: RunOptions | None = None
) -> DispatchResult | DryRun:
    """Validate a plan, then run it as a ``fanout-dispatch`` flow run.

    With ``options.dry_run`` nothing runs: the plan's :class:`DryRun` (calls, cache hits,
    calls to ask, tokens and cost per level) is returned instead.

    Args:
        plan: A :class:`Plan`, or the path of a plan file (``"-"`` for stdin).
        options: The run's options; they win over the plan's ``config`` (see
            :class:`~prefect_fanout.options.RunOptions`: model, endpoint, max_workers,
            failure_policy, cache, max_tokens, temperature, timeout_seconds, the
            limits, task_runner and its addresses, trace_dir).

    Returns:
        The result; its ``status`` says whether every task completed.

    Raises:
        PlanValidationError: The plan is invalid (nothing was run).
        ConfigurationError: An option is invalid, no endpoint is configured, or
            the task runner choice is wrong (checked before the flow run starts).
    """
    checked = validate_dispatch_data(plan) if isinstance(plan, Plan) else load_dispatch_plan(plan)
    resolver = check_plan(checked, options)
    if resolver.options.dry_run:
        return dry_run_plan(checked, resolver)
    return run_dispatch_flow(checked, resolver, options or RunOptions())


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
    on_completion=[start_work_left],
    on_failure=[start_work_left],
    on_cancellation=[start_work_left],
    on_crashed=[start_work_left],
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
        return _keep(dry_run_map(job))
    with on_task_runner(job.options, job.max_workers, chunked=sends_chunks(job.options)):
        summary = run_map(job)
    if summary.budget_reached and summary.budget is not None:
        return final_state_of("budget", summary.budget.message or "budget reached", _keep(summary))
    return map_final_state(_keep(summary))  # "Partial" when items failed


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
        return _reported_best_effort(
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
