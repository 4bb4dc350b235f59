"""The one resolver: agent, model, endpoint and transport of a call or a run, each found once.

A :class:`Resolver` is made per call (``call_agent``) or per run (a dispatch, a
map) and answers the questions every call asks, caching the answers:

- which profile is agent ``NAME``? A profile object as given; else the run's
  own profiles (a plan's ``agents``, ``--agents FILE``); else a built-in; else a
  saved ``AgentProfile`` block, loaded from the API once per resolver;
- which model? explicit (``--model``) > ``FANOUT_MODEL`` > the profile's >
  the endpoint's ``default_model`` > for a server that is not OpenAI's, the only
  model its ``GET /v1/models`` lists (several: a ``ConfigurationError`` naming
  ``--model`` and ``default_model``) > ``gpt-4o-mini``;
- which endpoint? resolved once, and only when a model needs one (see
  :func:`~prefect_fanout.llm.endpoints.resolve_endpoint` for the order);
- which transport answers a model? the offline ``test`` model's, else the
  OpenAI transport to the endpoint. This is the only place that knows the
  ``test`` model is special.

:meth:`Resolver.check` resolves everything a run will need before it starts,
so a missing endpoint or an unknown agent is a ``ConfigurationError`` (exit 2)
before any call is made.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prefect_fanout.agents.context import TokenCounter
from prefect_fanout.agents.profiles import AgentProfile, resolve_agent
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.limits.spec import check_completion_budget
from prefect_fanout.llm.endpoints import (
    DEFAULT_MODEL,
    LLMEndpoint,
    is_openai,
    resolve_endpoint,
)
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.serverinfo import server_context
from prefect_fanout.llm.transport import (
    TEST_MODEL,
    OpenAITransport,
    TestTransport,
    Transport,
    openai_client,
)
from prefect_fanout.options import RunOptions

Prompt = str | list[dict[str, str]]

_TEST_TRANSPORT = TestTransport()


class Resolver:
    """Resolves the agents, models, endpoint and transports of one call or run.

    One resolver is made per run, from the run's merged options; it applies the lower
    layers of the precedence (the agent's profile, then the endpoint block, then the
    built-in default) under them, per agent (see :mod:`prefect_fanout.options`).

    Args:
        options: The run's merged options (model, endpoint, max_tokens, temperature,
            timeout_seconds and the limits are the ones read here). Limits change the
            endpoint the calls use, never a request or its cache key.
        agents: The run's own profiles by name (a plan's ``agents``, an agents file).
    """

    def __init__(
        self,
        options: RunOptions | None = None,
        *,
        agents: Mapping[str, AgentProfile] | None = None,
    ) -> None:
        self.options = options or RunOptions()
        self.limits = self.options.limits()
        self.profiles: dict[str, AgentProfile] = dict(agents or {})
        self.endpoint_ref = self.options.endpoint
        self._served_model: str | None = None
        self._endpoint: LLMEndpoint | None = (
            self._limited(self.endpoint_ref) if isinstance(self.endpoint_ref, LLMEndpoint) else None
        )
        self._transport: OpenAITransport | None = None
        self._lock = threading.RLock()

    def agent(self, agent: str | AgentProfile) -> AgentProfile:
        """The profile of an agent name (or the profile itself), looked up once.

        Raises:
            ConfigurationError: No profile of that name exists anywhere.
        """
        if isinstance(agent, AgentProfile):
            return agent
        with self._lock:
            profile = self.profiles.get(agent)
            if profile is None:
                profile = resolve_agent(agent)
                self.profiles[agent] = profile
            return profile

    def fallback_chain(self, agent: str) -> list[str]:
        """The agents a task tries in order: its own, then its profile's ``fallbacks``.

        Only the agent's own ``fallbacks`` list counts (a fallback's fallbacks are not
        followed); duplicates are dropped.

        Raises:
            ConfigurationError: The agent cannot be resolved.
        """
        return list(dict.fromkeys([agent, *self.agent(agent).fallbacks]))

    def endpoint(self) -> LLMEndpoint:
        """The endpoint of the run, resolved on first use.

        Raises:
            ConfigurationError: None is configured, or the named block is missing.
        """
        with self._lock:
            if self._endpoint is None:
                self._endpoint = self._limited(resolve_endpoint(self.endpoint_ref))
            return self._endpoint

    def _limited(self, endpoint: LLMEndpoint) -> LLMEndpoint:
        """The endpoint with the run's limit overrides applied."""
        return endpoint.model_copy(update=self.limits) if self.limits else endpoint

    def model(self, agent: str | AgentProfile) -> str:
        """The model an agent's calls use (resolving the endpoint only if that decides it)."""
        profile = self.agent(agent)
        named = self.options.model or os.environ.get("FANOUT_MODEL") or profile.model
        if named == TEST_MODEL:
            return named
        if named:
            return named
        endpoint = self.endpoint()
        return endpoint.default_model or self.served_model(endpoint) or DEFAULT_MODEL

    def served_model(self, endpoint: LLMEndpoint) -> str | None:
        """The only model a non-OpenAI server lists at ``GET /v1/models`` (asked once).

        None for OpenAI's own base URL, or when the list cannot be read (the
        call then names ``gpt-4o-mini`` as before).

        Raises:
            ConfigurationError: The server lists several models.
        """
        if is_openai(endpoint.base_url):
            return None
        with self._lock:
            if self._served_model is None:
                self._served_model = _served_model(endpoint)
            return self._served_model or None

    def transport(self, model: str) -> Transport:
        """The transport that answers ``model``: offline for ``test``, else the endpoint's."""
        if model == TEST_MODEL:
            return _TEST_TRANSPORT
        with self._lock:
            if self._transport is None:
                self._transport = OpenAITransport(self.endpoint())
            return self._transport

    def context_tokens(self, agent: str | AgentProfile) -> int | None:
        """Tokens one request of the agent may fill (see :mod:`prefect_fanout.agents.context`).

        The profile's ``context_tokens``, else the endpoint's, else what the server says
        (asked once per process); None when unknown, and always for the ``test`` model.
        """
        profile = self.agent(agent)
        if profile.context_tokens is not None:
            return profile.context_tokens
        model = self.model(profile)
        transport = self.transport(model)
        if not isinstance(transport, OpenAITransport):
            return None
        endpoint = transport.endpoint
        if endpoint.context_tokens is not None:
            return endpoint.context_tokens
        return server_context(endpoint, model)

    def long_inputs(self, agent: str | AgentProfile) -> str:
        """What the agent's calls do with an input over the context.

        The run's ``long_inputs``, else the agent's, else ``fail``.
        """
        return self.options.long_inputs or self.agent(agent).long_inputs or "fail"

    def counter(self, model: str) -> TokenCounter:
        """What counts ``model``'s tokens: its server's tokenizer, tiktoken, or the estimate."""
        transport = self.transport(model)
        endpoint = transport.endpoint if isinstance(transport, OpenAITransport) else None
        return TokenCounter(model, endpoint)

    def check(self, agents: Iterable[str | AgentProfile]) -> None:
        """Resolve every agent and, when one of their models needs it, the endpoint.

        Raises:
            ConfigurationError: An agent is unknown, or an endpoint is needed and
                none is configured.
        """
        for agent in agents:
            transport = self.transport(self.model(agent))
            if isinstance(transport, OpenAITransport):  # a budget over --tpm: exit 2 now
                max_tokens = self.options.max_tokens or self.agent(agent).max_tokens
                check_completion_budget(transport.endpoint, max_tokens)

    def messages(
        self,
        prompt: Prompt,
        *,
        agent: str | AgentProfile = "default",
        system: str | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> list[dict[str, str]]:
        """The chat messages of one call (what :meth:`request` puts in its request).

        Args:
            prompt: The user prompt, or a full list of chat messages.
            agent: An agent name or profile.
            system: A system prompt overriding the profile's.
            variables: Values for the profile's prompt template.

        Returns:
            The messages, the system prompt merged into the first user message where the
            agent or endpoint asks for that.
        """
        profile = self.agent(agent)
        transport = self.transport(self.model(profile))
        system_prompt = system if system is not None else profile.system_prompt
        endpoint = self._endpoint if isinstance(transport, OpenAITransport) else None
        merge = profile.merge_system_prompt
        if merge is None:
            merge = bool(endpoint and endpoint.merge_system_prompt)
        if isinstance(prompt, str):
            content = profile.render_user_message(prompt, dict(variables or {}))
            messages = [{"role": "user", "content": content}]
            if system_prompt:
                messages.insert(0, {"role": "system", "content": system_prompt})
        else:
            messages = [dict(m) for m in prompt]
        if merge:
            messages = merge_system_messages(messages)
        return messages

    def request(
        self,
        prompt: Prompt,
        *,
        agent: str | AgentProfile = "default",
        system: str | None = None,
        variables: Mapping[str, Any] | None = None,
        item_id: str | None = None,
        tags: Iterable[str] = (),
        timeout_seconds: float | None = None,
    ) -> CallRequest:
        """Build the fully resolved request of one call.

        Args:
            prompt: The user prompt, or a full list of chat messages.
            agent: An agent name or profile.
            system: A system prompt overriding the profile's.
            variables: Values for the profile's prompt template.
            item_id: The item or task id, for the run name.
            tags: Extra tags for the task run.
            timeout_seconds: This call's own per-request timeout (beats the run's).

        Returns:
            The request.

        Raises:
            ConfigurationError: Unknown agent, no endpoint, or a template naming
                a variable that was not given.
        """
        profile = self.agent(agent)
        model = self.model(profile)
        transport = self.transport(model)
        system_prompt = system if system is not None else profile.system_prompt
        endpoint = self._endpoint if isinstance(transport, OpenAITransport) else None
        messages = self.messages(prompt, agent=profile, system=system, variables=variables)
        endpoint_timeout = endpoint.request_timeout_seconds if endpoint else None
        style = profile.structured_output or (endpoint.structured_output if endpoint else "auto")
        max_tokens = self.options.max_tokens or profile.max_tokens
        temperature = (
            self.options.temperature
            if self.options.temperature is not None
            else profile.temperature
        )
        return CallRequest(
            agent=profile.name,
            item_id=item_id,
            base_url=transport.base_url,
            model=model,
            messages=messages,
            temperature=temperature,
            max_tokens=max_tokens,
            max_tokens_limit=profile.max_tokens_limit,
            extra_body=dict(profile.extra_body),
            structured_output=style,
            output_schema=profile.output_schema,
            output_type=profile.output_type,
            prompt_parts={**profile.prompt_parts(), "system_prompt": system_prompt},
            max_validation_retries=profile.max_validation_retries,
            timeout_seconds=timeout_seconds
            or self.options.timeout_seconds
            or endpoint_timeout
            or _timeout(profile, endpoint),
            retry=profile.retry_options(),
            input_price_per_million=profile.input_price_per_million,
            output_price_per_million=profile.output_price_per_million,
            batch_input_price_per_million=profile.batch_input_price_per_million,
            batch_output_price_per_million=profile.batch_output_price_per_million,
            tags=(f"agent:{profile.name}", f"model:{model}", *tags),
            long_inputs=self.long_inputs(profile),
            context_tokens=self.context_tokens(profile),
            log_call=bool(self.options.log_calls),
        )


LOCAL_TIMEOUT_SECONDS = 600.0
"""The per-request timeout for servers that are not OpenAI's when none is set: a local server
answers a few requests at a time and queues the rest, and the wait in its queue counts."""


def _timeout(profile: AgentProfile, endpoint: LLMEndpoint | None) -> float:
    """The profile's timeout, or :data:`LOCAL_TIMEOUT_SECONDS` for a local server when unset."""
    explicit = "timeout_seconds" in profile.model_fields_set
    local = endpoint is not None and not is_openai(endpoint.base_url)
    return LOCAL_TIMEOUT_SECONDS if local and not explicit else profile.timeout_seconds


def merge_system_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The messages with system messages folded into the top of the first user message.

    For chat templates without a system role (Gemma's, for one): the system
    text comes first, then a blank line, then the user's text.
    """
    system = "\n\n".join(m.get("content", "") for m in messages if m.get("role") == "system")
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    if not system:
        return rest
    for message in rest:
        if message.get("role") == "user":
            message["content"] = f"{system}\n\n{message.get('content', '')}"
            return rest
    return [{"role": "user", "content": system}, *rest]


_served: dict[str, str] = {}
_served_lock = threading.Lock()


def forget_served_models() -> None:
    """Forget the models servers were found to serve (a new run, or a test)."""
    with _served_lock:
        _served.clear()


def _served_model(endpoint: LLMEndpoint) -> str:
    """The only model id a server lists, "" when the list cannot be read."""
    with _served_lock:
        if endpoint.base_url in _served:
            return _served[endpoint.base_url]
    try:
        page = openai_client(endpoint).models.list(timeout=15.0)
        ids = [str(m.id) for m in page.data]
    except Exception:  # no /v1/models, or the server is not up yet: keep the old default
        return ""
    if len(ids) > 1:
        raise ConfigurationError(
            f"the server at {endpoint.base_url} serves several models ({', '.join(ids)}); "
            "name one with --model (or FANOUT_MODEL, the agent's model, or the endpoint's "
            "default_model)"
        )
    found = ids[0] if ids else ""
    with _served_lock:
        _served[endpoint.base_url] = found
    return found
