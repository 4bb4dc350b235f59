"""One agent call without Prefect machinery: ask, validate, re-ask, account.

The question goes through the call's transport (:mod:`prefect_fanout.call.transport`),
which owns the HTTP request and its retries. With an output schema the answer is
validated (Pydantic for classes, jsonschema for schemas from files) and an invalid
one is re-asked with the validation error, at most ``max_validation_retries``
times. The result carries usage, cost, latency and attempts.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
from pydantic import ValidationError

from prefect_fanout.call.pricing import cost_usd
from prefect_fanout.call.request import CallRequest
from prefect_fanout.call.result import AgentResult
from prefect_fanout.call.transport import Transport
from prefect_fanout.errors import OutputValidationError


def _validate_output(request: CallRequest, raw: str) -> Any:
    """Parse and validate a structured answer; raises ValueError subclasses on failure."""
    if request.output_type is not None:
        return request.output_type.model_validate_json(raw)
    data = json.loads(raw)
    jsonschema.validate(data, request.output_schema or {})
    return data


def execute_request(request: CallRequest, transport: Transport, logger: Any) -> AgentResult:
    """Make the call (no Prefect machinery): ask through the transport, validate, re-ask, account.

    Raises:
        AgentCallError: The call failed for good (see :mod:`prefect_fanout.errors`).

    """
    started = time.perf_counter()
    messages = [dict(m) for m in request.messages]
    asks = 1 + (request.max_validation_retries if request.output_schema is not None else 0)
    prompt_tokens = completion_tokens = attempts = 0
    raw, finish, output, problem = "", None, None, None
    for _ in range(asks):
        answer = transport.complete(request, messages, logger)
        raw, finish = answer.text, answer.finish_reason
        prompt_tokens += answer.prompt_tokens
        completion_tokens += answer.completion_tokens
        attempts += answer.attempts
        if request.output_schema is None:
            output, problem = raw, None
            break
        try:
            output, problem = _validate_output(request, raw), None
            break
        except (ValidationError, ValueError, jsonschema.ValidationError) as exc:
            problem = _short_error(exc)
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
        raise OutputValidationError(
            f"{request.label}: the answer did not match the output schema after "
            f"{request.max_validation_retries} re-ask(s): {problem}. Last answer: {raw[:500]!r}",
            attempts,
        )
    latency = time.perf_counter() - started
    result = AgentResult(
        agent=request.agent,
        item_id=request.item_id,
        output=output,
        raw_text=raw,
        model=request.model,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost_usd=cost_usd(
            request.model,
            prompt_tokens,
            completion_tokens,
            request.input_price_per_million,
            request.output_price_per_million,
        ),
        latency_s=round(latency, 6),
        attempts=attempts,
        cache_key=request.cache_key(),
    )
    cost = "unknown" if result.cost_usd is None else f"${result.cost_usd:.6f}"
    logger.info(
        "[%s] %s answered in %.2fs, %d attempt(s), tokens %d/%d, cost %s",
        request.label,
        request.model,
        latency,
        attempts,
        prompt_tokens,
        completion_tokens,
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
