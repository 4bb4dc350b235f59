"""What a call spent against a budget, and the check of a run's first call.

The door (:func:`~prefect_fanout.call.door.open_call`) reserves a call's estimate on a cache
miss and settles the reservation with what its asks spent (failed asks too) when it ends;
this module says what they spent (:mod:`prefect_fanout.budget.meter` keeps the books).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect.futures import PrefectFuture

from prefect_fanout.budget.meter import BudgetMeter
from prefect_fanout.call.cache import stored_answer
from prefect_fanout.call.task import result_from_future
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.options import CacheOptions

__all__ = [
    "check_first_call",
    "spent_by",
    "spent_by_error",
    "spent_by_result",
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
