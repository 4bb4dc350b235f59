"""What one agent call sends: the request model, its messages and its cache key.

A :class:`CallRequest` holds everything that determines an answer (which goes
into the cache key) and everything that only decides how the call is made
(which does not). Every field is in exactly one of :data:`KEY_FIELDS` and
:data:`NOT_KEY_FIELDS`; a test keeps it that way, so a new field cannot slip
out of the key by accident.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from prefect_fanout.llm.retry import RetryOptions

CACHE_KEY_VERSION = "fanout-call-v1"

#: Fields that determine the answer: the cache key is a hash of them.
KEY_FIELDS = frozenset(
    {
        "base_url",
        "model",
        "messages",
        "temperature",
        "max_tokens",
        "output_schema",
        "prompt_parts",
        "max_validation_retries",
        "extra_body",  # server-specific parameters sent as is (seed, top_k, repeat_penalty...)
        "max_tokens_limit",  # a cut structured answer is re-asked with up to this budget
    }
)

#: Fields that never enter the key, each for a reason.
NOT_KEY_FIELDS = frozenset(
    {
        "agent",  # the agent's name: its prompt parts and model are in the key already
        "item_id",  # a label for run names; the same prompt under two ids is one answer
        "output_type",  # a Python class; its JSON schema is output_schema
        "timeout_seconds",  # how long to wait, not what is asked
        "retry",  # the retry budget: how hard to try, not what is asked
        "input_price_per_million",  # accounting only
        "output_price_per_million",  # accounting only
        "batch_input_price_per_million",  # accounting only
        "batch_output_price_per_million",  # accounting only
        "tags",  # UI labels
        # how the schema is asked for (response_format style); the answer is validated
        # against output_schema whatever the style, and `auto` may change it mid-run
        "structured_output",
        # what to do with an input over the context, and that context: decided before the
        # call; a cut or chunked input is sent as other messages, which are keyed
        "long_inputs",
        "context_tokens",
        "truncated",  # a label: the messages sent were cut to fit (they are keyed)
        "log_call",  # whether the call's success is logged at INFO: how it is told, not asked
    }
)

#: What a call does with an input over its context (``long_inputs``).
LONG_INPUTS = ("fail", "truncate", "chunk")


class CallRequest(BaseModel):
    """One agent call, fully resolved: endpoint URL, model, messages and settings.

    It never holds an API key or a client object; those travel separately and
    are never part of the cache key.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    agent: str
    item_id: str | None = None
    base_url: str
    model: str
    messages: list[dict[str, str]]
    temperature: float | None = None
    max_tokens: int | None = None
    max_tokens_limit: int | None = None
    extra_body: dict[str, Any] = Field(default_factory=dict)
    structured_output: str = "auto"
    output_schema: dict[str, Any] | None = None
    output_type: type[BaseModel] | None = Field(default=None, exclude=True)
    prompt_parts: dict[str, Any] = Field(default_factory=dict)
    max_validation_retries: int = 2
    timeout_seconds: float = 120.0
    retry: RetryOptions = Field(default_factory=RetryOptions)
    input_price_per_million: float | None = None
    output_price_per_million: float | None = None
    batch_input_price_per_million: float | None = None
    batch_output_price_per_million: float | None = None
    tags: tuple[str, ...] = ()
    long_inputs: str = "fail"
    context_tokens: int | None = None
    truncated: bool = False
    log_call: bool = False

    @property
    def label(self) -> str:
        """A readable name for run names and logs: ``agent`` or ``agent:item``."""
        return f"{self.agent}:{self.item_id}" if self.item_id else self.agent

    @property
    def prompt(self) -> str:
        """The text of the last user message."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message.get("content", "")
        return ""

    def cache_key(self) -> str:
        """A hash of canonical JSON of the fields that determine the answer.

        The base URL is keyed in its normal form (:func:`normal_base_url`), so
        ``.../v1`` and ``.../v1/``, or ``localhost`` and ``127.0.0.1``, share answers.
        """
        payload = {name: getattr(self, name) for name in sorted(KEY_FIELDS)}
        payload["base_url"] = normal_base_url(self.base_url)
        payload["version"] = CACHE_KEY_VERSION
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "fanout-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def with_context(self, context: Mapping[str, Any] | None) -> CallRequest:
        """The request with upstream results appended to its user message.

        The format (documented in the README) is, for each upstream id in order::

            ## Upstream results
            ### <task_id>
            <output: text as is, structured output as JSON>

        Args:
            context: Upstream outputs by id (``AgentResult`` objects or plain values).

        Returns:
            A new request, or this one when there is no context.

        """
        if not context:
            return self
        block = render_context(context)
        messages = [dict(m) for m in self.messages]
        for message in reversed(messages):
            if message.get("role") == "user":
                message["content"] = f"{message['content']}\n\n{block}"
                break
        else:
            messages.append({"role": "user", "content": block})
        return self.model_copy(update={"messages": messages})


_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normal_base_url(url: str) -> str:
    """A base URL in the form the cache keys: what is safe to normalise, normalised.

    Lower-case scheme and host, no default port, no trailing slash, and the
    loopback names (``localhost``, ``::1``) written ``127.0.0.1``. The path keeps
    its case; anything unparsable is returned as given.
    """
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return url
    if not parts.scheme or not host:
        return url
    scheme = parts.scheme.lower()
    if host in _LOOPBACK:
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if parts.username or parts.password:
        netloc = f"{parts.username or ''}{':***' if parts.password else ''}@{netloc}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def output_as_text(output: Any) -> str:
    """An output as prompt text: strings as they are, anything else as JSON."""
    if hasattr(output, "output") and hasattr(output, "raw_text"):  # an AgentResult
        output = output.output
    if isinstance(output, str):
        return output
    if isinstance(output, BaseModel):
        return output.model_dump_json()
    return json.dumps(output, sort_keys=True, ensure_ascii=False, default=str)


def render_context(context: Mapping[str, Any]) -> str:
    """Upstream outputs as the documented ``## Upstream results`` block."""
    parts = ["## Upstream results"]
    for upstream_id, value in context.items():
        parts.append(f"### {upstream_id}\n{output_as_text(value)}")
    return "\n\n".join(parts)
