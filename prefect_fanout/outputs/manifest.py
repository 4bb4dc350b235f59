"""``.fanout-manifest.json``: the files fanout wrote in an output directory, and by which run.

The manifest maps each file's path relative to the directory (``final.jsonl``,
``partitions/partition-0001.jsonl``) to the flow run that last wrote it. A run
records its targets *before* writing them, so a run killed half-way still owns
what it left behind and its rerun may replace it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from prefect_fanout.files import TEMP_SUFFIX, write_json_atomic

__all__ = ["MANIFEST_NAME", "is_internal", "read_manifest", "write_manifest"]

MANIFEST_NAME = ".fanout-manifest.json"
VERSION = 1


#: Batch mode's own records (``batches/batches.json``, ``batches/input-0001.jsonl``...): they
#: are written before the run's outputs and outlive a run that stops while batches run.
BATCH_RECORDS = re.compile(r"batches/(batches\.json|input-\d{4,}\.jsonl)")


def is_internal(relative: str) -> bool:
    """True for fanout's own bookkeeping: the manifest, the lock, probes, temp files, batches."""
    name = relative.rsplit("/", 1)[-1]
    if BATCH_RECORDS.fullmatch(relative):
        return True
    return name.startswith(".fanout") or (name.startswith(".") and name.endswith(TEMP_SUFFIX))


def read_manifest(directory: Path) -> dict[str, str | None]:
    """The files fanout wrote in ``directory`` (relative path -> flow run id); {} when none.

    An unreadable or malformed manifest counts as none: the files are then not
    fanout's, and a run refuses them unless forced.
    """
    try:
        data = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        return {}
    return {str(k): (str(v) if v is not None else None) for k, v in files.items()}


def write_manifest(
    directory: Path,
    add: Iterable[str] = (),
    remove: Iterable[str] = (),
    run_id: str | None = None,
) -> dict[str, str | None]:
    """Record files as written by ``run_id`` (and forget others), atomically.

    Returns:
        The manifest as written.
    """
    files = read_manifest(directory)
    for name in remove:
        files.pop(name, None)
    for name in add:
        files[name] = run_id
    write_json_atomic(
        directory / MANIFEST_NAME, {"version": VERSION, "files": dict(sorted(files.items()))}
    )
    return files
