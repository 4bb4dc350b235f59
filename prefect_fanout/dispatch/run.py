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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefect.states import Completed, Failed, State
from pydantic import ValidationError

from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.call.cache import CacheMode, CacheOptions
from prefect_fanout.call.tags import LIMITED_TAGS
from prefect_fanout.dispatch.loop import Dispatcher, task_prompt
from prefect_fanout.dispatch.result import DispatchResult
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.plan.agents import plan_profiles
from prefect_fanout.plan.model import Plan, PlanConfig

__all__ = [
    "check_plan",
    "final_state",
    "result_of",
    "run_plan",
    "task_prompt",
    "with_overrides",
]


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


def check_plan(
    plan: Plan,
    model: str | None = None,
    endpoint: str | LLMEndpoint | None = None,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    limits: Mapping[str, int] | None = None,
) -> Resolver:
    """Resolve every agent, fallback and (when a model needs one) the endpoint of a plan.

    Args:
        plan: A validated plan.
        model: The model override of the run, if any.
        endpoint: An endpoint object or block name overriding ``config.endpoint``.
        max_tokens: A completion budget overriding every agent's.
        temperature: A sampling temperature overriding every agent's.
        limits: Endpoint limits overriding the plan's ``config`` ones, which override
            the endpoint's (see :mod:`prefect_fanout.limits`).

    Returns:
        The run's resolver, with everything resolved (reuse it for the run).

    Raises:
        ConfigurationError: An agent cannot be resolved, or an endpoint is
            needed and none is configured.

    """
    resolver = Resolver(
        agents=plan_profiles(plan),
        endpoint=endpoint if endpoint is not None else plan.config.endpoint,
        model=model,
        max_tokens=max_tokens,
        temperature=temperature,
        limits={**plan.config.limits(), **(limits or {})},
    )
    names: dict[str, None] = {}
    for task in plan.tasks:
        names.update(dict.fromkeys(resolver.fallback_chain(task.agent)))
        if task.judge:
            names[task.judge] = None
    if plan.config.synthesize:
        names[plan.config.synthesize] = None
    resolver.check(names)
    return resolver


def run_plan(
    plan: Plan,
    *,
    model: str | None = None,
    endpoint: str | LLMEndpoint | None = None,
    cache: CacheOptions | CacheMode | str | None = None,
    resolver: Resolver | None = None,
) -> DispatchResult:
    """Run a plan's tasks inside the current flow run and return the result.

    The ``fanout-dispatch`` flow is a thin flow around this; call it from your
    own flow to dispatch a plan as part of it.

    Args:
        plan: A validated plan (settings already overridden as wanted).
        model: A model for every agent (``test`` runs offline).
        endpoint: An endpoint object or block name; ``None`` uses the plan's
            ``config.endpoint``, then ``OPENAI_*`` variables.
        cache: Cache options or mode (``on``, ``refresh``, ``off``).
        resolver: The run's resolver from :func:`check_plan` (made here when None).

    Returns:
        The dispatch result.

    """
    if resolver is None:
        resolver = Resolver(
            agents=plan_profiles(plan),
            endpoint=endpoint if endpoint is not None else plan.config.endpoint,
            model=model,
        )
    LIMITED_TAGS.refresh()  # a limit created before this run applies to it
    return Dispatcher(plan, resolver=resolver, cache=CacheOptions.of(cache)).run()


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
