"""Trace files of a dispatch: one JSON file per task and one index per run.

With ``trace_dir`` set, a dispatch writes

- ``{trace_dir}/{task_id}.json`` for every task as soon as its outcome is known
  (input, rendered prompt and messages, output, agent, model, timing, usage,
  every agent attempt, error), and
- ``{trace_dir}/dispatch-{timestamp}.json`` at the end: the flow run id as the
  correlation id, the task definitions, the status summary and the paths of
  the task traces.

Every file is written atomically (a temporary file in the same directory, then
``os.replace``), so a reader never sees half a file. Task ids that are not
safe file names (``/``, spaces, ``..``) are rewritten with ``_``; the index
records the actual path of every task's trace.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect_fanout.files import write_json_atomic

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
MAX_STEM = 100
"""Characters of an id kept in a trace file name that is not the id itself (then a hash)."""


def trace_file_names(task_ids: Iterable[str]) -> dict[str, str]:
    """Choose a safe, unique file name for each task's trace.

    Args:
        task_ids: The plan's task ids.

    Returns:
        ``task_id -> "<name>.json"``; safe ids keep their name, others have
        unsafe characters replaced by ``_`` and, on a clash, a ``-2``, ``-3``...
        suffix; a long one is cut to :data:`MAX_STEM` characters plus a hash of the
        whole id, so every name fits a file system's 255-byte limit. Names never
        start with ``dispatch-`` (reserved for indexes).

    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    ids = list(task_ids)
    for task_id in ids:  # safe ids first: they keep their exact name
        if _is_safe(task_id):
            names[task_id] = f"{task_id}.json"
            taken.add(task_id.lower())
    for task_id in ids:
        if task_id in names:
            continue
        stem = _UNSAFE.sub("_", task_id).strip(".") or "task"
        if stem.startswith("dispatch-"):
            stem = "task-" + stem
        if len(stem) > MAX_STEM:  # bounded, still unique by the id's hash
            digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
            stem = f"{stem[:MAX_STEM]}-{digest}"
        candidate, number = stem, 1
        while candidate.lower() in taken:
            number += 1
            candidate = f"{stem}-{number}"
        taken.add(candidate.lower())
        names[task_id] = f"{candidate}.json"
    return names


def _is_safe(task_id: str) -> bool:
    return (
        not _UNSAFE.search(task_id)
        and not task_id.startswith(".")
        and not task_id.startswith("dispatch-")
        and len(task_id) <= 200
    )


def index_file_name(now: datetime | None = None) -> str:
    """The name of a run's index: ``dispatch-YYYYmmddTHHMMSS-ffffffZ.json`` (UTC)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"dispatch-{moment.strftime('%Y%m%dT%H%M%S-%f')}Z.json"


def iso(timestamp: float | None) -> str | None:
    """A Unix timestamp as an ISO 8601 UTC string (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def write_index(
    trace_dir: Path,
    *,
    flow_run_id: str | None,
    status: str,
    summary: dict[str, Any],
    usage: dict[str, Any],
    config: dict[str, Any],
    tasks: list[dict[str, Any]],
    started: float,
    finished: float,
) -> Path:
    """Write the run's ``dispatch-{timestamp}.json`` index.

    Args:
        trace_dir: The trace directory.
        flow_run_id: The flow run id, recorded as ``correlation_id``.
        status: The dispatch status.
        summary: Task counts.
        usage: Tokens and cost.
        config: The effective run settings.
        tasks: One entry per task: its definition, status and trace path.
        started: Unix time the dispatch started.
        finished: Unix time it ended.

    Returns:
        The index path.

    """
    index = {
        "correlation_id": flow_run_id,
        "flow_run_id": flow_run_id,
        "status": status,
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_s": round(finished - started, 6),
        "config": config,
        "summary": summary,
        "usage": usage,
        "tasks": tasks,
        "traces": [entry["trace"] for entry in tasks if entry.get("trace")],
    }
    return write_json_atomic(trace_dir / index_file_name(), index)
