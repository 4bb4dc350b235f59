"""Transports: how one question reaches a model and its answer comes back.

The agent call sends every question through a :class:`Transport`, as an httpx
client sends through its transport. Two implementations ship:

- :class:`OpenAITransport`: the real ``openai`` client over HTTP to an
  OpenAI-compatible endpoint, with the retries of :mod:`prefect_fanout.llm.retry`
  (the client's own retries are off, so the attempt budget is exact);
- :class:`TestTransport`: the built-in offline ``test`` model, deterministic
  and free (:mod:`prefect_fanout.llm.testmodel`).

Which transport answers a model is decided in one place,
:meth:`prefect_fanout.agents.resolver.Resolver.transport`; nothing above the
call asks which one it got. Transports are small picklable values (the HTTP
client is shared per process and created on first use), so they travel to
Dask and Ray workers as task parameters.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import openai

from prefect_fanout.errors import AgentCallError, NonRetryableAPIError
from prefect_fanout.limits.hook import WaitClock, limited
from prefect_fanout.llm import testmodel
from prefect_fanout.llm.answer import check_answer
from prefect_fanout.llm.deadline import DeadlineTransport, httpx, on_status
from prefect_fanout.llm.endpoints import LLMEndpoint, is_openai
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.retry import (
    call_with_retries,
    describe_api_error,
    is_response_format_error,
)
from prefect_fanout.llm.styles import STRUCTURED_STYLES

Logger = logging.Logger | logging.LoggerAdapter[Any]

TEST_MODEL = testmodel.TEST_MODEL
TEST_BASE_URL = testmodel.TEST_BASE_URL


@dataclass(frozen=True)
class Completion:
    """One answer from a model.

    Attributes:
        text: The answer's text (JSON text for structured output).
        finish_reason: Why the model stopped (``stop``, ``length``, ...), if given.
        prompt_tokens: Prompt tokens the server reported.
        completion_tokens: Completion tokens the server reported.
        attempts: HTTP requests made for this answer (retries and style fallbacks included).
        model: The model the server says answered (None when it names none).
        style: The structured-output style that was sent (None for plain text).
        limit_wait_s: Seconds its requests waited for the endpoint's limits.
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    attempts: int
    model: str | None = None
    style: str | None = None
    limit_wait_s: float = 0.0


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
        return Completion(text, "stop", prompt_tokens, completion_tokens, 1, TEST_MODEL)


_clients: dict[tuple[str, str, str | None], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def openai_client(endpoint: LLMEndpoint) -> openai.OpenAI:
    """The process's shared ``openai.OpenAI`` client for an endpoint (its own retries off)."""
    key = (endpoint.base_url, endpoint.key_value(), endpoint.organization)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            # One deadline per request, whatever the server does (see llm.deadline).
            client = openai.OpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.key_value(),
                organization=endpoint.organization,
                max_retries=0,
                http_client=openai.DefaultHttpxClient(
                    transport=DeadlineTransport(openai.DEFAULT_CONNECTION_LIMITS)
                ),
            )
            _clients[key] = client
        return client


STYLES = STRUCTURED_STYLES
"""How a structured request asks the server for JSON (``structured_output`` of an endpoint
or a profile):

- ``json_schema``: ``response_format={"type": "json_schema", ...}`` (OpenAI, vLLM, llama-server);
- ``json_object+schema``: ``{"type": "json_object", "schema": ...}`` (llama-cpp-python's server);
- ``json_object``: ``{"type": "json_object"}`` plus the schema in the prompt;
- ``none``: no ``response_format``, the schema in the prompt only;
- ``auto`` (the default): the styles of :data:`AUTO_ORDER` in turn, moving on only when the
  server answers a 4xx/5xx naming ``response_format``; the style that worked is remembered
  for the endpoint (its base URL) for the rest of the process. Until it is known, one
  structured call (the probe) asks a server that is not OpenAI's; the other structured calls
  wait only until the probe's status says its style is taken (a 2xx, heard when its headers
  arrive, before its body), then all go at once. So a run sends each refused style once and
  the probe costs the others one request's time to headers, never a queue. If the probe
  fails for another reason the next waiting call probes in its turn.

Whatever the style, the answer is validated against the schema.
"""

AUTO_ORDER = ("json_schema", "json_object+schema", "none")
"""The styles ``auto`` tries, in order, each at most once per request."""

_learned_styles: dict[str, str] = {}
_learned_lock = threading.Lock()


