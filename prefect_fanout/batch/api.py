"""The Batch API on the wire: files and batches through the ``openai`` client, no Prefect.

Every OpenAI-compatible provider with ``/v1/files`` and ``/v1/batches`` (OpenAI, Azure
OpenAI, Groq, Together, Mistral...) is spoken to the same way: upload a JSONL file with
``files.create(purpose="batch")``, create a batch over it with ``batches.create``, read it
with ``batches.retrieve``, download its output and error files with ``files.content``.
Batches are handed around as plain dicts (the API's JSON), so they pickle and log simply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai

from prefect_fanout.llm.endpoints import LLMEndpoint

__all__ = [
    "COMPLETION_WINDOW",
    "ENDPOINT",
    "FINAL",
    "IN_FLIGHT",
    "BatchAPI",
]

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
IN_FLIGHT = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
"""Statuses of a batch that has not ended."""
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
"""Statuses of a batch that has ended."""

#: Retries of the client's own for uploads and creation (polls retry as Prefect tasks).
CLIENT_RETRIES = 3


class BatchAPI:
    """One endpoint's Batch API.

    Args:
        endpoint: The endpoint (base URL and key; the key is never logged).
    """

    def __init__(self, endpoint: LLMEndpoint) -> None:
        self.endpoint = endpoint
        self._client: openai.OpenAI | None = None

    @property
    def client(self) -> openai.OpenAI:
        """The ``openai`` client of the endpoint (made on first use)."""
        if self._client is None:
            self._client = openai.OpenAI(
                base_url=self.endpoint.base_url,
                api_key=self.endpoint.key_value(),
                organization=self.endpoint.organization,
                max_retries=CLIENT_RETRIES,
            )
        return self._client

    def probe(self) -> None:
        """Ask ``GET /files?purpose=batch`` and ``GET /batches`` once each (one item).

        Raises:
            openai.APIError: The endpoint has no Batch API or cannot be reached.
        """
        self.client.files.list(purpose="batch", limit=1)
        self.client.batches.list(limit=1)

    def upload(self, path: Path) -> str:
        """Upload an input file (``purpose="batch"``); return its file id."""
        with path.open("rb") as handle:
            uploaded = self.client.files.create(file=(path.name, handle), purpose="batch")
        return uploaded.id

    def create(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """Create a batch of chat completions over an uploaded file, in the 24 h window."""
        batch = self.client.batches.create(
            input_file_id=input_file_id,
            endpoint=ENDPOINT,
            completion_window=COMPLETION_WINDOW,
            metadata=metadata,
        )
        return batch.model_dump(mode="json")

    def retrieve(self, batch_id: str) -> dict[str, Any]:
        """The batch as the provider has it now."""
        return self.client.batches.retrieve(batch_id).model_dump(mode="json")

    def find(self, input_file_id: str, newest: int = 100) -> dict[str, Any] | None:
        """The newest batch created over ``input_file_id``, among the ``newest`` batches."""
        for batch in self.client.batches.list(limit=newest).data:
            if batch.input_file_id == input_file_id:
                return batch.model_dump(mode="json")
        return None

    def lines(self, file_id: str | None) -> Iterator[dict[str, Any]]:
        """The JSON lines of an output, error or input file (none for no file)."""
        if not file_id:
            return
        content = self.client.files.content(file_id)
        for raw in content.text.splitlines():
            if raw.strip():
                yield json.loads(raw)
