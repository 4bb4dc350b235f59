"""A batch's lines taken in: validated like online answers, stored where online ones are.

Each output line's ``response.body`` is a chat completion. It goes through the same
:func:`~prefect_fanout.llm.execute.execute_request` as an online answer (schema,
``finish_reason``, truncation, token and cost accounting): the batch's answer is the call's
first ask, and a re-ask (an invalid structured answer, a cut one with room to grow) goes
online through the run's transport with the usual retry budget. The result is priced at
the batch price for the batch's answer (:func:`~prefect_fanout.llm.pricing.batch_cost_usd`)
and written to result storage under the call's cache key with
:func:`~prefect_fanout.call.cache.store_answer`: the same record, in the same store, that the
agent-call task writes, so there is one cache and an online rerun finds it.

Lines of the error file (a non-200 answer, ``batch_expired``, ``batch_cancelled``) and lines
the batch never answered are returned as failures: the map sends those calls online.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from prefect_fanout.call.cache import store_answer
from prefect_fanout.errors import AgentCallError
from prefect_fanout.llm.execute import execute_request
from prefect_fanout.llm.pricing import add_costs, batch_cost_usd, cost_usd
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.llm.transport import Completion, Logger, Transport
from prefect_fanout.options import CacheOptions

__all__ = ["BatchAnswerTransport", "Settled", "line_answer", "line_error", "settle"]

logger = logging.getLogger("prefect_fanout.batch")


def line_answer(line: dict[str, Any]) -> Completion | None:
    """The completion of an output line, or None when the line holds no 200 answer."""
    response = line.get("response") or {}
    body = response.get("body")
    if response.get("status_code") != 200 or not isinstance(body, dict):
        return None
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(
        text=str(text),
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        attempts=1,
        model=str(body["model"]) if body.get("model") else None,
    )


def line_error(line: dict[str, Any]) -> str:
    """Why a line holds no answer, in one line."""
    error = line.get("error")
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"
    response = line.get("response") or {}
    body = response.get("body") or {}
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        return f"HTTP {response.get('status_code')}: {detail.get('message')}"
    return f"HTTP {response.get('status_code')}: {json.dumps(body)[:200]}"


class BatchAnswerTransport:
    """Hands out the batch's answer as the first ask; later asks go online.

    Args:
        answer: The batch line's completion.
        online: The run's transport for re-asks.
    """

    def __init__(self, answer: Completion, online: Transport) -> None:
        self.answer = answer
        self.online = online
        self.base_url = online.base_url
        self._given = False

    def complete(
        self, request: CallRequest, messages: list[dict[str, str]], logger: Logger
    ) -> Completion:
        """The batch's answer the first time, else an online ask."""
        if not self._given:
            self._given = True
            return self.answer
        return self.online.complete(request, messages, logger)


@dataclass
class Settled:
    """One call's batch line, taken in.

    Attributes:
        result: The validated, stored answer (None when it failed).
        error: Why the call failed for good (validation, truncation), when it did.
        online_cost_usd: What the batch's answer would have cost online (None: unknown).
    """

    result: AgentResult | None
    error: AgentCallError | None
    online_cost_usd: float | None


def settle(
    request: CallRequest,
    answer: Completion,
    online: Transport,
    cache: CacheOptions,
) -> Settled:
    """Validate a batch answer like an online one, price it at the batch price, store it.

    Args:
        request: The call (its context applied); its cache key is the line's ``custom_id``.
        answer: The batch line's completion.
        online: The run's transport, for re-asks.
        cache: The run's cache settings (``off`` stores nothing).
    """
    model = answer.model or request.model
    prices = (request.input_price_per_million, request.output_price_per_million)
    tokens = (answer.prompt_tokens, answer.completion_tokens)
    online_cost = cost_usd(model, *tokens, *prices, base_url=request.base_url)
    discount = None
    if online_cost is not None:
        batch_cost = batch_cost_usd(
            model,
            *tokens,
            *prices,
            base_url=request.base_url,
            batch_prices=(
                request.batch_input_price_per_million,
                request.batch_output_price_per_million,
            ),
        )
        discount = None if batch_cost is None else batch_cost - online_cost
    try:
        result = execute_request(request, BatchAnswerTransport(answer, online), logger)
    except AgentCallError as exc:
        exc.cost_usd = add_costs(exc.cost_usd, discount)
        return Settled(None, exc, online_cost)
    result = result.model_copy(update={"cost_usd": add_costs(result.cost_usd, discount)})
    store_answer(request, result, cache)
    return Settled(result, None, online_cost)
