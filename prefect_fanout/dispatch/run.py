"""Dispatch a plan: every task an agent-call task run of one ``fanout-dispatch`` flow run.

The flow runs an event loop: it submits every task whose dependencies have
completed (in plan order, at most ``max_workers`` in flight), waits with
:func:`prefect.futures.as_completed` for the next call to finish, and decides
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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from prefect_fanout.agents.endpoints import TEST_MODEL, LLMEndpoint, choose_model, resolve_endpoint
from prefect_fanout.agents.profiles import resolve_agent
from prefect_fanout.call.cache import CacheMode, CacheOptions
from prefect_fanout.dispatch.loop import Dispatcher, task_prompt
from prefect_fanout.dispatch.result import DispatchResult
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.plan.agents import (
    fallback_chain,
    load_dispatch_plan,
    plan_profiles,
    validate_dispatch_data,
)
from prefect_fanout.plan.model import Plan, PlanConfig

__all__ = [
    "DISPATCH_FLOW_NAME",
    "check_endpoint",
    "dispatch_flow",
    "dispatch_plan",
    "final_state",
    "result_of",
    "run_dispatch_flow",
    "run_plan",
    "task_prompt",
    "with_overrides",
]

DISPATCH_FLOW_NAME = "fanout-dispatch"


def cache_options(cache: CacheOptions | CacheMode | str | None) -> CacheOptions:
    """Cache options from options, a mode or a mode name (``None`` is ``on``)."""
    if isinstance(cache, CacheOptions):
        return cache
    return CacheOptions(mode=CacheMode(cache or CacheMode.ON))


def with_overrides(
    plan: Plan,
    *,
    max_workers: int | None = None,
    failure_policy: str | None = None,
    trace_dir: str | Path | None = None,
    timeout_seconds: float | None = None,
) -> Plan:
    """The plan with run settings overridden (``None`` keeps the plan's value).

    Args:
        plan: A validated plan.
        max_workers: Most tasks in flight.
        failure_policy: ``partial`` or ``all_or_nothing``.
        trace_dir: Directory for trace files.
        timeout_seconds: Per-request timeout of every task's call.

    Returns:
        A copy of the plan with the new ``config`` (the plan itself when
        nothing is overridden).

    Raises:
        ConfigurationError: An override is invalid (e.g. ``max_workers=0``).

    """
    updates: dict[str, Any] = {
        "max_workers": max_workers,
        "failure_policy": failure_policy,
        "trace_dir": None if trace_dir is None else str(trace_dir),
        "timeout_seconds": timeout_seconds,
    }
    updates = {key: value for key, value in updates.items() if value is not None}
    if not updates:
        return plan
    try:
        config = PlanConfig.model_validate({**plan.config.model_dump(), **updates})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise ConfigurationError(f"invalid dispatch option: {problems}") from None
    return plan.model_copy(update={"config": config})


def check_endpoint(
    plan: Plan, model: str | None = None, endpoint: str | LLMEndpoint | None = None
) -> LLMEndpoint | None:
    """Resolve the endpoint the plan needs, failing fast when none is configured.

    Every task agent and fallback is resolved; when any of them uses a model
    other than the offline ``test`` model, the endpoint is resolved (``endpoint``,
    else the plan's ``config.endpoint``, else ``OPENAI_*`` variables).

    Args:
        plan: A validated plan.
        model: The model override of the run, if any.
        endpoint: An endpoint object or block name overriding ``config.endpoint``.

    Returns:
        The endpoint, or ``None`` when every call uses the ``test`` model.

    Raises:
        ConfigurationError: An agent cannot be resolved, or an endpoint is
            needed and none is configured.

    """
    profiles = plan_profiles(plan)
    names: dict[str, None] = {}
    for task in plan.tasks:
        for name in fallback_chain(task.agent, profiles):
            names.setdefault(name, None)
    for name in names:
        profile = resolve_agent(name, profiles)
        if choose_model(model, profile.model, None) != TEST_MODEL:
            return resolve_endpoint(endpoint if endpoint is not None else plan.config.endpoint)
    return None


def run_plan(
    plan: Plan,
    *,
    model: str | None = None,
    endpoint: str | LLMEndpoint | None = None,
    cache: CacheOptions | CacheMode | str | None = None,
) -> DispatchResult:
    """Run a plan's tasks inside the current flow run and return the result.

    :func:`dispatch_flow` is a thin flow around this; call it from your own
    flow to dispatch a plan as part of it.

    Args:
        plan: A validated plan (settings already overridden as wanted).
        model: A model for every agent (``test`` runs offline).
        endpoint: An endpoint object or block name; ``None`` uses the plan's
            ``config.endpoint``, then ``OPENAI_*`` variables.
        cache: Cache options or mode (``on``, ``refresh``, ``off``).

    Returns:
        The dispatch result.

    """
    chosen = endpoint if endpoint is not None else plan.config.endpoint
    return Dispatcher(plan, model=model, endpoint=chosen, cache=cache_options(cache)).run()


def final_state(result: DispatchResult) -> State[Any]:
    """The flow run's final state for a result: ``Completed``, ``Partial`` or ``Failed``.

    The result is the state's data, so ``state.result(raise_on_failure=False)``
    returns it in every case. ``Partial`` is a completed state with its own name.
    """
    summary = result.summary
    message = (
        f"{summary.completed} of {summary.total} task(s) completed, {summary.failed} failed, "
        f"{summary.skipped} skipped, {summary.cached} from cache"
    )
    if result.status == "completed":
        return Completed(message=message, data=result)
    if result.status == "partial":
        return Completed(name="Partial", message=message, data=result)
    return Failed(message=message, data=result)


@flow(name=DISPATCH_FLOW_NAME, log_prints=False, validate_parameters=True)
def dispatch_flow(
    plan: Plan,
    model: str | None = None,
    endpoint: str | LLMEndpoint | None = None,
    cache: CacheOptions | str = "on",
) -> Any:
    """Run a plan as this flow run: one agent-call task run per plan task.

    The flow ends ``Completed``, ``Partial`` (a completed state) or ``Failed``,
    following the dispatch status. Called directly it returns the
    :class:`DispatchResult`, except for a failed dispatch, where Prefect raises;
    call it with ``return_state=True`` and use :func:`result_of`, or use
    :func:`dispatch_plan`, to get the result in every case.

    Args:
        plan: The validated plan, with its run settings.
        model: A model for every agent (``test`` runs offline).
        endpoint: An ``LLMEndpoint`` block name or object; ``None`` uses the
            plan's ``config.endpoint``, then ``OPENAI_*`` variables.
        cache: ``on``, ``refresh``, ``off`` or full :class:`CacheOptions`.

    Returns:
        The final state, carrying the :class:`DispatchResult`.

    """
    return final_state(run_plan(plan, model=model, endpoint=endpoint, cache=cache))


def dispatch_plan(
    plan: Plan | str | Path,
    *,
    model: str | None = None,
    max_workers: int | None = None,
    failure_policy: str | None = None,
    trace_dir: str | Path | None = None,
    endpoint: str | LLMEndpoint | None = None,
    cache: CacheOptions | CacheMode | str = CacheMode.ON,
) -> DispatchResult:
    """Validate a plan, then run it as a ``fanout-dispatch`` flow run.

    Args:
        plan: A :class:`Plan`, or the path of a plan file (``"-"`` for stdin).
        model: A model for every agent (``test`` runs offline).
        max_workers: Most tasks in flight; overrides ``config.max_workers``.
        failure_policy: ``partial`` or ``all_or_nothing``; overrides the plan's.
        trace_dir: Where to write trace files; overrides ``config.trace_dir``.
        endpoint: An ``LLMEndpoint`` block name or object; overrides
            ``config.endpoint``. ``None`` falls back to ``OPENAI_*`` variables.
        cache: ``on`` (default), ``refresh``, ``off`` or :class:`CacheOptions`.

    Returns:
        The result; its ``status`` says whether every task completed.

    Raises:
        PlanValidationError: The plan is invalid (nothing was run).
        ConfigurationError: An option is invalid or no endpoint is configured
            (checked before the flow run starts).

    """
    if isinstance(plan, Plan):
        plan = validate_dispatch_data(plan)
    else:
        plan = load_dispatch_plan(plan)
    plan = with_overrides(
        plan, max_workers=max_workers, failure_policy=failure_policy, trace_dir=trace_dir
    )
    check_endpoint(plan, model, endpoint)
    return run_dispatch_flow(plan, model=model, endpoint=endpoint, cache=cache)


def run_dispatch_flow(
    plan: Plan,
    *,
    model: str | None = None,
    endpoint: str | LLMEndpoint | None = None,
    cache: CacheOptions | CacheMode | str = CacheMode.ON,
) -> DispatchResult:
    """Run an already validated plan as a ``fanout-dispatch`` flow run.

    The flow gets a ``ThreadPoolTaskRunner(max_workers=config.max_workers)``.
    Use :func:`dispatch_plan` unless the plan was validated (and the endpoint
    checked) already, as ``fanout dispatch`` does.

    Args:
        plan: A validated plan with its effective settings.
        model: A model for every agent (``test`` runs offline).
        endpoint: An ``LLMEndpoint`` block name or object, or ``None``.
        cache: ``on``, ``refresh``, ``off`` or :class:`CacheOptions`.

    Returns:
        The dispatch result, whatever the flow run's final state.

    """
    runner = ThreadPoolTaskRunner(max_workers=plan.config.max_workers)
    state = dispatch_flow.with_options(task_runner=runner)(
        plan=plan, model=model, endpoint=endpoint, cache=cache_options(cache), return_state=True
    )
    return result_of(state)


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
    data = state.result(raise_on_failure=False)
    if isinstance(data, DispatchResult):
        return data
    if isinstance(data, Mapping):
        return DispatchResult.model_validate(data)
    if isinstance(data, BaseException):
        raise data
    raise RuntimeError(f"the dispatch flow ended {state.name} without a result: {state.message}")