def learned_style(base_url: str) -> str | None:
    """The style ``auto`` found working for an endpoint in this process, if any."""
    with _learned_lock:
        return _learned_styles.get(base_url)


def forget_learned_styles() -> None:
    """Forget every remembered style (a new run, or a test)."""
    with _learned_lock:
        _learned_styles.clear()


def _remember_style(base_url: str, style: str) -> None:
    with _learned_lock:
        _learned_styles[base_url] = style


class _Probe:
    """The one structured-output probe of a base URL, and the calls waiting for its verdict."""

    def __init__(self) -> None:
        self.running = False
        self.changed = threading.Condition()

    def start(self) -> bool:
        """Become the probe (True), unless one is running."""
        with self.changed:
            if self.running:
                return False
            self.running = True
            return True

    def end(self) -> None:
        """The probe is over (answered or failed): wake the waiting calls."""
        with self.changed:
            self.running = False
            self.changed.notify_all()

    def heard(self) -> None:
        """A style was found working: wake the waiting calls."""
        with self.changed:
            self.changed.notify_all()

    def wait(self, base_url: str, seconds: float) -> bool:
        """Wait until the style is known or no probe runs (True), or ``seconds`` (False)."""
        deadline = time.monotonic() + seconds
        with self.changed:
            while self.running and learned_style(base_url) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 1.0))
            return True


PROBE_LOG_SECONDS = 30.0
"""A call that has waited this long for the probe says so (and again after as long)."""

_probes: dict[str, _Probe] = {}


def _probe_for(base_url: str) -> _Probe:
    with _learned_lock:
        return _probes.setdefault(base_url, _Probe())


def _needs_probe(request: CallRequest, base_url: str) -> bool:
    """True for an ``auto`` structured call to a server whose style is not known yet.

    OpenAI's own API takes ``json_schema``: its calls never wait for a probe.
    """
    if request.output_schema is None or (request.structured_output or "auto") != "auto":
        return False
    return not is_openai(base_url) and learned_style(base_url) is None


def styles_to_try(request: CallRequest, base_url: str) -> tuple[str | None, ...]:
    """The structured-output styles a request may be sent with, in order."""
    if request.output_schema is None:
        return (None,)
    style = request.structured_output or "auto"
    if style != "auto":
        return (style,)
    known = learned_style(base_url)
    return AUTO_ORDER[AUTO_ORDER.index(known) :] if known in AUTO_ORDER else AUTO_ORDER


