"""The agent call as a Prefect task: profile + input -> messages -> endpoint -> AgentResult.

One call is one task run, named ``agent:item`` and tagged ``agent:NAME`` and
``model:MODEL``, so the Prefect UI is the trace. Retries live in
:mod:`prefect_fanout.call.retry` (Prefect task retries stay at zero), the cache in
:mod:`prefect_fanout.call.cache`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema
import openai
from prefect import task
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.states import State
from pydantic import BaseModel, ValidationError

from prefect_fanout.agents.endpoints import (
    TEST_BASE_URL,
    TEST_MODEL,
    LLMEndpoint,
    choose_model,
    resolve_endpoint,
)
from prefect_fanout.agents.profiles import AgentProfile, resolve_agent
from prefect_fanout.call import tagslots, testmodel
from prefect_fanout.call.cache import CacheMode, CacheOptions, task_cache_options
from prefect_fanout.call.pricing import cost_usd
from prefect_fanout.call.request import CallRequest
from prefect_fanout.call.result import AgentResult
from prefect_fanout.call.retry import RetryPolicy, call_with_retries
from prefect_fanout.errors import AgentCallError, NonRetryableAPIError, OutputValidationError

# Tags on every call without a slot request per call (see tagslots for why).
tagslots.install()

_clients: dict[tuple[str, str, str | None], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def openai_client(endpoint: LLMEndpoint) -> openai.OpenAI:
    """A shared ``openai.OpenAI`` client for an endpoint, with the client's own retries off."""
    key = (endpoint.base_url, endpoint.key_value(), endpoint.organization)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = openai.OpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.key_value(),
                organization=endpoint.organization,
                max_retries=0,
            )
            _clients[key] = client
        return client


def build_request(
    prompt: str | list[dict[str, str]],
    *,
    agent: str | AgentProfile = "default",
    agents: Mapping[str, AgentProfile] | None = None,
    endpoint: LLMEndpoint | None = None,
    model: str | None = None,
    system: str | None = None,
    variables: Mapping[str, Any] | None = None,
    item_id: str | None = None,
    tags: Iterable[str] = (),
    timeout_seconds: float | None = None,
) -> CallRequest:
    """Resolve a profile and an input into a fully specified request.

    Args:
        prompt: The user prompt, or a full list of chat messages.
        agent: An agent name or profile.
        agents: Extra profiles by name (e.g. a plan's ``agents``).
        endpoint: The endpoint the call will use (None for the ``test`` model).
        model: A model overriding everything else (see :func:`choose_model`).
        system: A system prompt overriding the profile's.
        variables: Values for the profile's prompt template.
        item_id: The item or task id, for the run name.
        tags: Extra tags for the task run.
        timeout_seconds: Per-request timeout overriding the profile's.

    Returns:
        The request.

    """
    profile = resolve_agent(agent, dict(agents or {}))
    chosen = choose_model(model, profile.model, endpoint)
    system_prompt = system if system is not None else profile.system_prompt
    if isinstance(prompt, str):
        messages = [
            {"role": "user", "content": profile.render_user_message(prompt, dict(variables or {}))}
        ]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
    else:
        messages = [dict(m) for m in prompt]
    timeout = timeout_seconds or (endpoint.request_timeout_seconds if endpoint else None)
    return CallRequest(
        agent=profile.name,
        item_id=item_id,
        base_url=TEST_BASE_URL if chosen == TEST_MODEL or endpoint is None else endpoint.base_url,
        model=chosen,
        messages=messages,
        temperature=profile.temperature,
        max_tokens=profile.max_tokens,
        output_schema=profile.output_schema,
        output_type=profile.output_type,
        prompt_parts={**profile.prompt_parts(), "system_prompt": system_prompt},
        max_validation_retries=profile.max_validation_retries,
        timeout_seconds=timeout or profile.timeout_seconds,
        max_attempts=profile.max_attempts,
        max_retry_after_seconds=profile.max_retry_after_seconds,
        backoff_initial_seconds=profile.backoff_initial_seconds,
        backoff_max_seconds=profile.backoff_max_seconds,
        input_price_per_million=profile.input_price_per_million,
        output_price_per_million=profile.output_price_per_million,
        tags=(f"agent:{profile.name}", f"model:{chosen}", *tags),
    )


