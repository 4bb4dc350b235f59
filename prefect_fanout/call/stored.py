"""Did an answer reach result storage? Disk-full and unwritable storage, reported once.

Prefect persists a task's result when its transaction commits; if the write
fails (a full disk, a read-only mount) it logs a traceback for that one task
run and the run still ends ``Completed``, leaving a zero-byte record behind. A
run of 250 calls on a full disk printed 250 tracebacks and exited 0.

Here:

- :func:`quiet_commit_errors` drops Prefect's per-call commit tracebacks for
  fanout's own records (keys ``fanout-...``) and keeps the first reason;
- :func:`unstored` checks, after the calls, which answers are not in local
  result storage (missing or empty), removes empty records so nothing
  half-written is left, and returns their ids. The map counts them in its
  summary (``unstored``, ``unstored_ids``) and exit code and logs one line.

Non-local storage (S3, GCS...) is not checked: its records are assumed stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path

from prefect.filesystems import LocalFileSystem

from prefect_fanout.call.cache import CacheMode, CacheOptions, _result_store

__all__ = ["first_commit_error", "quiet_commit_errors", "storage_path", "unstored"]

_COMMIT_ERROR = "An error was encountered while committing transaction 'fanout-"
_reasons: list[str] = []
_guard = threading.Lock()
_installed = False


class _CommitErrorFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if _COMMIT_ERROR not in message:
            return True
        reason = None
        if record.exc_info and record.exc_info[1] is not None:
            reason = str(record.exc_info[1])
        elif record.exc_text:
            reason = record.exc_text.strip().splitlines()[-1]
        with _guard:
            if reason and not _reasons:
                _reasons.append(reason)
        return False


def quiet_commit_errors() -> None:
    """Drop Prefect's per-call tracebacks for fanout records it could not store (once)."""
    global _installed
    with _guard:
        if _installed:
            return
        _installed = True
    for name in ("prefect.task_runs", "prefect.transactions", "prefect"):
        logging.getLogger(name).addFilter(_CommitErrorFilter())


def first_commit_error() -> str | None:
    """The first reason Prefect gave for a record it could not store, if any."""
    with _guard:
        return _reasons[0] if _reasons else None


def storage_path(options: CacheOptions) -> Path | None:
    """The directory of local result storage, or None for other storage."""
    storage = _result_store(options).result_storage
    if not isinstance(storage, LocalFileSystem) or not storage.basepath:
        return None
    return Path(storage.basepath).expanduser()


def unstored(calls: Iterable[tuple[str, str]], options: CacheOptions) -> list[str]:
    """Ids of answered calls whose record is missing or empty in local result storage.

    Empty records (a write cut short) are removed, so a rerun asks again cleanly.

    Args:
        calls: ``(id, cache key)`` of calls answered by the model in this run (not cache
            hits); an answer carries its request's key (``AgentResult.cache_key``).
        options: The calls' cache options (``off`` stores nothing and checks nothing).
    """
    if options.mode is CacheMode.OFF:
        return []
    base = storage_path(options)
    if base is None:
        return []
    missing: list[str] = []
    for call_id, key in calls:
        path = base / key
        try:
            size = path.stat().st_size
        except OSError:
            missing.append(call_id)
            continue
        if size == 0:
            path.unlink(missing_ok=True)
            missing.append(call_id)
    return missing
