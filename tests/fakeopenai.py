"""A scriptable, OpenAI-compatible chat-completions server for tests.

`FakeOpenAI` serves ``POST /v1/chat/completions``, ``GET /v1/models`` and ``GET /health``
on 127.0.0.1 from a background thread, so the real ``openai`` client (or anything else
speaking HTTP) can be pointed at ``fake.base_url``.

Requests are answered by default with a deterministic reply: ``"echo: <last user message>"``
for plain requests, ``{}`` for ``response_format={"type": "json_object"}`` and a generated,
schema-valid document for ``response_format={"type": "json_schema", ...}``.  Tests change this
per prompt with `FakeOpenAI.script`: every request whose user messages contain a key
consumes the next scripted step (`Reply`, `Error`, `Hang` or `Malformed`).

Run ``python -m tests.fakeopenai --port 8765`` to serve it standalone until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakebatch import FakeBatchAPI

MODELS = ("gpt-4o-mini",)
"""Model ids listed by ``GET /v1/models`` by default (any model name is accepted for
completions); set ``fake.models`` to list others (a local server lists its one model)."""

RESPONSE_FORMAT_REFUSAL = (
    "1 validation error: ('body', 'response_format', 'type') Input should be 'text' or "
    "'json_object'"
)
"""What a server that refuses a ``response_format`` style answers (llama-cpp-python's words)."""

_POLL_SECONDS = 0.02
_MAX_DEPTH = 16
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_FORMAT_EXAMPLES = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


@dataclass
class Reply:
    """A successful chat completion.

    Attributes:
        content: Message content; ``None`` means the default answer for the request.
        latency: Seconds to wait before answering.
        finish_reason: The choice's ``finish_reason``.
        prompt_tokens: Reported prompt tokens; ``None`` means the word count of all messages.
        completion_tokens: Reported completion tokens; ``None`` means the content's word count.
        null_content: Send ``"content": null`` (what a filtered or tool-calling answer carries).
        tool_calls: Function names sent as ``message.tool_calls``.
        refusal: ``message.refusal``.
    """

    content: str | None = None
    latency: float = 0.0
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    null_content: bool = False
    tool_calls: tuple[str, ...] = ()
    refusal: str | None = None


@dataclass
class Error:
    """An HTTP error with OpenAI's body ``{"error": {"message", "type", "code", "param"}}``.

    Attributes:
        status: HTTP status code.
        message: ``error.message``.
        code: ``error.code``, e.g. ``"context_length_exceeded"`` or ``"rate_limit_exceeded"``.
        retry_after: Value of the ``Retry-After`` header (seconds or an HTTP date).
        retry_after_ms: Value of the ``retry-after-ms`` header.
        latency: Seconds to wait before answering.
        echo_headers: Append the request's headers (``Authorization`` included) to the
            message, as some gateways and proxies do.
    """

    status: int
    message: str = "scripted error"
    code: str | None = None
    retry_after: float | str | None = None
    retry_after_ms: float | None = None
    latency: float = 0.0
    echo_headers: bool = False


@dataclass
class Hang:
    """Never answer in practice.

    The handler waits up to `seconds`, ending early when the client disconnects, the fake is
    reset or the server stops.  If the full time elapses it answers 504.
    """

    seconds: float = 60.0


@dataclass
class Malformed:
    """Answer 200 with a ``Content-Type: application/json`` body that is not valid JSON."""

    latency: float = 0.0


@dataclass
class Drip:
    """Answer 200 at once, then drip the body: one space every `interval` seconds for
    `seconds`, then a valid completion (so only a deadline on the whole body stops it)."""

    interval: float = 1.0
    seconds: float = 60.0


Step = Reply | Error | Hang | Malformed | Drip


@dataclass
class RecordedRequest:
    """One chat-completions request as the fake saw it.

    Attributes:
        key: The script key that matched the prompt, or ``None``.
        prompt: Content of the last user message (``""`` if there is none).
        conversation: Text of all user messages (what scripts and counts match against).
        body: The whole JSON request body (``{}`` if it was not a JSON object).
        headers: Request headers, names in lower case.
        arrived: ``time.monotonic()`` at arrival.
        finished: ``time.monotonic()`` when the response was handed to the server.
        tokens: The ``total_tokens`` of the usage answered (None for errors).
        status: The HTTP status answered (200 until an error is answered).
    """

    key: str | None
    prompt: str
    conversation: str
    body: dict[str, Any]
    headers: dict[str, str]
    arrived: float
    finished: float | None = None
    tokens: int | None = None
    status: int = 200


def fake_tokens(text: str) -> int:
    """The fake's token count of a text: one token per three characters, rounded up (not the
    client's estimate of four, so a test can tell which counted)."""
    return -(-len(text) // 3)


def message_text(content: Any) -> str:
    """Return the text of a message's ``content`` (a string or a list of content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return ""


def last_user_message(messages: Any) -> str:
    """Return the text of the last ``role == "user"`` message, or ``""``."""
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def user_text(messages: Any) -> str:
    """Return the text of every ``role == "user"`` message, joined by newlines.

    Scripts and counts match against this, so a follow-up turn (a re-ask after an
    invalid answer) still belongs to the conversation its first message started.
    """
    if not isinstance(messages, list):
        return ""
    return "\n".join(
        message_text(m.get("content"))
        for m in messages
        if isinstance(m, dict) and m.get("role") == "user"
    )


def _word_count(text: str) -> int:
    return len(text.split())


def _resolve_ref(root: Any, ref: str) -> Any:
    """Follow a local JSON pointer such as ``#/$defs/Item``."""
    if not ref.startswith("#"):
        raise ValueError(f"only local $ref is supported, got {ref!r}")
    node = root
    for token in ref.lstrip("#").strip("/").split("/"):
        if token:
            node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def _is_null_schema(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "null"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_example(schema: dict[str, Any], integral: bool) -> int | float:
    """Pick a number that satisfies the schema's (exclusive) minimum and maximum."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if integral:
        lows = [math.ceil(lo)] if _is_number(lo) else []
        lows += [math.floor(xlo) + 1] if _is_number(xlo) else []
        highs = [math.floor(hi)] if _is_number(hi) else []
        highs += [math.ceil(xhi) - 1] if _is_number(xhi) else []
        if lows:
            return max(lows)
        return min([0, *highs])
    low = max([v for v in (lo, xlo) if _is_number(v)], default=None)
    high = min([v for v in (hi, xhi) if _is_number(v)], default=None)
    if low is not None and high is not None:
        return (low + high) / 2
    if low is not None:
        return float(low + 1)
    if high is not None and high <= 0:
        return float(high - 1)
    return 0.0


def example_for_schema(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """Generate a deterministic JSON value that is valid for a JSON schema.

    Supports objects (all properties, required first), strings (with common formats and
    length limits), integers, numbers, booleans, null, arrays (one item, or ``minItems``),
    ``prefixItems``, ``enum`` (first value), ``const``, local ``$ref``, ``anyOf``/``oneOf``
    (first non-null option) and ``allOf`` (merged objects).  ``pattern`` and ``multipleOf``
    are ignored.  Deep recursion is cut off by dropping optional parts.

    Args:
        schema: The (sub)schema to satisfy.
        root: The document ``$ref`` pointers resolve against; defaults to `schema`.
        depth: Current nesting depth (internal).

    Returns:
        A JSON-serialisable value.
    """
    root = schema if root is None else root
    if not isinstance(schema, dict):
        return None
    deep = depth >= _MAX_DEPTH
    if "$ref" in schema:
        return example_for_schema(_resolve_ref(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if options:
            if deep and any(_is_null_schema(o) for o in options):
                return None
            usable = [o for o in options if not _is_null_schema(o)] or options
            return example_for_schema(usable[0], root, depth + 1)
    if schema.get("allOf"):
        parts = [example_for_schema(p, root, depth + 1) for p in schema["allOf"]]
        if all(isinstance(p, dict) for p in parts):
            return {k: v for part in parts for k, v in part.items()}
        return parts[0]

    kind = schema.get("type")
    if isinstance(kind, list):
        kind = "null" if deep and "null" in kind else next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"

    if kind == "object":
        properties: dict[str, Any] = schema.get("properties") or {}
        required = [name for name in schema.get("required", []) if isinstance(name, str)]
        optional = [] if deep else [name for name in properties if name not in required]
        extra = schema.get("additionalProperties")
        result = {}
        for name in required + optional:
            sub = properties.get(name, extra if isinstance(extra, dict) else {})
            result[name] = example_for_schema(sub, root, depth + 1)
        return result
    if kind == "array":
        if schema.get("prefixItems"):
            return [example_for_schema(p, root, depth + 1) for p in schema["prefixItems"]]
        count = int(schema.get("minItems", 0)) if deep else max(1, int(schema.get("minItems", 0)))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        return [example_for_schema(items, root, depth + 1) for _ in range(count)]
    if kind == "string":
        text = _FORMAT_EXAMPLES.get(schema.get("format", ""), "example")
        text = text.ljust(int(schema.get("minLength", 0)), "x")
        return text[: schema["maxLength"]] if "maxLength" in schema else text
    if kind in ("integer", "number"):
        return _number_example(schema, integral=kind == "integer")
    if kind == "boolean":
        return True
    return None


def format_style(body: dict[str, Any]) -> str | None:
    """The structured-output style of a request body: ``json_schema``,
    ``json_object+schema``, ``json_object`` or None (no ``response_format``)."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object" and response_format.get("schema") is not None:
        return "json_object+schema"
    return str(kind) if kind else None


def default_answer(body: dict[str, Any]) -> str:
    """Return the default completion content for a (valid) request body."""
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        if response_format.get("type") == "json_schema":
            spec = response_format.get("json_schema") or {}
            return json.dumps(example_for_schema(spec.get("schema") or {}))
        if response_format.get("type") == "json_object":
            if isinstance(response_format.get("schema"), dict):
                return json.dumps(example_for_schema(response_format["schema"]))
            return "{}"
    return "echo: " + last_user_message(body.get("messages"))


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """Build an OpenAI-shaped error body for an HTTP status."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def _header_number(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _validate(body: Any) -> tuple[str, str] | None:
    """Return ``(message, param)`` describing why a request body is invalid, or ``None``."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object.", ""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "You must provide a model parameter.", "model"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array.", "messages"
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return "Each message must be an object with a 'role'.", "messages"
    return None


def reset_text(seconds: float) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s"


class ProviderLimits:
    """A provider's own rate limits, enforced the way OpenAI describes them.

    Each limit is a bucket that refills continuously at ``R/60`` (``T/60``) a second and
    holds ``burst_seconds`` of that (OpenAI enforces a per-minute limit over shorter
    periods too: 600 a minute may mean 10 a second); it starts full. A request
    is admitted when every bucket has room for it; otherwise it is answered 429
    ``rate_limit_exceeded`` without Retry-After. A request counts as 1 request and,
    with ``counting="reserve"`` (OpenAI's way), as its prompt (:func:`fake_tokens`, 4
    a message) plus ``max_tokens`` when admitted; with ``counting="usage"`` it counts
    the tokens it used, after the answer. Every answer (429s included) carries the
    ``x-ratelimit-limit|remaining|reset-requests|tokens`` headers when ``headers``.
    """

    def __init__(
        self,
        requests_per_minute: int | None,
        tokens_per_minute: int | None,
        headers: bool,
        counting: str,
        burst_seconds: float = 1.0,
    ) -> None:
        self.rpm, self.tpm, self.headers, self.counting = (
            requests_per_minute,
            tokens_per_minute,
            headers,
            counting,
        )
        self.lock = threading.Lock()
        self.request_room = max(1.0, (requests_per_minute or 0) / 60 * burst_seconds)
        self.token_room = max(1.0, (tokens_per_minute or 0) / 60 * burst_seconds)
        self.requests = self.request_room
        self.tokens = self.token_room
        self.at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rpm:
            self.requests = min(self.request_room, self.requests + (now - self.at) * self.rpm / 60)
        if self.tpm:
            self.tokens = min(self.token_room, self.tokens + (now - self.at) * self.tpm / 60)
        self.at = now

    def admit(self, body: dict[str, Any]) -> tuple[bool, str]:
        """Count a request if there is room; False and the limit it hit otherwise."""
        prompt = sum(fake_tokens(message_text(m.get("content"))) + 4 for m in body["messages"])
        cost = prompt + int(body.get("max_tokens") or 0) if self.counting == "reserve" else 1
        with self.lock:
            self._refill()
            if self.rpm and self.requests < 1:
                return False, f"requests per min (RPM): Limit {self.rpm}, Used {self.rpm}"
            if self.tpm and self.tokens < min(cost, self.token_room):
                used = self.tpm - int(self.tokens / self.token_room * self.tpm)
                return False, f"tokens per min (TPM): Limit {self.tpm}, Used {used}"
            if self.rpm:
                self.requests -= 1
            if self.tpm:
                self.tokens -= cost
        return True, ""

    def used(self, tokens: int) -> None:
        """Count the tokens an answer used (``counting="usage"``)."""
        if self.counting == "usage" and self.tpm:
            with self.lock:
                self._refill()
                self.tokens -= tokens

    def header_values(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers as they stand now (empty without ``headers``)."""
        if not self.headers:
            return {}
        with self.lock:
            self._refill()
            out = {}
            for kind, limit, left, room in (
                ("requests", self.rpm, self.requests, self.request_room),
                ("tokens", self.tpm, self.tokens, self.token_room),
            ):
                if limit:
                    remaining = max(0, int(left / room * limit))
                    out[f"x-ratelimit-limit-{kind}"] = str(limit)
                    out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
                    out[f"x-ratelimit-reset-{kind}"] = reset_text((room - left) * 60 / limit)
            return out


class FakeOpenAI:
    """An OpenAI-compatible HTTP server on 127.0.0.1, scripted from tests.

    Args:
        host: Interface to bind (keep ``127.0.0.1``).
        port: Port to bind; ``0`` picks a free one at `start`.
        default_latency: Seconds to wait before default (unscripted) replies.

    Example:
        >>> with FakeOpenAI() as fake:  # doctest: +SKIP
        ...     fake.script("summarise", Error(429, retry_after=1), Reply("ok"))
        ...     client = openai.OpenAI(base_url=fake.base_url, api_key="x")
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, default_latency: float = 0.0):
        self.host = host
        self.port = port
        self.default_latency = default_latency
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Step]] = {}
        self._records: list[RecordedRequest] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._generation = 0  # bumped by reset()/stop(); interrupts waits that began earlier
        self._stopping = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.models: tuple[str, ...] = MODELS
        self.reported_model: str | None = None
        self.refused_formats: frozenset[str] = frozenset()
        self.refusal_status = 500
        self.context_tokens: int | None = None
        self.props = False
        self.tokenize = False
        self.max_model_len: int | None = None
        self.provider: ProviderLimits | None = None
        self.batches = FakeBatchAPI(self._answer_line)
        batch_routes = [
            Route(path, handler, methods=methods)
            for path, handler, methods in self.batches.routes()
        ]
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/health", self._health, methods=["GET"]),
                Route("/props", self._props, methods=["GET"]),
                Route("/tokenize", self._tokenize, methods=["POST"]),
                *batch_routes,
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    # ----------------------------------------------------------------- lifecycle

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ``http://127.0.0.1:PORT/v1`` (known once started)."""
        if not self.port:
            raise RuntimeError("FakeOpenAI has no port yet; call start() first")
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        """Bind the socket and serve from a daemon thread; return ``self`` once listening."""
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI is already running")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._stopping = False
        self._socket = sock
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fakeopenai", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FakeOpenAI failed to start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving, interrupting hung requests; returns within about a second."""
        self._stopping = True
        with self._lock:
            self._generation += 1
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- scripting

    def script(self, key: str, *steps: Step) -> None:
        """Queue steps for requests whose user messages contain `key`.

        Each matching request consumes one step; once they are used up, matching requests get
        the default reply.  Scripting a key again replaces its remaining steps.  When several
        keys match, the longest wins (so ``""`` acts as a lowest-priority catch-all).
        """
        with self._lock:
            self._scripts[key] = deque(steps)

    def count(self, key_or_substring: str) -> int:
        """Return how many requests had user messages containing the string."""
        return len(self.requests(key_or_substring))

    def requests(self, substring: str | None = None) -> list[RecordedRequest]:
        """Return recorded requests in arrival order, optionally only prompts containing it."""
        with self._lock:
            records = list(self._records)
        return [r for r in records if substring is None or substring in r.conversation]

    @property
    def total(self) -> int:
        """Number of chat requests since start or the last `reset`."""
        with self._lock:
            return len(self._records)

    @property
    def max_in_flight(self) -> int:
        """The most chat requests handled at the same time since start or the last `reset`."""
        with self._lock:
            return self._max_in_flight

    def reset(self) -> None:
        """Forget scripts and records and reset `max_in_flight`.

        Hung or sleeping requests from before the reset are released, and the call waits
        (up to one second) for them to finish so they cannot leak into the next test.
        """
        with self._lock:
            self._generation += 1
            self._scripts.clear()
        deadline = time.monotonic() + 1.0
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._lock:
            self._records = []
            self._max_in_flight = self._in_flight
        self.batches.reset()
        self.emulate()
        self.enforce()

    def enforce(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        headers: bool = True,
        counting: str = "reserve",
        burst_seconds: float = 1.0,
    ) -> None:
        """Enforce the provider's own rate limits (see :class:`ProviderLimits`); none: off.

        Args:
            requests_per_minute: Requests a minute the provider admits.
            tokens_per_minute: Tokens a minute it admits.
            headers: Send ``x-ratelimit-*`` with every answer, as OpenAI does.
            counting: ``reserve`` (prompt + ``max_tokens`` at admission, OpenAI's way)
                or ``usage`` (the tokens used, after the answer).
            burst_seconds: How many seconds of the rate a bucket holds.
        """
        if requests_per_minute is None and tokens_per_minute is None:
            self.provider = None
        else:
            self.provider = ProviderLimits(
                requests_per_minute, tokens_per_minute, headers, counting, burst_seconds
            )

    def emulate(
        self,
        *,
        models: tuple[str, ...] = MODELS,
        reported_model: str | None = None,
        refused_formats: frozenset[str] | set[str] = frozenset(),
        refusal_status: int = 500,
        context_tokens: int | None = None,
        props: bool = False,
        tokenize: bool = False,
        max_model_len: int | None = None,
    ) -> None:
        """Behave like another server (``reset`` goes back to OpenAI's ways).

        Args:
            models: Model ids ``GET /v1/models`` lists.
            reported_model: The ``model`` every answer names (None: the one asked for,
                as OpenAI does); a local server names its own.
            refused_formats: ``response_format`` styles answered with an error naming
                ``response_format`` (``json_schema``, ``json_object+schema``,
                ``json_object``), as llama-cpp-python refuses ``json_schema``.
            refusal_status: The status of that error (llama-cpp-python: 500).
            context_tokens: A context (prompt tokens, counted as :func:`fake_tokens` does,
                plus ``max_tokens``) over which a chat request is answered 400
                ``exceed_context_size_error``, as llama-server does.
            props: Answer ``GET /props`` with ``default_generation_settings.n_ctx`` (the
                context) as llama-server does; otherwise it is a 404.
            tokenize: Answer ``POST /tokenize`` as llama-server does (tokens of
                :func:`fake_tokens`); otherwise it is a 404.
            max_model_len: Each model of ``GET /v1/models`` carries it, as vLLM's do.
        """
        self.context_tokens = context_tokens
        self.props = props
        self.tokenize = tokenize
        self.max_model_len = max_model_len
        self.models = tuple(models)
        self.reported_model = reported_model
        self.refused_formats = frozenset(refused_formats)
        self.refusal_status = refusal_status

    # ----------------------------------------------------------------- handlers

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _models(self, request: Request) -> Response:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": "fakeopenai"}
            for model in self.models
        ]
        if self.max_model_len is not None:
            for entry in data:
                entry["max_model_len"] = self.max_model_len
        return JSONResponse({"object": "list", "data": data})

    async def _props(self, request: Request) -> Response:
        if not self.props:
            return JSONResponse(error_body(404, "File Not Found"), 404)
        settings = {"n_ctx": self.context_tokens or 4096}
        return JSONResponse({"default_generation_settings": settings, "total_slots": 1})

    async def _tokenize(self, request: Request) -> Response:
        if not self.tokenize:
            return JSONResponse(error_body(404, "File Not Found"), 404)
        try:
            content = str(json.loads(await request.body()).get("content", ""))
        except (ValueError, AttributeError):
            return JSONResponse(error_body(400, "expected {content: TEXT}"), 400)
        return JSONResponse({"tokens": list(range(fake_tokens(content)))})

    def _over_context(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """llama-server's 400 for a request over the context, or None when it fits."""
        if self.context_tokens is None:
            return None
        messages = body.get("messages") or []
        prompt = sum(fake_tokens(message_text(m.get("content"))) + 4 for m in messages)
        wanted = prompt + int(body.get("max_tokens") or 0)
        if wanted <= self.context_tokens:
            return None
        error = error_body(400, "the request exceeds the available context size, try increasing it")
        error["error"].update(
            type="exceed_context_size_error", n_prompt_tokens=prompt, n_ctx=self.context_tokens
        )
        return error

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}"
        return JSONResponse(error_body(status, message), status_code=status)

    async def _chat(self, request: Request) -> Response:
        arrived = time.monotonic()
        with self._lock:
            generation = self._generation
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        record: RecordedRequest | None = None
        try:
            try:
                body: Any = json.loads(await request.body())
            except (ValueError, UnicodeDecodeError):
                body = None
            problem = _validate(body)
            valid: dict[str, Any] = body if problem is None else {}
            prompt = last_user_message(valid.get("messages"))
            conversation = user_text(valid.get("messages"))
            refused = problem is None and format_style(valid) in self.refused_formats
            with self._lock:
                key = self._match(conversation) if problem is None else None
                queue = self._scripts.get(key) if key is not None and not refused else None
                step = queue.popleft() if queue else None
                record = RecordedRequest(
                    key=key,
                    prompt=prompt,
                    conversation=conversation,
                    body=body if isinstance(body, dict) else {},
                    headers=dict(request.headers),
                    arrived=arrived,
                )
                self._records.append(record)
            if problem is not None:
                message, param = problem
                return JSONResponse(error_body(400, message, None, param or None), 400)
            over = self._over_context(valid)
            if over is not None:
                return JSONResponse(over, 400)
            if refused:  # before any scripted step: a refused request consumes none
                status = self.refusal_status
                content = error_body(status, RESPONSE_FORMAT_REFUSAL, None, "response_format")
                return JSONResponse(content, status)
            provider = self.provider
            if provider is not None:
                admitted, what = provider.admit(valid)
                if not admitted:
                    record.status = 429
                    message = f"Rate limit reached for {valid['model']} on {what}, Requested 1."
                    content = error_body(429, message, "rate_limit_exceeded")
                    return JSONResponse(content, 429, headers=provider.header_values())
            response = await self._respond(step, valid, request, generation, record)
            record.status = response.status_code
            if provider is not None:
                provider.used(record.tokens or 0)
                response.headers.update(provider.header_values())
            return response
        finally:
            if record is not None:
                record.finished = time.monotonic()
            with self._lock:
                self._in_flight -= 1

    def _answer_line(self, body: Any) -> tuple[int, Any, str]:
        """Answer one batch line's body as ``POST /v1/chat/completions`` would, at once.

        Scripted steps are consumed as by online requests: an ``Error`` is the line's
        status and error body, ``Hang`` and ``Malformed`` become a 500, a ``Reply`` its
        answer (latency is ignored: a batch line takes no wall time of its own).

        Returns:
            (status code, response body, the user messages' text).
        """
        problem = _validate(body)
        if problem is not None:
            return 400, error_body(400, problem[0], None, problem[1] or None), ""
        conversation = user_text(body.get("messages"))
        with self._lock:
            key = self._match(conversation)
            queue = self._scripts.get(key) if key is not None else None
            step = queue.popleft() if queue else None
        if isinstance(step, Error):
            return step.status, error_body(step.status, step.message, step.code), conversation
        if isinstance(step, Hang | Malformed):
            return 500, error_body(500, "the server failed this request"), conversation
        reply = step if isinstance(step, Reply) else Reply()
        content = default_answer(body) if reply.content is None else reply.content
        completion = self._completion(body, reply, content)
        if self.reported_model:
            completion["model"] = self.reported_model
        return 200, completion, conversation

    def _match(self, prompt: str) -> str | None:
        """Return the longest script key contained in the prompt (lock held by caller)."""
        keys = [key for key in self._scripts if key in prompt]
        return max(keys, key=len) if keys else None

    async def _pause(self, seconds: float, request: Request, generation: int) -> bool:
        """Sleep up to `seconds`; return False if interrupted (disconnect, reset or stop)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stopping or self._generation != generation:
                return False
            if await request.is_disconnected():
                return False
            await asyncio.sleep(min(_POLL_SECONDS, remaining))
        return True

    async def _respond(
        self,
        step: Step | None,
        body: dict[str, Any],
        request: Request,
        generation: int,
        record: RecordedRequest | None = None,
    ) -> Response:
        if isinstance(step, Hang):
            await self._pause(step.seconds, request, generation)
            return JSONResponse(error_body(504, "fake hang ended", "timeout"), 504)
        if isinstance(step, Error):
            await self._pause(step.latency, request, generation)
            headers = {}
            if step.retry_after is not None:
                headers["retry-after"] = _header_number(step.retry_after)
            if step.retry_after_ms is not None:
                headers["retry-after-ms"] = _header_number(step.retry_after_ms)
            message = step.message
            if step.echo_headers:
                message += f" (request headers: {dict(request.headers)})"
            content = error_body(step.status, message, step.code)
            return JSONResponse(content, step.status, headers=headers)
        if isinstance(step, Drip):
            text = json.dumps(self._completion(body, Reply(), default_answer(body)))
            return StreamingResponse(
                self._drip(step, text, generation), media_type="application/json"
            )
        if isinstance(step, Malformed):
            await self._pause(step.latency, request, generation)
            broken = '{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{'
            return Response(broken, 200, media_type="application/json")

        reply = step if isinstance(step, Reply) else Reply(latency=self.default_latency)
        await self._pause(reply.latency, request, generation)
        content = default_answer(body) if reply.content is None else reply.content
        completion = self._completion(body, reply, content)
        message = completion["choices"][0]["message"]
        if reply.null_content:
            message["content"] = None
        if reply.tool_calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{n}",
                    "type": "function",
                    "function": {"name": name, "arguments": "{}"},
                }
                for n, name in enumerate(reply.tool_calls)
            ]
        message["refusal"] = reply.refusal
        if record is not None:
            record.tokens = completion["usage"]["total_tokens"]
        if self.reported_model:
            completion["model"] = self.reported_model
        headers = {"x-request-id": "req_" + uuid.uuid4().hex[:24]}
        if body.get("stream"):
            options = body.get("stream_options") or {}
            chunks = _stream(completion, bool(options.get("include_usage")))
            return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        return JSONResponse(completion, headers=headers)

    async def _drip(self, step: Drip, text: str, generation: int) -> AsyncIterator[bytes]:
        end = time.monotonic() + step.seconds
        yield b" "
        while time.monotonic() < end:
            if self._stopping or self._generation != generation:
                return
            await asyncio.sleep(step.interval)
            yield b" "
        yield text.encode()

    @staticmethod
    def _completion(body: dict[str, Any], reply: Reply, content: str) -> dict[str, Any]:
        messages = body["messages"]
        prompt_tokens = reply.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = sum(_word_count(message_text(m.get("content"))) for m in messages)
        completion_tokens = reply.completion_tokens
        if completion_tokens is None:
            completion_tokens = _word_count(content)
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fakeopenai",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


async def _stream(completion: dict[str, Any], include_usage: bool) -> AsyncIterator[str]:
    """Yield a completion as server-sent ``chat.completion.chunk`` events."""
    choice = completion["choices"][0]
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    deltas = [
        ({"role": "assistant", "content": choice["message"]["content"]}, None),
        ({}, choice["finish_reason"]),
    ]
    for delta, finish_reason in deltas:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        yield f"data: {json.dumps(chunk)}\n\n"
    if include_usage:
        yield f"data: {json.dumps({**base, 'choices': [], 'usage': completion['usage']})}\n\n"
    yield "data: [DONE]\n\n"


def main(argv: list[str] | None = None) -> None:
    """Serve a `FakeOpenAI` in the foreground until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve a fake OpenAI API on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    parser.add_argument("--latency", type=float, default=0.0, help="default reply latency (s)")
    args = parser.parse_args(argv)
    with FakeOpenAI(port=args.port, default_latency=args.latency) as fake:
        print(f"fake OpenAI serving at {fake.base_url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
