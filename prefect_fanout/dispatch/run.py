"""Dispatch a plan inside the current flow run: every task an agent-call task run.

The ``fanout-dispatch`` flow (:mod:`prefect_fanout.flows`) and your own flows
call :func:`run_plan`. It runs an event loop (:mod:`prefect_fanout.dispatch.loop`):
it submits every task whose dependencies have completed (in plan order, at
most ``max_workers`` in flight), waits for the next call to finish, and decides
what follows: the next ready tasks, a fallback agent, or skipping what can no
longer run. Upstream results reach a task as the upstream *futures* in the
call's ``context``, so Prefect resolves them and the UI's run graph shows the
edges; the call renders them into the prompt (see :func:`task_prompt`).

Failure policies:

- ``partial`` (default): the transitive dependants of a failed task are
  ``skipped`` with a reason naming it; independent branches go on.
- ``all_or_nothing``: the first failure stops everything that has not started
  (``skipped``); calls already running finish; the dispatch is ``failed``.

A call that fails after its retries is tried again with each agent of its
profile's ``fallbacks``, in order; the outcome records the agent that answered.
"""

from __future__ import annotations

from typing import Any

from prefect.logging import get_run_logger
from prefect.states import State

from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.call.longinputs import LongInput
from prefect_fanout.call.path import CallPath
from prefect_fanout.call.tags import LIMITED_TAGS
from prefect_fanout.dispatch.budget import check_plan_budget
from prefect_fanout.dispatch.loop import Dispatcher
from prefect_fanout.dispatch.prompts import task_prompt, task_request
from prefect_fanout.dispatch.result import DispatchResult
from prefect_fanout.engine.run import carried_result
from prefect_fanout.engine.run import final_state as engine_final_state
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.options import RunOptions, merge_options
from prefect_fanout.plan.agents import plan_profiles
from prefect_fanout.plan.model import Plan

__all__ = [
    "check_plan",
    "final_state",
    "plan_options",
    "result_of",
    "run_plan",
    "task_prompt",
]


def plan_options(plan: Plan) -> dict[str, Any]:
    """The plan's ``config`` as a layer of run options (see :mod:`prefect_fanout.options`).

    Its defaults (``max_workers`` 4, ``timeout_seconds`` 300, ``failure_policy``
    ``partial``) are a dispatch's built-in defaults.
    """
    config = plan.config.model_dump(exclude_none=True)
    return {name: value for name, value in config.items() if name in RunOptions.model_fields}


def check_plan(plan: Plan, options: RunOptions | None = None) -> Resolver:
    """Merge a plan's run options; resolve every agent, fallback and (if needed) the endpoint.

    Args:
        plan: A validated plan.
        options: The run's options (flags and options passed in Python, merged by the
            caller); they win over the plan's ``config``.

    Returns:
        The run's resolver, with everything resolved; its ``options`` are the run's
        merged options (reuse it for the run: nothing is resolved twice).

    Raises:
        ConfigurationError: An option is invalid, an agent cannot be resolved, or an
            endpoint is needed and none is configured.

    """
    merged = merge_options(options, plan_options(plan))
    resolver = Resolver(merged, agents=plan_profiles(plan))
    names: dict[str, None] = {}
    for task in plan.tasks:
        names.update(dict.fromkeys(resolver.fallback_chain(task.agent)))
        if task.judge:
            names[task.judge] = None
    if plan.config.synthesize:
        names[plan.config.synthesize] = None
    resolver.check(names)
    check_prompt_lengths(plan, resolver)
    if merged.budgeted():
        check_plan_budget(plan, resolver)
    return resolver


def check_prompt_lengths(plan: Plan, resolver: Resolver) -> None:
    """Refuse a task whose own prompt is over its agent's context (``long_inputs: fail``).

    Only where the context is known, and only the task's own prompt: upstream results are
    counted when the task runs, and ``truncate`` or ``chunk`` deal with it then.

    Raises:
        ConfigurationError: The first task whose prompt does not fit, with its tokens and the
            context (exit 2).
    """
    for task in plan.tasks:
        request = task_request(resolver, task, task.agent)
        if request.context_tokens is None or request.long_inputs != "fail":
            continue
        long_input = LongInput(request, resolver.counter(request.model))
        if not long_input.fits:
            raise ConfigurationError(f"plan task {task.task_id!r}: {long_input.error()}")


GRAPH_NODES_WARNING = 9000
"""Plan tasks over which a run warns that its graph may not draw (a server's limit: 10,000)."""


def run_plan(
    plan: Plan,
    *,
    options: RunOptions | None = None,
    resolver: Resolver | None = None,
) -> DispatchResult:
    """Run a plan's tasks inside the current flow run and return the result.

    The ``fanout-dispatch`` flow is a thin flow around this; call it from your
    own flow to dispatch a plan as part of it. The plan's ``config`` applies
    under ``options`` (max_workers, failure_policy, trace_dir, timeout_seconds,
    endpoint, model, max_tokens, temperature and the limits).

    Args:
        plan: A validated plan.
        options: The run's options; they win over the plan's ``config``.
        resolver: The run's resolver from :func:`check_plan` (then ``options`` is
            ignored: the resolver holds the merged options); made here when None.

    Returns:
        The dispatch result.

    Raises:
        ConfigurationError: An option is invalid, an agent unknown or no endpoint
            configured (before any call).

    """
    if resolver is None:
        resolver = check_plan(plan, options)
    LIMITED_TAGS.refresh()  # a limit created before this run applies to it
    if len(plan.tasks) > GRAPH_NODES_WARNING:
        get_run_logger().warning(
            "this plan's %d tasks are task runs of one flow run (its dependency edges need "
            "that): a default Prefect server draws a graph of at most 10,000 nodes "
            "(PREFECT_SERVER_FLOW_RUN_GRAPH_MAX_NODES); split the plan or raise the limit",
            len(plan.tasks),
        )
    return Dispatcher(plan, path=CallPath(resolver)).run()


def final_state(result: DispatchResult) -> State[Any]:
    """The flow run's final state for a result: ``Completed``, ``Partial`` or ``Failed``.

    The result is the state's data, so ``state.result(raise_on_failure=False)``
    returns it in every case. ``Partial`` is a completed state with its own name.
    """
    summary = result.summary
    if result.budget_reached and result.budget is not None:
        return engine_final_state("budget", result.budget.message or "budget reached", result)
    message = (
        f"{summary.completed} of {summary.total} task(s) completed, {summary.failed} failed, "
        f"{summary.skipped} skipped, {summary.cached} from cache"
    )
    return engine_final_state(result.status, message, result)


def result_of(state: State[Any]) -> DispatchResult:
    """The :class:`DispatchResult` carried by a ``fanout-dispatch`` flow run's state.

    Args:
        state: The final state (``dispatch_flow(..., return_state=True)``).

    Returns:
        The dispatch result, whether the state is completed or failed.

    Raises:
        Exception: The flow run crashed or failed before producing a result
            (its own error is re-raised).

    """
    return carried_result(state, DispatchResult, "the dispatch flow")
