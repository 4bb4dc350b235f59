"""One agent call without Prefect machinery: ask, validate, re-ask, account.

The question goes through the call's transport (:mod:`prefect_fanout.llm.transport`),
which owns the HTTP request and its retries. With an output schema the answer is
validated (Pydantic for classes, jsonschema for schemas from files) and an invalid
one is re-asked with the validation error, at most ``max_validation_retries``
times. The result carries usage, cost, latency and attempts; its latency leaves out
the seconds spent waiting for the endpoint's limits or a structured-output probe,
which are reported apart (``limit_wait_s``). A successful call's line ("answered in")
is logged at DEBUG, or at INFO when the request's ``log_call`` is set.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jsonschema
from pydantic import ValidationError

from prefect_fanout.errors import AgentCallError, OutputValidationError, TruncatedOutputError
from prefect_fanout.llm.notices import notice_answer
from prefect_fanout.llm.pricing import add_costs, cost_usd
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.llm.testmodel import is_offline
from prefect_fanout.llm.transport import Transport


def _validate_output(request: CallRequest, raw: str) -> Any:
    """Parse and validate a structured answer; raises ValueError subclasses on failure."""
    if request.output_type is not None:
        return request.output_type.model_validate_json(raw)
    data = json.loads(raw)
    jsonschema.validate(data, request.output_schema or {})
    return data


def _bigger_budget(request: CallRequest) -> int | None:
    """The next ``max_tokens`` for a cut answer: double, up to ``max_tokens_limit``; else None."""
    limit, current = request.max_tokens_limit, request.max_tokens
    if limit is None or current is None or current >= limit:
        return None
    return min(limit, current * 2)


def execute_request(request: CallRequest, transport: Transport, logger: Any) -> AgentResult:
    """Make the call (no Prefect machinery): ask through the transport, validate, re-ask, account.

    Every ask's tokens are counted, the failed ones included. A structured answer
    cut at ``max_tokens`` (``finish_reason == "length"``) is never re-asked
    unchanged: it is asked again with a doubled budget while the request's
    ``max_tokens_limit`` allows, else the call fails with "truncated at
    max_tokens=N".

    Raises:
        AgentCallError: The call failed for good (see :mod:`prefect_fanout.errors`).
            Its ``prompt_tokens``, ``completion_tokens`` and ``cost_usd`` are what
            the failed call spent.

    """
    started = time.perf_counter()
    messages = [dict(m) for m in request.messages]
    asks = 1 + (request.max_validation_retries if request.output_schema is not None else 0)
    prompt_tokens = completion_tokens = attempts = 0
    spent: float | None = 0.0
    raw, finish, output, problem = "", None, None, None
    model = request.model
    asked = request
    truncated = False
    waited = 0.0

    def fail(error: AgentCallError) -> AgentCallError:
        error.limit_wait_s = round(waited + getattr(error, "limit_wait_s", 0.0), 6)
        error.prompt_tokens += prompt_tokens
        error.completion_tokens += completion_tokens
        error.cost_usd = add_costs(spent, error.cost_usd)
        error.model = error.model or model
        error.finish_reason = error.finish_reason or finish
        return error

    for _ in range(asks):
        try:
            answer = transport.complete(asked, messages, logger)
        except AgentCallError as exc:
            raise fail(exc) from exc.__cause__
        raw, finish = answer.text, answer.finish_reason
        model = answer.model or request.model
        notice_answer(request.label, request.base_url, request.model, answer.model, raw, logger)
        prompt_tokens += answer.prompt_tokens
        completion_tokens += answer.completion_tokens
        attempts += answer.attempts
        waited += answer.limit_wait_s
        spent = add_costs(
            spent,
            cost_usd(
                model,
                answer.prompt_tokens,
                answer.completion_tokens,
                request.input_price_per_million,
                request.output_price_per_million,
                base_url=request.base_url,
            ),
        )
        if finish == "length":
            logger.warning(
                "[%s] the answer was cut at max_tokens=%s (finish_reason=length); raise "
                "max_tokens (--max-tokens, the profile's max_tokens) for a complete answer",
                request.label,
                asked.max_tokens,
            )
        if request.output_schema is None:
            output, problem = raw, None
            break
        try:
            output, problem = _validate_output(request, raw), None
            break
        except (ValidationError, ValueError, jsonschema.ValidationError) as exc:
            problem = _short_error(exc)
            if finish == "length":
                problem = f"truncated at max_tokens={asked.max_tokens} ({problem})"
                bigger = _bigger_budget(asked)
                if bigger is None:
                    truncated = True
                    break
                logger.warning(
                    "[%s] structured answer %s; asking again with max_tokens=%d "
                    "(max_tokens_limit=%s)",
                    request.label,
                    problem,
                    bigger,
                    request.max_tokens_limit,
                )
                asked = asked.model_copy(update={"max_tokens": bigger})
                continue
            logger.warning(
                "[%s] answer did not match the output schema: %s", request.label, problem
            )
            messages = [
                *messages,
                {"role": "assistant", "content": raw},
                {
                    "role": "user",
                    "content": "Your answer did not validate against the required JSON schema: "
                    f"{problem}\nAnswer again with only a JSON document that matches the schema.",
                },
            ]
    if problem is not None:
        if truncated or finish == "length":
            raise fail(
                TruncatedOutputError(
                    f"{request.label}: the structured answer was {problem}; a larger "
                    "max_tokens (or the profile's max_tokens_limit) lets it finish. "
                    f"Last answer: {raw[:300]!r}",
                    attempts,
                )
            )
        raise fail(
            OutputValidationError(
                f"{request.label}: the answer did not match the output schema after "
                f"{request.max_validation_retries} re-ask(s): {problem}. "
                f"Last answer: {raw[:500]!r}",
                attempts,
            )
        )
    # the time at the server and in the retries, without the waits for limits and probes
    latency = max(0.0, time.perf_counter() - started - waited)
    result = AgentResult(
        agent=request.agent,
        item_id=request.item_id,
        output=output,
        raw_text=raw,
        model=model,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=spent,
        latency_s=round(latency, 6),
        attempts=attempts,
        cache_key=request.cache_key(),
        limit_wait_s=round(waited, 6),
        endpoint=None if is_offline(request.base_url) else request.base_url,
        truncated=request.truncated,
    )
    cost = "unknown" if result.cost_usd is None else f"${result.cost_usd:.6f}"
    # A line per success only when asked (RunOptions.log_calls): at 10,000 calls it would
    # be most of the run's logs; failures, retries and warnings are logged above.
    logger.log(
        logging.INFO if request.log_call else logging.DEBUG,
        "[%s] %s answered in %.2fs, %d attempt(s), tokens %d/%d, finish %s, cost %s",
        request.label,
        model,
        latency,
        attempts,
        prompt_tokens,
        completion_tokens,
        finish,
        cost,
    )
    logger.debug("[%s] prompt=%r answer=%r", request.label, request.prompt, raw)
    return result


def _short_error(exc: Exception) -> str:
    if isinstance(exc, jsonschema.ValidationError):
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        return f"{where}: {exc.message}"
    text = str(exc).strip().replace("\n", "; ")
    return text[:400]