def _validate_output(request: CallRequest, raw: str) -> Any:
    """Parse and validate a structured answer; raises ValueError subclasses on failure."""
    if request.output_type is not None:
        return request.output_type.model_validate_json(raw)
    data = json.loads(raw)
    jsonschema.validate(data, request.output_schema or {})
    return data


def _response_format(request: CallRequest) -> dict[str, Any] | None:
    if request.output_schema is None:
        return None
    title = str(request.output_schema.get("title") or request.agent or "output")
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in title)[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": request.output_schema}}


def _ask(
    request: CallRequest,
    endpoint: LLMEndpoint | None,
    messages: list[dict[str, str]],
    logger: Any,
) -> tuple[str, str | None, int, int, int]:
    """One question to the model, with retries: raw text, finish reason, tokens, attempts."""
    if request.model == TEST_MODEL:
        raw, prompt_tokens, completion_tokens = testmodel.answer(
            request.model_copy(update={"messages": messages})
        )
        return raw, "stop", prompt_tokens, completion_tokens, 1
    if endpoint is None:
        endpoint = resolve_endpoint(None)
    client = openai_client(endpoint)
    kwargs: dict[str, Any] = {"model": request.model, "messages": messages}
    if request.temperature is not None:
        kwargs["temperature"] = request.temperature
    if request.max_tokens is not None:
        kwargs["max_tokens"] = request.max_tokens
    response_format = _response_format(request)
    if response_format is not None:
        kwargs["response_format"] = response_format
    policy = RetryPolicy(
        max_attempts=request.max_attempts,
        max_retry_after_seconds=request.max_retry_after_seconds,
        backoff_initial_seconds=request.backoff_initial_seconds,
        backoff_max_seconds=request.backoff_max_seconds,
    )

    def send() -> Any:
        return client.chat.completions.create(timeout=request.timeout_seconds, **kwargs)

    completion, attempts = call_with_retries(
        send, policy, request.label, logger=logger, timeout_seconds=request.timeout_seconds
    )
    try:
        choice = completion.choices[0]
        raw = choice.message.content or ""
        finish = choice.finish_reason
    except (AttributeError, IndexError, TypeError) as exc:
        raise NonRetryableAPIError(
            f"{request.label}: the server's answer has no choices/message ({exc})", attempts
        ) from None
    usage = getattr(completion, "usage", None)
    prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
    completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
    return raw, finish, prompt_tokens, completion_tokens, attempts


def execute_request(request: CallRequest, endpoint: LLMEndpoint | None, logger: Any) -> AgentResult:
    """Make the call (no Prefect machinery): ask, validate, re-ask, account.

    Raises:
        AgentCallError: The call failed for good (see :mod:`prefect_fanout.errors`).

    """
    started = time.perf_counter()
    messages = [dict(m) for m in request.messages]
    asks = 1 + (request.max_validation_retries if request.output_schema is not None else 0)
    prompt_tokens = completion_tokens = attempts = 0
    raw, finish, output, problem = "", None, None, None
    for _ in range(asks):
        raw, finish, p_tokens, c_tokens, used = _ask(request, endpoint, messages, logger)
        prompt_tokens += p_tokens
        completion_tokens += c_tokens
        attempts += used
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


@task(name="agent-call", retries=0, persist_result=True)
def agent_call(
    request: CallRequest,
    context: Mapping[str, Any] | None = None,
    endpoint: LLMEndpoint | None = None,
) -> AgentResult:
    """Make one agent call as a Prefect task run.

    Args:
        request: The resolved request (see :func:`build_request`).
        context: Upstream results by id; appended to the prompt in the documented
            ``## Upstream results`` format and part of the cache key.
        endpoint: The endpoint with its key; never part of the cache key.

    Returns:
        The call's :class:`AgentResult`.

    """
    return execute_request(request.with_context(context), endpoint, get_run_logger())


def configured_call_task(request: CallRequest, cache: CacheOptions | None = None) -> Any:
    """The agent-call task with this request's run name, tags and cache settings."""
    return agent_call.with_options(
        task_run_name=request.label,
        tags=set(request.tags),
        **task_cache_options(cache or CacheOptions()),
    )


def result_from_state(state: State[Any]) -> AgentResult:
    """The call's result from its final state, marked ``cached`` for a cache hit.

    Raises:
        Exception: The call's own error when the state is not completed.

    """
    result = state.result(raise_on_failure=True)
    if not isinstance(result, AgentResult):
        raise AgentCallError(f"agent call returned {type(result).__name__}, not AgentResult")
    if state.name == "Cached":
        return result.as_cached()
    return result


def result_from_future(future: PrefectFuture[Any]) -> AgentResult:
    """Wait for a submitted call and return its result (see :func:`result_from_state`)."""
    future.wait()
    return result_from_state(future.state)


def submit_agent_call(
    request: CallRequest,
    *,
    context: Mapping[str, Any] | None = None,
    endpoint: LLMEndpoint | None = None,
    cache: CacheOptions | None = None,
    wait_for: Iterable[PrefectFuture[Any]] | None = None,
) -> PrefectFuture[AgentResult]:
    """Submit a call to the flow's task runner and return its future."""
    task_ = configured_call_task(request, cache)
    return task_.submit(request, context=context, endpoint=endpoint, wait_for=wait_for)


def prepare_call(
    prompt: str | list[dict[str, str]],
    *,
    agent: str | AgentProfile = "default",
    endpoint: str | LLMEndpoint | None = None,
    model: str | None = None,
    **kwargs: Any,
) -> tuple[CallRequest, LLMEndpoint | None]:
    """Resolve agent, model and endpoint (only when the model needs one) into a request."""
    profile = resolve_agent(agent, kwargs.get("agents"))
    resolved = None
    if choose_model(model, profile.model, None) != TEST_MODEL:
        resolved = resolve_endpoint(endpoint)
    request = build_request(prompt, agent=profile, endpoint=resolved, model=model, **kwargs)
    return request, resolved


def call_agent(
    prompt: str | list[dict[str, str]],
    *,
    agent: str | AgentProfile = "default",
    endpoint: str | LLMEndpoint | None = None,
    model: str | None = None,
    system: str | None = None,
    item_id: str | None = None,
    cache: CacheOptions | CacheMode | str = CacheMode.ON,
    **kwargs: Any,
) -> AgentResult:
    """Make one agent call as a Prefect task run and return its result.

    Call it inside a flow (or alone: Prefect then runs the task by itself).

    Args:
        prompt: The user prompt or a list of chat messages.
        agent: An agent name (built-in, saved block) or an :class:`AgentProfile`.
        endpoint: A saved ``LLMEndpoint`` block name or object; None uses the
            environment (``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``).
        model: A model overriding the profile's (``test`` runs offline).
        system: A system prompt overriding the profile's.
        item_id: The item or task id, shown in the run name.
        cache: ``on``, ``refresh``, ``off`` or full :class:`CacheOptions`.
        **kwargs: More :func:`build_request` arguments (variables, tags, agents, ...).

    Returns:
        The :class:`AgentResult`; ``cached`` is true when it came from the cache.

    Raises:
        ConfigurationError: No endpoint is configured, or the agent is unknown.
        AgentCallError: The call failed for good.

    """
    options = cache if isinstance(cache, CacheOptions) else CacheOptions(mode=CacheMode(cache))
    request, resolved = prepare_call(
        prompt,
        agent=agent,
        endpoint=endpoint,
        model=model,
        system=system,
        item_id=item_id,
        **kwargs,
    )
    state = configured_call_task(request, options)(request, endpoint=resolved, return_state=True)
    return result_from_state(state)


def output_model_of(result: AgentResult, cls: type[BaseModel]) -> BaseModel:
    """The structured output of a result as an instance of ``cls`` (dicts are validated)."""
    return result.output if isinstance(result.output, cls) else cls.model_validate(result.output)
