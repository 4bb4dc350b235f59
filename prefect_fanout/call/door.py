"""The one door into an agent call: every way to make a call comes through :func:`open_call`.

A call's steps, each done once, in this order:

1. **answered**: the request with its upstream results rendered in (futures are waited for);
2. **stored**: one read of result storage (cache mode ``on``); a hit is returned marked
   ``cached``: no task run, no budget, no limit;
3. **reserve**: with a budget, the call's estimate is reserved (waiting for calls in flight
   while it does not fit; :class:`~prefect_fanout.errors.BudgetExhausted` once it is reached);
4. **start**: the agent-call task is submitted to the flow's task runner (a future), or run
   in place in this thread (its result);
5. **settle**: when the call ends, the reservation is settled with what its asks spent.

Prefect's own transaction still looks the key up under the call's lock as the task run starts
(that is what makes identical calls in flight at once ask only once); this door does not read
it again. Its users: :class:`~prefect_fanout.call.path.CallPath` (every shape),
:func:`~prefect_fanout.call.single.call_agent` (in place), :func:`submit_agent_call` (always a
future) and the chunk workers of :mod:`prefect_fanout.engine.chunks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from prefect.futures import PrefectFuture

from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.budget.meter import BudgetMeter, Reservation
from prefect_fanout.call.budgeted import spent_by, spent_by_error, spent_by_result
from prefect_fanout.call.cache import stored_answer
from prefect_fanout.call.task import (
    answered_request,
    call_parameters,
    configured_call_task,
    result_from_state,
)
from prefect_fanout.call.window import Submitted
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.llm.transport import Transport
from prefect_fanout.options import CacheMode, CacheOptions, RunOptions
from prefect_fanout.ui.quiet_logs import call_logging

__all__ = ["open_call", "submit_agent_call"]


def open_call(
    request: CallRequest,
    *,
    transport: Transport | None,
    cache: CacheOptions,
    budget: BudgetMeter | None = None,
    context: Mapping[str, Any] | None = None,
    answered: CallRequest | None = None,
    run_name: str | None = None,
    wait_for: Iterable[PrefectFuture[Any]] | None = None,
    reuse: bool = True,
    in_place: bool = False,
) -> Submitted:
    """Make one call through its steps (see the module): stored, reserve, start, settle.

    Args:
        request: The call's resolved request, before upstream context.
        transport: What sends it (None: the one its model needs from ``OPENAI_*``).
        cache: The call's cache options.
        budget: The run's budget meter; None when the run has none.
        context: Upstream results or futures by id (futures draw the graph's edges).
        answered: The request with its context applied, when the caller has it.
        run_name: The task run's name, instead of ``agent:item``.
        wait_for: Futures the task run waits for without taking their results.
        reuse: Return a stored answer without a task run (False: always a task run, whose
            own cache lookup still answers a hit, marked ``Cached``).
        in_place: Run the task run in this thread and return its result (a call made
            outside a flow, where nothing can be submitted); the budget's first-call check
            applies to it.

    Returns:
        The stored result, the finished result (``in_place``), or the submitted call's future.

    Raises:
        BudgetExhausted: The budget is reached; the call is not made.
        ConfigurationError: ``in_place`` with a budget below this call's estimate.
        Exception: ``in_place``: the call's own error when it failed.
    """
    needs_answered = budget is not None or (reuse and cache.mode is CacheMode.ON)
    if needs_answered and answered is None:
        answered = answered_request(request, context)
    if reuse and answered is not None:
        stored = stored_answer(answered, cache)
        if stored is not None:
            return stored
    reservation: Reservation | None = None
    if budget is not None:
        assert answered is not None
        if in_place:
            budget.check_first(answered)
        reservation = budget.reserve(answered)
    task_ = configured_call_task(request, cache)
    if run_name is not None:
        task_ = task_.with_options(task_run_name=run_name)
    parameters = call_parameters(request, transport)
    try:
        with call_logging(request.log_call):  # Prefect's "Finished" line: see ui/quiet_logs
            if in_place:
                state = task_(**parameters, context=context, return_state=True)
            else:
                future = task_.submit(**parameters, context=context, wait_for=wait_for)
    except BaseException:
        if budget is not None and reservation is not None:
            budget.cancel(reservation)
        raise
    if not in_place:
        if budget is not None and reservation is not None:
            future.add_done_callback(partial(_settle_future, budget, reservation))
        return future
    try:
        result = result_from_state(state)
    except Exception as exc:
        if budget is not None and reservation is not None:
            budget.settle(reservation, *spent_by_error(exc))
        raise
    if budget is not None and reservation is not None:
        budget.settle(reservation, *spent_by_result(result))
    return result


def _settle_future(
    meter: BudgetMeter, reservation: Reservation, future: PrefectFuture[Any]
) -> None:
    meter.settle(reservation, *spent_by(future))


def submit_agent_call(
    request: CallRequest,
    *,
    context: Mapping[str, Any] | None = None,
    transport: Transport | None = None,
    options: RunOptions | None = None,
    wait_for: Iterable[PrefectFuture[Any]] | None = None,
    run_name: str | None = None,
) -> PrefectFuture[AgentResult]:
    """Submit a call to the flow's task runner and return its future.

    Always a task run (a stored answer comes back through its own cache lookup, its
    state ``Cached``). With a budget in ``options`` the call's estimate is reserved before
    it is submitted and settled when it ends, as a shape's calls are.

    Args:
        request: The resolved request (see :func:`~prefect_fanout.call.task.build_request`).
        context: Upstream results (or futures) by id, appended to the prompt.
        transport: What sends the request; by default the one the request's
            model needs, at the options' endpoint (None: ``OPENAI_*``).
        options: The run's options (its ``endpoint``, cache and budget settings are used here).
        wait_for: Futures to wait for without passing their results.
        run_name: The task run's name, instead of ``agent:item``.

    Returns:
        The future of the call's :class:`AgentResult`.

    Raises:
        BudgetExhausted: The options' budget is reached; the call is not submitted.
    """
    options = options or RunOptions()
    if transport is None:
        transport = Resolver(options).transport(request.model)
    budget = BudgetMeter.of(options.budget_tokens, options.budget_usd, options.budget_name)
    submitted = open_call(
        request,
        transport=transport,
        cache=options.cache_options(),
        budget=budget,
        context=context,
        run_name=run_name,
        wait_for=wait_for,
        reuse=False,
    )
    assert isinstance(submitted, PrefectFuture)
    return submitted
