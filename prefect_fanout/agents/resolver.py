"""The one resolver: agent, model, endpoint and transport of a call or a run, each found once.

A :class:`Resolver` is made per call (``call_agent``) or per run (a dispatch, a
map) and answers the questions every call asks, caching the answers:

- which profile is agent ``NAME``? A profile object as given; else the run's
  own profiles (a plan's ``agents``, ``--agents FILE``); else a built-in; else a
  saved ``AgentProfile`` block, loaded from the API once per resolver;
- which model? explicit (``--model``) > ``FANOUT_MODEL`` > the profile's >
  the endpoint's ``default_model`` > ``gpt-4o-mini``;
- which endpoint? resolved once, and only when a model needs one (see
  :func:`~prefect_fanout.agents.endpoints.resolve_endpoint` for the order);
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

from prefect_fanout.agents.endpoints import DEFAULT_MODEL, LLMEndpoint, resolve_endpoint
from prefect_fanout.agents.profiles import AgentProfile, resolve_agent
from prefect_fanout.call.request import CallRequest
from prefect_fanout.call.transport import TEST_MODEL, OpenAITransport, TestTransport, Transport

Prompt = str | list[dict[str, str]]

_TEST_TRANSPORT = TestTransport()


class Resolver:
    """Resolves the agents, models, endpoint and transports of one call or run.

    Args:
        agents: The run's own profiles by name (a plan's ``agents``, an agents file).
        endpoint: A saved ``LLMEndpoint`` block name, an endpoint, or None for
            the ``OPENAI_*`` environment variables.
        model: A model overriding every agent's (``test`` runs offline).
    """

    def __init__(
        self,
        *,
        agents: Mapping[str, AgentProfile] | None = None,
        endpoint: str | LLMEndpoint | None = None,
        model: str | None = None,
    ) -> None:
        self.profiles: dict[str, AgentProfile] = dict(agents or {})
        self.endpoint_ref = endpoint
        self.model_override = model
        self._endpoint: LLMEndpoint | None = endpoint if isinstance(endpoint, LLMEndpoint) else None
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

    def endpoint(self) -> LLMEndpoint:
        """The endpoint of the run, resolved on first use.

        Raises:
            ConfigurationError: None is configured, or the named block is missing.
        """
        with self._lock:
            if self._endpoint is None:
                self._endpoint = resolve_endpoint(self.endpoint_ref)
            return self._endpoint

    def model(self, agent: str | AgentProfile) -> str:
        """The model an agent's calls use (resolving the endpoint only if that decides it)."""
        profile = self.agent(agent)
        named = self.model_override or os.environ.get("FANOUT_MODEL") or profile.model
        if named == TEST_MODEL:
            return named
        return named or self.endpoint().default_model or DEFAULT_MODEL

    def transport(self, model: str) -> Transport:
        """The transport that answers ``model``: offline for ``test``, else the endpoint's."""
        if model == TEST_MODEL:
            return _TEST_TRANSPORT
        with self._lock:
            if self._transport is None:
                self._transport = OpenAITransport(self.endpoint())
            return self._transport

    def check(self, agents: Iterable[str | AgentProfile]) -> None:
        """Resolve every agent and, when one of their models needs it, the endpoint.

        Raises:
            ConfigurationError: An agent is unknown, or an endpoint is needed and
                none is configured.
        """
        for agent in agents:
            self.transport(self.model(agent))

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
            timeout_seconds: Per-request timeout overriding the endpoint's and the profile's.

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
        if isinstance(prompt, str):
            content = profile.render_user_message(prompt, dict(variables or {}))
            messages = [{"role": "user", "content": content}]
            if system_prompt:
                messages.insert(0, {"role": "system", "content": system_prompt})
        else:
            messages = [dict(m) for m in prompt]
        endpoint_timeout = (
            self._endpoint.request_timeout_seconds
            if isinstance(transport, OpenAITransport)
            else None
        )
        return CallRequest(
            agent=profile.name,
            item_id=item_id,
            base_url=transport.base_url,
            model=model,
            messages=messages,
            temperature=profile.temperature,
            max_tokens=profile.max_tokens,
            output_schema=profile.output_schema,
            output_type=profile.output_type,
            prompt_parts={**profile.prompt_parts(), "system_prompt": system_prompt},
            max_validation_retries=profile.max_validation_retries,
            timeout_seconds=timeout_seconds or endpoint_timeout or profile.timeout_seconds,
            retry=profile.retry_options(),
            input_price_per_million=profile.input_price_per_million,
            output_price_per_million=profile.output_price_per_million,
            tags=(f"agent:{profile.name}", f"model:{model}", *tags),
        )
