"""Call locks that die with their holder.

Prefect's file lock manager writes lock files that never expire unless a hold
timeout is given, so a process killed mid-call (SIGKILL, OOM, a lost machine)
would leave locks that block the rerun for ever. These locks are ``flock``
locks on small files: the operating system drops them when the holding process
ends, however it ends, so a rerun resumes at once. They serialise threads of
one process and processes of one machine alike (each acquisition opens its own
file description).

Lock files do not pile up: the holder deletes the file while it still holds the
lock, just before releasing it. An acquirer that had opened the old file then
holds a lock on a deleted file, so after every acquisition it checks that its
file is still the one at the path (same inode) and starts over if not; two
holders of one key are therefore impossible.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from typing import Any

import anyio
from prefect.locking.protocol import LockManager

POLL_SECONDS = 0.02


class FlockLockManager(LockManager):
    """A Prefect lock manager backed by ``flock`` on files in one directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).expanduser().resolve()
        self._held: dict[str, tuple[str, int]] = {}
        self._guard = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickle as the directory: a Dask or Ray worker gets its process's manager for it.

        Locks held are never sent (a file descriptor means nothing in another
        process); task runs acquire and release within one process.
        """
        return (shared_lock_manager, (str(self.directory),))

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.lock"

    def _open(self, key: str) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o644)

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Take the lock on ``key`` for ``holder``, waiting up to ``acquire_timeout``."""
        with self._guard:
            held = self._held.get(key)
            if held is not None and held[0] == holder:
                return True
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        fd = self._open(key)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(POLL_SECONDS)
                continue
            if self._is_current(fd, key):
                break
            os.close(fd)  # its holder deleted the file as it released: take the new one
            fd = self._open(key)
        with self._guard:
            self._held[key] = (holder, fd)
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: float | None = None,
        hold_timeout: float | None = None,
    ) -> bool:
        """Async :meth:`acquire_lock` (runs in a worker thread)."""
        return await anyio.to_thread.run_sync(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout
        )

    def release_lock(self, key: str, holder: str) -> None:
        """Release the lock; only its holder may. Releasing a lock no one here holds is a no-op.

        Prefect commits a task's transaction again when a parent transaction commits (a
        call run inside a ``map-chunk`` task on a Dask or Ray worker is such a child), and
        each commit releases the lock: the second release finds it already given back, and
        raising then only printed a traceback for a call that had succeeded.

        Raises:
            ValueError: Another holder holds the lock on ``key``.
        """
        with self._guard:
            held = self._held.get(key)
            if held is None:
                return  # released already (see above)
            if held[0] != holder:
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            del self._held[key]
        try:
            self._path(key).unlink()  # while still holding it: see the module's docstring
        except OSError:
            pass
        fcntl.flock(held[1], fcntl.LOCK_UN)
        os.close(held[1])

    def _is_current(self, fd: int, key: str) -> bool:
        """True when ``fd`` is the file now at the key's path (not one deleted meanwhile)."""
        try:
            return os.fstat(fd).st_ino == os.stat(self._path(key)).st_ino
        except FileNotFoundError:
            return False

    def is_locked(self, key: str) -> bool:
        """True when some thread or live process holds the lock on ``key``."""
        with self._guard:
            if key in self._held:
                return True
        try:
            fd = os.open(self._path(key), os.O_RDWR)  # never creates a file
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        """True when ``holder`` (in this process) holds the lock on ``key``."""
        with self._guard:
            held = self._held.get(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Wait until ``key`` is unlocked; False when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Async :meth:`wait_for_lock`."""
        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)


_shared: dict[Path, FlockLockManager] = {}
_shared_guard = threading.Lock()


def shared_lock_manager(directory: str | Path) -> FlockLockManager:
    """The lock manager of ``directory`` in this process (one per directory and process)."""
    path = Path(directory).expanduser().resolve()
    with _shared_guard:
        manager = _shared.get(path)
        if manager is None:
            manager = _shared[path] = FlockLockManager(path)
        return manager
