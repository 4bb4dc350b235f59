"""The ``fanout-dispatch`` flow and its Python entry points."""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any

from prefect import flow

from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.bounded import on_final_state, start_work_left
from prefect_fanout.budget.dryrun import DryRun
from prefect_fanout.dispatch.dryrun import dry_run_plan
from prefect_fanout.dispatch.loop import DEFAULT_PLAN_WORKERS
from prefect_fanout.dispatch.result import DispatchResult
from prefect_fanout.dispatch.run import check_plan, final_state, result_of, run_plan
from prefect_fanout.options import RunOptions
from prefect_fanout.plan.agents import load_dispatch_plan, validate_dispatch_data
from prefect_fanout.plan.model import Plan
from prefect_fanout.runners.active import chosen_runner, on_task_runner
from prefect_fanout.shipped.reporting import (
    INLINE_PARAMETER_BYTES,
    keep_outcome,
    reported_best_effort,
    stash,
)

__all__ = ["dispatch_flow", "dispatch_plan", "run_dispatch_flow"]


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
    **on_final_state(start_work_left),
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
        return keep_outcome(dry_run_plan(loaded, resolver))
    with on_task_runner(merged, merged.workers(DEFAULT_PLAN_WORKERS)):
        outcome = run_plan(loaded, resolver=resolver)
    return final_state(keep_outcome(outcome))


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
        return reported_best_effort(
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
