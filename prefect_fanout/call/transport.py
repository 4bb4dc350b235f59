"""Transports: how one question reaches a model and its answer comes back.

The agent call sends every question through a :class:`Transport`, as an httpx
client sends through its transport. Two implementations ship:

- :class:`OpenAITransport`: the real ``openai`` client over HTTP to an
  OpenAI-compatible endpoint, with the retries of :mod:`prefect_fanout.call.retry`
  (the client's own retries are off, so the attempt budget is exact);
- :class:`TestTransport`: the built-in offline ``test`` model, deterministic
  and free (:mod:`prefect_fanout.call.testmodel`).

Which transport answers a model is decided in one place,
:meth:`prefect_fanout.agents.resolver.Resolver.transport`; nothing above the
call asks which one it got. Transports are small picklable values (the HTTP
client is shared per process and created on first use), so they travel to
Dask and Ray workers as task parameters.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import openai

from prefect_fanout.agents.endpoints import LLMEndpoint
from prefect_fanout.call import testmodel
from prefect_fanout.call.request import CallRequest
from prefect_fanout.call.retry import call_with_retries
from prefect_fanout.errors import NonRetryableAPIError

Logger = logging.Logger | logging.LoggerAdapter[Any]

TEST_MODEL = "test"
"""The model name of the built-in offline model."""

TEST_BASE_URL = "test://offline"
"""The base URL recorded (and keyed) for calls answered by the ``test`` model."""


@dataclass(frozen=True)
class Completion:
    """One answer from a model.

    Attributes:
        text: The answer's text (JSON text for structured output).
        finish_reason: Why the model stopped (``stop``, ``length``, ...), if given.
        prompt_tokens: Prompt tokens the server reported.
        completion_tokens: Completion tokens the server reported.
        attempts: HTTP requests made for this answer (retries included).
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int


class Transport(Protocol):
    """Sends one question of a call and returns the model's answer.

    Attributes:
        base_url: Where the questions go; part of every call's cache key.
    """

    base_url: str

    def complete(
        self, request: CallRequest, messages: list[dict[str, str]], logger: Logger
    ) -> Completion:
        """Ask ``messages`` with the request's model and settings.

        Raises:
            AgentCallError: The question failed for good (after any retries).
        """
        ...


@dataclass(frozen=True)
class TestTransport:
    """The offline ``test`` model: no network, no key, deterministic answers."""

    base_url: str = TEST_BASE_URL

    def complete(
        self, request: CallRequest, messages: list[dict[str, str]], logger: Logger
    ) -> Completion:
        """A deterministic answer (a schema-valid instance for structured agents)."""
        text, prompt_tokens, completion_tokens = testmodel.answer(
            request.model_copy(update={"messages": messages})
        )
        return Completion(text, "stop", prompt_tokens, completion_tokens, 1)


_clients: dict[tuple[str, str, str | None], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def openai_client(endpoint: LLMEndpoint) -> openai.OpenAI:
    """The process's shared ``openai.OpenAI`` client for an endpoint (its own retries off)."""
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


def response_format(request: CallRequest) -> dict[str, Any] | None:
    """The ``response_format`` of a structured request (None for plain text)."""
    if request.output_schema is None:
        return None
    title = str(request.output_schema.get("title") or request.agent or "output")
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in title)[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": request.output_schema}}


@dataclass(frozen=True)
class OpenAITransport:
    """Chat completions over HTTP with the ``openai`` client, retried by our own loop.

    Attributes:
        endpoint: Where to send, with the key (never part of a cache key or a log).
    """

    endpoint: LLMEndpoint

    @property
    def base_url(self) -> str:
        """The endpoint's base URL."""
        return self.endpoint.base_url

    def complete(
        self, request: CallRequest, messages: list[dict[str, str]], logger: Logger
    ) -> Completion:
        """One question with retries of transient errors (see :mod:`~prefect_fanout.call.retry`).

        Raises:
            AgentCallError: A permanent error, a too-long Retry-After, or the
                budget used up; or an answer without choices.
        """
        client = openai_client(self.endpoint)
        kwargs: dict[str, Any] = {"model": request.model, "messages": messages}
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        wanted_format = response_format(request)
        if wanted_format is not None:
            kwargs["response_format"] = wanted_format

        def send() -> Any:
            # The raw response: the body is read as JSON here instead of being built
            # into the client's pydantic models, a measurable share of a call's CPU.
            raw = client.chat.completions.with_raw_response.create(
                timeout=request.timeout_seconds, **kwargs
            )
            return json.loads(raw.content)

        body, attempts = call_with_retries(
            send,
            request.retry,
            request.label,
            logger=logger,
            timeout_seconds=request.timeout_seconds,
        )
        try:
            choice = body["choices"][0]
            text = choice["message"].get("content") or ""
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise NonRetryableAPIError(
                f"{request.label}: the server's answer has no choices/message ({exc!r})", attempts
            ) from None
        usage = body.get("usage") if isinstance(body, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        return Completion(
            text=str(text),
            finish_reason=finish,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            attempts=attempts,
        )
