"""``.fanout.lock``: one run at a time in an output directory.

An ``flock`` on a small file: the operating system releases it when the holder
ends, however it ends, so a killed run never blocks its rerun. The holder
writes its process id and flow run id into the file, so a refused run can name it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "DirectoryLock", "lock_holder"]

LOCK_NAME = ".fanout.lock"


def _describe(info: dict[str, Any]) -> str:
    run = info.get("flow_run_id")
    where = f"pid {info.get('pid')} on {info.get('host')}"
    return f"flow run {run} ({where})" if run else f"a run not yet started ({where})"


def lock_holder(directory: Path) -> str | None:
    """Who holds the directory's lock right now, or None when nobody does (holds nothing)."""
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(_read(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class DirectoryLock:
    """The exclusive lock of one output directory, held by this process until released."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    def acquire(self, flow_run_id: str | None) -> str | None:
        """Take the lock without waiting.

        Returns:
            None when taken; otherwise who holds it.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            os.close(fd)
            return holder
        info = {"pid": os.getpid(), "host": socket.gethostname(), "flow_run_id": flow_run_id}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        """Release the lock (the file stays: deleting it would race a waiting acquirer)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