def response_format(
    request: CallRequest, style: str | None = "json_schema"
) -> dict[str, Any] | None:
    """The ``response_format`` of a structured request in a style (None for plain text)."""
    if request.output_schema is None or style in (None, "none"):
        return None
    if style == "json_object":
        return {"type": "json_object"}
    if style == "json_object+schema":
        return {"type": "json_object", "schema": request.output_schema}
    title = str(request.output_schema.get("title") or request.agent or "output")
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in title)[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": request.output_schema}}


def schema_instruction(schema: dict[str, Any]) -> str:
    """The prompt text that carries the schema for styles that do not send it."""
    return (
        "Answer with only a JSON document (no prose, no code fences) that matches this "
        "JSON schema:\n" + json.dumps(schema, ensure_ascii=False)
    )


def messages_for_style(
    request: CallRequest, messages: list[dict[str, str]], style: str | None
) -> list[dict[str, str]]:
    """The messages as sent.

    The schema is added to the last user message for ``json_object`` and ``none``,
    the styles that do not give the server the schema.
    """
    if request.output_schema is None or style not in ("json_object", "none"):
        return messages
    sent = [dict(m) for m in messages]
    for message in reversed(sent):
        if message.get("role") == "user":
            message["content"] = f"{message.get('content', '')}\n\n" + schema_instruction(
                request.output_schema
            )
            return sent
    return [*sent, {"role": "user", "content": schema_instruction(request.output_schema)}]


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
        """One question with retries of transient errors (see :mod:`~prefect_fanout.llm.retry`).

        Raises:
            AgentCallError: A permanent error, a too-long Retry-After, or the
                budget used up; or an answer without choices.
        """
        clock = WaitClock()
        while _needs_probe(request, self.base_url):
            probe = _probe_for(self.base_url)
            if probe.start():
                # The first structured call to a server finds its style; the others wait
                # only for the status of a request in a style that works (see STYLES).
                try:
                    return self._complete(request, messages, logger, clock, probe)
                finally:
                    probe.end()
            began = time.monotonic()
            while not probe.wait(self.base_url, PROBE_LOG_SECONDS):
                logger.warning(
                    "[%s] has waited %.0fs for the structured-output probe of %s (the first "
                    "structured call, finding the style the server takes); set "
                    "structured_output on the endpoint or profile to skip the probe",
                    request.label,
                    time.monotonic() - began,
                    self.base_url,
                )
            clock.add(time.monotonic() - began)
        return self._complete(request, messages, logger, clock)

    def _complete(
        self,
        request: CallRequest,
        messages: list[dict[str, str]],
        logger: Logger,
        clock: WaitClock,
        probe: _Probe | None = None,
    ) -> Completion:
        client = openai_client(self.endpoint)
        styles = styles_to_try(request, self.base_url)
        spent = 0
        for position, style in enumerate(styles):

            def heard(status: int, style: str | None = style) -> None:
                if probe is not None and 200 <= status < 300:
                    _remember_style(self.base_url, str(style))
                    probe.heard()

            try:
                with on_status(heard) if probe is not None else contextlib.nullcontext():
                    body, attempts = self._send(client, request, messages, style, logger, clock)
            except AgentCallError as exc:
                spent += exc.attempts
                exc.limit_wait_s = clock.seconds
                refused = isinstance(exc, NonRetryableAPIError) and is_response_format_error(
                    exc.__cause__
                )
                if refused and position + 1 < len(styles):
                    logger.warning(
                        "[%s] the server refused structured-output style %r (%s); trying %r "
                        "and remembering what works for %s",
                        request.label,
                        style,
                        describe_api_error(exc.__cause__),  # type: ignore[arg-type]
                        styles[position + 1],
                        self.base_url,
                    )
                    continue
                exc.attempts = spent
                raise
            spent += attempts
            auto = (request.structured_output or "auto") == "auto"
            if request.output_schema is not None and auto:
                _remember_style(self.base_url, str(style))
            return _completion(request, body, spent, style, clock.seconds)
        raise AssertionError("unreachable: the last style either answers or raises")

    def _send(
        self,
        client: openai.OpenAI,
        request: CallRequest,
        messages: list[dict[str, str]],
        style: str | None,
        logger: Logger,
        clock: WaitClock,
    ) -> tuple[Any, int]:
        body = chat_body(request, messages, style)

        def send() -> Any:
            # The client's documented way to POST a body as it is (``client.post``, here
            # read as the HTTP answer): its auth, headers, timeout, status errors and exceptions,
            # without rebuilding the request through the typed ``create`` parameters
            # and the response into pydantic models (measured: about a tenth of the
            # process's CPU in a run of many short calls).
            # ``cast_to=httpx.Response`` hands back the HTTP answer itself, so its
            # x-ratelimit-* headers reach the limits (prefect_fanout.limits.learning).
            response = client.post(
                CHAT_COMPLETIONS_PATH,
                cast_to=httpx.Response,
                body=body,
                options={"timeout": request.timeout_seconds},
            )
            return json.loads(response.content), response.headers

        return call_with_retries(
            limited(self.endpoint, body["messages"], request.max_tokens, send, clock),
            request.retry,
            request.label,
            logger=logger,
            timeout_seconds=request.timeout_seconds,
            base_url=self.base_url,
        )


CHAT_COMPLETIONS_PATH = "/chat/completions"


def chat_body(
    request: CallRequest, messages: list[dict[str, str]], style: str | None
) -> dict[str, Any]:
    """The JSON body of a chat-completions request in a structured-output style.

    ``extra_body`` fields are merged in last, as the ``openai`` client merges them.
    """
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages_for_style(request, messages, style),
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    wanted_format = response_format(request, style)
    if wanted_format is not None:
        body["response_format"] = wanted_format
    if request.extra_body:
        body.update(request.extra_body)
    return body


def _completion(
    request: CallRequest, body: Any, attempts: int, style: str | None, waited: float = 0.0
) -> Completion:
    """A completion from a chat-completions body."""
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
    reported = body.get("model") if isinstance(body, dict) else None
    try:  # an answer must be an answer (prefect_fanout.llm.answer)
        check_answer(request.label, choice, attempts)
    except AgentCallError as exc:
        exc.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        exc.completion_tokens = int(usage.get("completion_tokens") or 0)
        exc.model, exc.finish_reason = (str(reported) if reported else None), finish
        raise
    return Completion(
        text=str(text),
        finish_reason=finish,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        attempts=attempts,
        model=str(reported) if reported else None,
        style=style,
        limit_wait_s=waited,
    )
