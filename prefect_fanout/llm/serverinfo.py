"""What an OpenAI-compatible server says about itself: its context length and its tokenizer.

Two servers tell their context length over HTTP, each in its own place:

- llama.cpp's ``llama-server``: ``GET /props`` (at the server's root, beside ``/v1``) carries
  ``default_generation_settings.n_ctx``, the context of one slot (the server's ``--ctx-size``
  divided by ``--parallel``), which is what one request may fill;
- vLLM: each model of ``GET /v1/models`` carries ``max_model_len``.

``llama-server`` also counts tokens: ``POST /tokenize`` with ``{"content": TEXT}`` answers
``{"tokens": [...]}`` in the model's own tokenizer. Each question is asked once per base URL
and process; a server that answers neither (OpenAI, Ollama, the test server) is remembered
as not knowing, and the caller falls back (see :mod:`prefect_fanout.agents.context`).
"""

from __future__ import annotations

import threading
from typing import Any

from prefect_fanout.llm.deadline import httpx
from prefect_fanout.llm.endpoints import LLMEndpoint, is_openai

__all__ = ["SERVER_INFO_TIMEOUT", "count_tokens_at_server", "forget_server_info", "server_context"]

SERVER_INFO_TIMEOUT = 5.0
"""Seconds one question about the server may take (a server that does not answer in that
time is treated as one that does not know)."""

_contexts: dict[tuple[str, str], int | None] = {}
_tokenizes: dict[str, bool] = {}
_lock = threading.Lock()


def forget_server_info() -> None:
    """Forget what servers said about themselves (a new run, or a test)."""
    with _lock:
        _contexts.clear()
        _tokenizes.clear()


def server_root(base_url: str) -> str:
    """The server's root URL: the base URL without a trailing ``/v1``."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _headers(endpoint: LLMEndpoint) -> dict[str, str]:
    return {"Authorization": f"Bearer {endpoint.key_value()}"}


def _get_json(url: str, endpoint: LLMEndpoint) -> Any:
    try:
        response = httpx.get(url, headers=_headers(endpoint), timeout=SERVER_INFO_TIMEOUT)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _read_context(endpoint: LLMEndpoint, model: str) -> int | None:
    props = _get_json(server_root(endpoint.base_url) + "/props", endpoint)
    if isinstance(props, dict):
        settings = props.get("default_generation_settings")
        found = _positive(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if found is None:
            found = _positive(props.get("n_ctx"))
        if found is not None:
            return found
    models = _get_json(endpoint.base_url.rstrip("/") + "/models", endpoint)
    data = models.get("data") if isinstance(models, dict) else None
    if not isinstance(data, list):
        return None
    lengths = {
        str(entry.get("id")): _positive(entry.get("max_model_len"))
        for entry in data
        if isinstance(entry, dict)
    }
    if model in lengths:
        return lengths[model]
    known = [length for length in lengths.values() if length is not None]
    return known[0] if len(known) == 1 else None


def server_context(endpoint: LLMEndpoint, model: str) -> int | None:
    """The context length (tokens) the server says one request of ``model`` may fill.

    Asked once per base URL and model in a process; never asked of OpenAI's own API.

    Returns:
        The tokens, or None when the server does not say.
    """
    if is_openai(endpoint.base_url):
        return None
    key = (endpoint.base_url, model)
    with _lock:
        if key in _contexts:
            return _contexts[key]
    found = _read_context(endpoint, model)
    with _lock:
        _contexts[key] = found
    return found


def count_tokens_at_server(endpoint: LLMEndpoint, text: str) -> int | None:
    """The tokens of ``text`` in the server's own tokenizer (``POST /tokenize``), or None.

    A server without ``/tokenize`` is asked once per process.
    """
    base = endpoint.base_url
    if is_openai(base):
        return None
    with _lock:
        if _tokenizes.get(base) is False:
            return None
    try:
        response = httpx.post(
            server_root(base) + "/tokenize",
            json={"content": text},
            headers=_headers(endpoint),
            timeout=SERVER_INFO_TIMEOUT,
        )
        tokens = response.json().get("tokens") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        tokens = None
    with _lock:
        _tokenizes[base] = isinstance(tokens, list)
    return len(tokens) if isinstance(tokens, list) else None
