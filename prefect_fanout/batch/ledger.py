"""Every batch of a map, recorded as soon as it exists, so a rerun finds it.

The record is ``OUTPUT/batches/batches.json`` (written atomically after every change) and,
best effort, a Prefect variable ``fanout-batches-HASH`` (HASH: of the output directory) with
each batch's id, input file id and status, visible in Prefect's UI. An entry is written when
its input file is uploaded (before the batch is created) and again once the batch exists,
so a run killed between the two still leads the rerun to it (see
:meth:`~prefect_fanout.batch.api.BatchAPI.find`). A rerun waits for the entries not yet
collected instead of creating and paying for new batches.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from prefect_fanout.bounded import call_within
from prefect_fanout.files import write_json_atomic

__all__ = ["BATCH_DIR", "BatchEntry", "BatchLedger"]

BATCH_DIR = "batches"
"""The batch files' directory inside the output directory."""
LEDGER_FILE = "batches.json"
VARIABLE_WAIT_SECONDS = 5.0

logger = logging.getLogger("prefect_fanout.batch")


class BatchEntry(BaseModel):
    """One batch (or an input file on its way to becoming one).

    Attributes:
        input_file: The input file, relative to the output directory.
        input_file_id: The uploaded file's id, once uploaded.
        batch_id: The batch's id, once created.
        requests: Lines in the input file.
        tokens: Their estimated prompt tokens.
        status: The batch's last known status (``uploaded`` before it exists).
        request_counts: The provider's ``total`` / ``completed`` / ``failed``.
        errors: The provider's errors of a failed batch (``code: message``).
        collected: True once every line's outcome was taken in (answers stored).
        replaced_by: The batch that re-sent this one's lines (a rejected batch).
        created_at: When the entry was made (UTC, ISO 8601).
    """

    input_file: str
    input_file_id: str | None = None
    batch_id: str | None = None
    requests: int = 0
    tokens: int = 0
    status: str = "uploaded"
    request_counts: dict[str, int] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)
    collected: bool = False
    replaced_by: str | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def open(self) -> bool:
        """True while the entry's lines still wait for this batch."""
        return not self.collected and self.replaced_by is None


class BatchLedger:
    """The batches of one output directory.

    Args:
        output_dir: The map's output directory.
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.directory = output_dir / BATCH_DIR
        self.path = self.directory / LEDGER_FILE
        digest = hashlib.sha256(str(output_dir.resolve()).encode()).hexdigest()[:16]
        self.variable = f"fanout-batches-{digest}"
        self.entries: list[BatchEntry] = []
        if self.path.is_file():
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self.entries = [BatchEntry.model_validate(e) for e in data.get("batches", [])]

    def open_entries(self) -> list[BatchEntry]:
        """Entries whose lines still wait for their batch (in flight, or not yet collected)."""
        return [entry for entry in self.entries if entry.open]

    def add(self, entry: BatchEntry) -> BatchEntry:
        """Record a new entry (saved at once)."""
        self.entries.append(entry)
        self.save()
        return entry

    def save(self) -> None:
        """Write the record file atomically, then the Prefect variable (best effort)."""
        write_json_atomic(
            self.path,
            {"batches": [entry.model_dump(mode="json") for entry in self.entries]},
        )
        value: dict[str, Any] = {
            "output_dir": str(self.output_dir.resolve()),
            "batches": [
                {"batch_id": e.batch_id, "input_file_id": e.input_file_id, "status": e.status}
                for e in self.entries
            ],
        }
        try:
            call_within(
                VARIABLE_WAIT_SECONDS, "the batch variable", _set_variable, self.variable, value
            )
        except Exception as exc:  # the file is the record; the variable is for the UI
            logger.debug("could not set Prefect variable %s: %s", self.variable, exc)

    def keys(self, entry: BatchEntry) -> list[str]:
        """The ``custom_id`` of each line of an entry's input file (read from the file)."""
        path = self.output_dir / entry.input_file
        return [
            json.loads(raw)["custom_id"]
            for raw in path.read_text(encoding="utf-8").splitlines()
            if raw.strip()
        ]


def _set_variable(name: str, value: dict[str, Any]) -> None:
    from prefect.variables import Variable

    Variable.set(name, value, overwrite=True)
