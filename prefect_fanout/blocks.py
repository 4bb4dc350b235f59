"""The Prefect block types of prefect-fanout, and the named block documents a setup needs.

This module is what Prefect loads to find the block types:

- ``prefect block register -m prefect_fanout.blocks`` registers
  :class:`~prefect_fanout.llm.endpoints.LLMEndpoint` (slug ``fanout-llm-endpoint``) and
  :class:`~prefect_fanout.agents.profiles.AgentProfile` (slug ``fanout-agent-profile``);
- the ``prefect.collections`` entry point names it, so every Prefect process (a
  server, a worker, the CLI) knows both types without further imports.

:func:`create_blocks` saves the documents that flows and plans refer to by name:
the ``openai`` and ``local`` endpoints and the built-in agent profiles. Saving
overwrites, so running it twice updates the documents instead of duplicating them.
``blocks/create_blocks.py`` is its command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import SecretStr

from prefect_fanout.agents.profiles import BUILTIN_PROFILES, AgentProfile
from prefect_fanout.llm.endpoints import DEFAULT_MODEL, NO_KEY, OPENAI_BASE_URL, LLMEndpoint

__all__ = [
    "AgentProfile",
    "BlockChange",
    "DEFAULT_LOCAL_BASE_URL",
    "DEFAULT_LOCAL_MODEL",
    "LLMEndpoint",
    "LOCAL_ENDPOINT_NAME",
    "OPENAI_ENDPOINT_NAME",
    "create_blocks",
    "local_endpoint",
    "openai_endpoint",
]

#: Name of the endpoint document for OpenAI itself.
OPENAI_ENDPOINT_NAME = "openai"
#: Name of the endpoint document for an OpenAI-compatible server on this machine.
LOCAL_ENDPOINT_NAME = "local"
#: Where the ``local`` endpoint points unless FANOUT_LOCAL_BASE_URL says otherwise (Ollama).
DEFAULT_LOCAL_BASE_URL = "http://127.0.0.1:11434/v1"
#: Default model of the ``local`` endpoint unless FANOUT_LOCAL_MODEL says otherwise.
DEFAULT_LOCAL_MODEL = "llama3.2"

Action = Literal["created", "updated", "skipped"]


@dataclass(frozen=True)
class BlockChange:
    """What :func:`create_blocks` did with one block document.

    Attributes:
        block_type: The block type's slug.
        name: The document's name.
        action: ``created``, ``updated`` or ``skipped``.
        detail: A secret-free note (where an endpoint points, why it was skipped).
    """

    block_type: str
    name: str
    action: Action
    detail: str = ""

    def __str__(self) -> str:
        note = f" ({self.detail})" if self.detail else ""
        return f"{self.action:<8} {self.block_type}/{self.name}{note}"


def openai_endpoint(env: Mapping[str, str] | None = None) -> LLMEndpoint | None:
    """The ``openai`` endpoint described by the environment, or None without a key.

    Reads ``OPENAI_API_KEY`` (required), ``OPENAI_BASE_URL``, ``OPENAI_ORG_ID`` and
    ``FANOUT_OPENAI_MODEL`` (the endpoint's default model, ``gpt-4o-mini`` if unset).

    Args:
        env: The variables to read; ``os.environ`` when None.

    Returns:
        The endpoint, or None when ``OPENAI_API_KEY`` is unset or empty.
    """
    env = os.environ if env is None else env
    key = env.get("OPENAI_API_KEY")
    if not key:
        return None
    return LLMEndpoint(
        base_url=env.get("OPENAI_BASE_URL") or OPENAI_BASE_URL,
        api_key=SecretStr(key),
        organization=env.get("OPENAI_ORG_ID") or None,
        default_model=env.get("FANOUT_OPENAI_MODEL") or DEFAULT_MODEL,
    )


def local_endpoint(env: Mapping[str, str] | None = None) -> LLMEndpoint:
    """The ``local`` endpoint: an OpenAI-compatible server on this machine.

    Reads ``FANOUT_LOCAL_BASE_URL`` (default ``http://127.0.0.1:11434/v1``, Ollama),
    ``FANOUT_LOCAL_MODEL`` (default ``llama3.2``) and ``FANOUT_LOCAL_API_KEY``
    (servers such as Ollama need none).

    Args:
        env: The variables to read; ``os.environ`` when None.

    Returns:
        The endpoint.
    """
    env = os.environ if env is None else env
    key = env.get("FANOUT_LOCAL_API_KEY")
    return LLMEndpoint(
        base_url=env.get("FANOUT_LOCAL_BASE_URL") or DEFAULT_LOCAL_BASE_URL,
        api_key=SecretStr(key) if key and key != NO_KEY else None,
        default_model=env.get("FANOUT_LOCAL_MODEL") or DEFAULT_LOCAL_MODEL,
    )


def _exists(block_cls: type[LLMEndpoint] | type[AgentProfile], name: str) -> bool:
    try:
        block_cls.load(name, validate=False)
    except ValueError:  # Prefect's "Unable to find block document named ..."
        return False
    return True


def _save(block: LLMEndpoint | AgentProfile, name: str, detail: str) -> BlockChange:
    existed = _exists(type(block), name)
    block.save(name, overwrite=True)
    return BlockChange(
        block_type=block.get_block_type_slug(),
        name=name,
        action="updated" if existed else "created",
        detail=detail,
    )


def create_blocks(
    env: Mapping[str, str] | None = None,
    *,
    endpoints: bool = True,
    profiles: bool = True,
) -> list[BlockChange]:
    """Save (or update) the named block documents on the current Prefect API.

    - ``openai`` (LLMEndpoint) from ``OPENAI_API_KEY``; skipped when it is unset;
    - ``local`` (LLMEndpoint) from ``FANOUT_LOCAL_BASE_URL`` (see :func:`local_endpoint`);
    - ``default``, ``coder``, ``debug`` (AgentProfile): the built-in profiles.

    Every save overwrites a document of the same name, so a second run updates the
    documents in place and never creates duplicates.

    Args:
        env: The variables to read; ``os.environ`` when None.
        endpoints: Save the endpoint documents.
        profiles: Save the agent profile documents.

    Returns:
        One :class:`BlockChange` per document, in the order handled.
    """
    env = os.environ if env is None else env
    changes: list[BlockChange] = []
    if endpoints:
        remote = openai_endpoint(env)
        if remote is None:
            changes.append(
                BlockChange(
                    LLMEndpoint.get_block_type_slug(),
                    OPENAI_ENDPOINT_NAME,
                    "skipped",
                    "OPENAI_API_KEY is not set",
                )
            )
        else:
            changes.append(_save(remote, OPENAI_ENDPOINT_NAME, remote.base_url))
        local = local_endpoint(env)
        changes.append(
            _save(local, LOCAL_ENDPOINT_NAME, f"{local.base_url}, model {local.default_model}")
        )
    if profiles:
        for name in sorted(BUILTIN_PROFILES):
            profile = BUILTIN_PROFILES[name].model_copy()
            changes.append(_save(profile, name, f"agent {profile.name}"))
    return changes
