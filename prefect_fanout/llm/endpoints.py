"""LLM endpoints: where agent calls go, and how a call finds its endpoint."""

from __future__ import annotations

import os
import threading
from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, ValidationInfo, field_validator

from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.styles import check_style
from prefect_fanout.redact import register_secret

LOGO_URL = "https://raw.githubusercontent.com/PrefectHQ/prefect/main/docs/images/logos/prefect-logo-mark-solid-white-500.png"
DOCS_URL = "https://docs.prefect.io/v3/develop/blocks"


OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"


def is_openai(base_url: str) -> bool:
    """True when ``base_url`` is OpenAI's own API (not a compatible server elsewhere)."""
    return base_url.rstrip("/") == OPENAI_BASE_URL


#: Placeholder key for OpenAI-compatible servers that need none (Ollama, vLLM, ...).
NO_KEY = "not-needed"


class LLMEndpoint(Block):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LM Studio, ...).

    ``max_concurrency``, ``requests_per_minute`` and ``tokens_per_minute`` hold for
    every call to the endpoint, across threads, flows and processes that share a
    Prefect server (:mod:`prefect_fanout.limits`); each must be above 0, or unset
    for no limit.
    """

    _block_type_name: ClassVar[str] = "Fanout LLM Endpoint"
    _block_type_slug: ClassVar[str] = "fanout-llm-endpoint"
    _logo_url: ClassVar[str] = LOGO_URL
    _documentation_url: ClassVar[str] = DOCS_URL
    _code_example: ClassVar[str] = (
        "```python\n"
        "from prefect_fanout import LLMEndpoint\n\n"
        'endpoint = LLMEndpoint.load("BLOCK_NAME")\n'
        "```"
    )

    base_url: str = Field(
        default=OPENAI_BASE_URL, description="Base URL of the API, ending in /v1."
    )
    api_key: SecretStr | None = Field(
        default=None, description="API key; servers that need none may leave it empty."
    )
    organization: str | None = Field(default=None, description="OpenAI organization id, if any.")
    default_model: str | None = Field(
        default=None, description="Model used by agents that name none."
    )
    request_timeout_seconds: float | None = Field(
        default=None, description="Timeout of one HTTP request; None defers to the agent's."
    )
    max_concurrency: int | None = Field(
        default=None,
        description="Most requests in flight at once to this endpoint, across processes.",
    )
    structured_output: str = Field(
        default="auto",
        description=(
            "How structured answers are asked for: auto (json_schema, falling back once on "
            "a 4xx/5xx naming response_format), json_schema (OpenAI, vLLM, llama-server), "
            "json_object+schema (llama-cpp-python), json_object, or none (prompt only)."
        ),
    )
    merge_system_prompt: bool = Field(
        default=False,
        description="Merge the system prompt into the first user message (no system role).",
    )
    requests_per_minute: int | None = Field(
        default=None, description="Requests started per minute (spread evenly), across processes."
    )
    tokens_per_minute: int | None = Field(
        default=None,
        description="Tokens per minute (estimated before each request, corrected after).",
    )
    context_tokens: int | None = Field(
        default=None,
        description=(
            "Tokens one request may fill (prompt and answer); None reads it from the server "
            "where it says (llama.cpp's /props, vLLM's /v1/models), else it is unknown."
        ),
    )

    _check_style = field_validator("structured_output")(check_style)

    @field_validator("api_key")
    @classmethod
    def _remember_key(cls, value: SecretStr | None) -> SecretStr | None:
        """Register the key for redaction as soon as an endpoint holds it."""
        if value is not None:
            register_secret(value.get_secret_value())
        return value

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in another process (a Dask or Ray worker): register the key there too.

        Validators do not run when a model is unpickled, so without this a worker would
        log an echoed key unmasked.
        """
        super().__setstate__(state)
        if self.api_key is not None:
            register_secret(self.api_key.get_secret_value())

    @field_validator(
        "max_concurrency", "requests_per_minute", "tokens_per_minute", "context_tokens"
    )
    @classmethod
    def _check_limit(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(
                f"{info.field_name} must be greater than 0, got {value}; set a positive "
                "number or leave it unset (None) for no limit"
            )
        return value

    def key_value(self) -> str:
        """The API key in clear, or a placeholder for keyless servers."""
        value = self.api_key.get_secret_value() if self.api_key else NO_KEY
        register_secret(value if value != NO_KEY else None)  # masked everywhere
        return value


_loaded: dict[str, LLMEndpoint] = {}
_loaded_lock = threading.Lock()


def endpoint_from_env() -> LLMEndpoint | None:
    """An endpoint from the OpenAI client's own variables, or None when neither is set."""
    key = os.environ.get("OPENAI_API_KEY")
    base = os.environ.get("OPENAI_BASE_URL")
    if not key and not base:
        return None
    return LLMEndpoint(
        base_url=base or OPENAI_BASE_URL,
        api_key=SecretStr(key) if key else None,
        organization=os.environ.get("OPENAI_ORG_ID"),
    )


def resolve_endpoint(endpoint: str | LLMEndpoint | None = None) -> LLMEndpoint:
    """Find the endpoint a call should use.

    Order: an explicit endpoint (a block name or an object); then the OpenAI
    client's environment variables ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``.

    Args:
        endpoint: A saved ``LLMEndpoint`` block's name, an endpoint object, or None.

    Returns:
        The endpoint.

    Raises:
        ConfigurationError: Nothing is configured, or the named block does not exist.

    """
    if isinstance(endpoint, LLMEndpoint):
        return endpoint
    if isinstance(endpoint, str) and endpoint:
        with _loaded_lock:
            if endpoint in _loaded:
                return _loaded[endpoint]
        try:
            block = LLMEndpoint.load(endpoint, validate=True)
        except Exception as exc:
            raise ConfigurationError(
                f"no LLMEndpoint block named {endpoint!r} could be loaded ({exc}). Create it "
                "with `python blocks/create_blocks.py` or LLMEndpoint(...).save(name)."
            ) from None
        with _loaded_lock:
            _loaded[endpoint] = block  # type: ignore[assignment]
        return block  # type: ignore[return-value]
    from_env = endpoint_from_env()
    if from_env is not None:
        return from_env
    raise ConfigurationError(
        "no LLM endpoint is configured. Use one of: (1) pass an endpoint, e.g. "
        "--endpoint BLOCK_NAME or endpoint=LLMEndpoint(base_url=..., api_key=...); "
        "(2) save an LLMEndpoint block (python blocks/create_blocks.py) and name it; "
        "(3) set OPENAI_API_KEY (and OPENAI_BASE_URL for an OpenAI-compatible server). "
        "For an offline dry run use the built-in model: --model test or FANOUT_MODEL=test."
    )
