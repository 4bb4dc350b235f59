"""Atomic output files: JSON and JSONL written to a temp file, then renamed into place.

A reader (or a rerun after a crash) sees either the previous file or the new
one, never half of one: the data goes to a hidden temp file in the same
directory, is flushed to disk, and replaces the target with ``os.replace``.
Temp files left by a killed process end in :data:`TEMP_SUFFIX` and are removed
by :func:`remove_stale_temp_files`.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from prefect_fanout.redact import redact

__all__ = [
    "TEMP_SUFFIX",
    "jsonable",
    "remove_stale_temp_files",
    "write_json_atomic",
    "write_jsonl_atomic",
    "write_text_atomic",
]

TEMP_SUFFIX = ".fanout-tmp"


def jsonable(value: Any) -> Any:
    """A JSON-ready form of an agent output: models are dumped, the rest passes through."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _dumps(value: Any, indent: int | None = None) -> str:
    text = json.dumps(jsonable(value), ensure_ascii=False, indent=indent, default=_default)
    return redact(text)  # no known key ever reaches an output or trace file


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return str(value)


def _write_atomic(path: Path, write: Any) -> Path:
    """Run ``write(handle)`` on a temp file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_name = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")
    # os.open with 0o666 honours the umask, unlike mkstemp's private 0o600.
    fd = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically.

    Args:
        path: The target file; its directory is created if missing.
        text: The content.

    Returns:
        The path written.

    Raises:
        OSError: The file could not be written or renamed into place (e.g. a
            directory stands at ``path``); the target is left as it was.

    """
    return _write_atomic(Path(path), lambda handle: handle.write(text))


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """Write one JSON document (indented, UTF-8) to ``path`` atomically.

    Args:
        path: The target file.
        value: Anything JSON-serialisable; pydantic models are dumped.

    Returns:
        The path written.

    """
    return write_text_atomic(path, _dumps(value, indent=2) + "\n")


def write_jsonl_atomic(path: str | Path, rows: Iterable[Any]) -> Path:
    """Write one JSON document per line to ``path`` atomically.

    Args:
        path: The target file.
        rows: The documents, in order; streamed, never joined in memory.

    Returns:
        The path written.

    """

    def write(handle: IO[str]) -> None:
        for row in rows:
            handle.write(_dumps(row))
            handle.write("\n")

    return _write_atomic(Path(path), write)


def remove_stale_temp_files(directory: str | Path) -> int:
    """Delete temp files that a killed writer left in ``directory`` (not recursive).

    Returns:
        How many files were removed.

    """
    removed = 0
    folder = Path(directory)
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
            try:
                entry.unlink()
                removed += 1
            except OSError:
                pass
    return removed
