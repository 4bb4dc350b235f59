"""Small helpers shared by the map tests: unique tags and JSONL files."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any


def tag() -> str:
    """A short unique token: the cache and the fake server live for the whole session."""
    return uuid.uuid4().hex[:10]


def write_corpus(path: Path, records: list[dict[str, Any]]) -> Path:
    """Write records as a JSONL corpus and return its path."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file into a list of objects."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def endpoint_for(fake: Any, **fields: Any) -> Any:
    """An ``LLMEndpoint`` at the fake OpenAI server ``fake``, with a test key."""
    from pydantic import SecretStr

    from prefect_fanout.llm.endpoints import LLMEndpoint

    return LLMEndpoint(base_url=fake.base_url, api_key=SecretStr("sk-local"), **fields)


def family(flow_run_id: str) -> dict[str, Any]:
    """A ``flow_runs`` filter body: the flow run and its child flow runs (a map's partitions)."""
    ids = {"any_": [str(flow_run_id)]}
    return {"operator": "or_", "id": ids, "parent_flow_run_id": ids}


def family_filter(flow_run_id: str) -> Any:
    """The same as a Prefect client ``FlowRunFilter``."""
    from prefect.client.schemas.filters import FlowRunFilter

    return FlowRunFilter.model_validate(family(flow_run_id))


def uid() -> str:
    """A longer unique token (12 hex digits), for names that must not repeat in a session."""
    return uuid.uuid4().hex[:12]
