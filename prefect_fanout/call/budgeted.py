"""A call submitted within a budget: reserve its estimate on a miss, settle it when it ends.

The budgeted twin of :func:`~prefect_fanout.call.task.submit_or_reuse`, used by
:class:`~prefect_fanout.call.path.CallPath` when the run has a budget
(:mod:`prefect_fanout.budget.meter`). A cache hit is returned as always and costs nothing;
a miss reserves the call's estimate first (waiting for calls in flight while it does not
fit, raising :class:`~prefect_fanout.errors.BudgetExhausted` once the budget is reached),
and the task run's end settles the reservation with what its asks spent (failed asks too).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from prefect.futures import PrefectFuture

from prefect_fanout.budget.meter import BudgetMeter, Reservation
from prefect_fanout.call.cache import stored_answer
from prefect_fanout.call.task import answered_request, result_from_future, submit_or_reuse
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.llm.transport import Transport
from prefect_fanout.options import CacheOptions

__all__ = [
    "check_first_call",
    "spent_by",
    "spent_by_error",
    "spent_by_result",
    "submit_within",
]


def spent_by_error(exc: BaseException) -> tuple[int, float | None]:
    """Tokens and cost a failed call's answered asks spent (an ``AgentCallError`` says)."""
    tokens = int(getattr(exc, "prompt_tokens", 0) or 0)
    tokens += int(getattr(exc, "completion_tokens", 0) or 0)
    return tokens, getattr(exc, "cost_usd", None) if tokens else 0.0


def spent_by(future: PrefectFuture[Any]) -> tuple[int, float | None]:
    """Tokens and cost a finished call's asks spent in this run (the ledger's rule)."""
    try:
        result = result_from_future(future)
    except Exception as exc:  # a failed call: what its answered asks spent
        return spent_by_error(exc)
    return spent_by_result(result)


def spent_by_result(result: AgentResult) -> tuple[int, float | None]:
    """Tokens and cost an answered call spent in this run: nothing for a cache hit."""
    if result.cached:
        return 0, 0.0
    return result.prompt_tokens + result.completion_tokens, result.cost_usd


def _settle(meter: BudgetMeter, reservation: Reservation, future: PrefectFuture[Any]) -> None:
    tokens, usd = spent_by(future)
    meter.settle(reservation, tokens, usd)


def submit_within(
    meter: BudgetMeter,
    request: CallRequest,
    *,
    context: Mapping[str, Any] | None = None,
    transport: Transport | None = None,
    cache: CacheOptions,
    answered: CallRequest | None = None,
    run_name: str | None = None,
) -> PrefectFuture[AgentResult] | AgentResult:
    """The call's stored answer, or the call submitted once its estimate fits the budget.

    Raises:
        BudgetExhausted: The budget is reached; the call is not made.
    """
    answered = answered or answered_request(request, context)
    stored = stored_answer(answered, cache)  # None unless the cache is on and has it
    if stored is not None:
        return stored
    reservation = meter.reserve(answered)
    try:  # looks up once more: an identical call may have stored its answer meanwhile
        submitted = submit_or_reuse(
            request,
            context=context,
            transport=transport,
            cache=cache,
            answered=answered,
            run_name=run_name,
        )
    except BaseException:
        meter.cancel(reservation)
        raise
    if isinstance(submitted, AgentResult):  # stored meanwhile: free
        meter.settle(reservation, 0, 0.0)
        return submitted
    submitted.add_done_callback(partial(_settle, meter, reservation))
    return submitted


def check_first_call(
    meter: BudgetMeter, requests: Iterable[CallRequest], cache: CacheOptions
) -> None:
    """Refuse a budget below what the run's first call to ask needs (before any call).

    The first request the cache does not answer is the first call; when the cache answers
    them all, nothing is asked and any budget will do.

    Raises:
        ConfigurationError: The budget is below that call's estimate, or a dollar budget
            meets a model without a price.
    """
    for request in requests:
        if stored_answer(request, cache) is None:
            meter.check_first(request)
            return
