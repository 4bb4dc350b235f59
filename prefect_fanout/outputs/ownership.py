"""Whose files are in an output directory, and what a run may do there.

A run refuses (exit code 2, before any call when the CLI checks first):

- an output directory that contains its input (the run would overwrite or
  re-read its own source) -- ``--force`` does not override this;
- an output directory holding files fanout did not write (not in its
  manifest) -- unless ``force``: fanout's own output names are then replaced
  and taken over, every other file is left as it is;
- an output directory another run is writing (its lock is held), naming that
  run's flow run id.

Inside the run, :class:`OutputClaim` holds the lock, records every target in
the manifest before it is written, and answers whether a file may be removed
(only files in the manifest ever are).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from prefect_fanout.errors import ConfigurationError
from prefect_fanout.outputs.lock import DirectoryLock, lock_holder
from prefect_fanout.outputs.manifest import is_internal, read_manifest, write_manifest

__all__ = [
    "OutputClaim",
    "OutputOwnershipError",
    "check_output_ownership",
    "claim_output",
    "foreign_files",
]

_SHOWN = 5


class OutputOwnershipError(ConfigurationError):
    """The output directory is not this run's to write (exit code 2)."""


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.resolve(), directory.resolve()
    return path == directory or directory in path.parents


def foreign_files(directory: Path) -> list[str]:
    """Files (and links) under ``directory`` that fanout's manifest does not list, sorted."""
    if not directory.is_dir():
        return []
    owned = read_manifest(directory)
    found: list[str] = []
    for root, dirs, files in os.walk(directory):
        base = Path(root).relative_to(directory)
        linked = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if d not in linked]
        for name in [*files, *linked]:
            relative = (base / name).as_posix()
            if not is_internal(relative) and relative not in owned:
                found.append(relative)
    return sorted(found)


def _check_input(directory: Path, source: Path | None) -> None:
    if source is not None and _inside(source, directory):
        raise OutputOwnershipError(
            f"--output {directory} contains the input {source}: the run would overwrite or "
            "re-read its own source; choose an output directory that does not contain the "
            "input (--force does not override this)"
        )


def _check_foreign(directory: Path) -> None:
    foreign = foreign_files(directory)
    if foreign:
        shown = ", ".join(foreign[:_SHOWN]) + (" ..." if len(foreign) > _SHOWN else "")
        raise OutputOwnershipError(
            f"--output {directory} holds {len(foreign)} file(s) fanout did not write ({shown}); "
            "a run only replaces files it wrote itself. Choose a new or empty directory, or "
            "pass --force to write there anyway (files named like fanout's outputs are then "
            "replaced; no other file is changed or deleted)"
        )


def _check_lock(directory: Path, holder: str | None) -> None:
    if holder is not None:
        raise OutputOwnershipError(
            f"--output {directory} is being written by another fanout run: {holder}; wait "
            "for it to end or choose another directory"
        )


def check_output_ownership(directory: Path, source: Path | None, force: bool = False) -> None:
    """Refuse an output directory this run may not write (checked again under the lock).

    Args:
        directory: The output directory.
        source: The input file or directory, if the corpus came from a path.
        force: Write among files fanout did not write.

    Raises:
        OutputOwnershipError: Naming the directory and the fix.
    """
    _check_input(directory, source)
    _check_lock(directory, lock_holder(directory))
    if not force:
        _check_foreign(directory)


class OutputClaim:
    """A run's hold on its output directory: the lock, and the manifest it keeps."""

    def __init__(self, directory: Path, run_id: str | None, lock: DirectoryLock) -> None:
        self.directory = directory
        self.run_id = run_id
        self._lock = lock

    def owns(self, relative: str) -> bool:
        """True when fanout wrote ``relative`` (so this run may replace or remove it)."""
        return relative in read_manifest(self.directory)

    def record(self, relatives: Iterable[str]) -> None:
        """List files as this run's, before writing them.

        Raises:
            ConfigurationError: The manifest cannot be written (e.g. a full disk).
        """
        try:
            write_manifest(self.directory, add=relatives, run_id=self.run_id)
        except OSError as exc:
            raise ConfigurationError(
                f"--output {self.directory}: cannot record the run's files in its manifest: "
                f"{exc.strerror or exc}; nothing was written"
            ) from None

    def remove(self, relative: str) -> bool:
        """Delete a file only if fanout wrote it; returns whether it was removed."""
        if not self.owns(relative):
            return False
        (self.directory / relative).unlink(missing_ok=True)
        write_manifest(self.directory, remove=[relative])
        return True

    def release(self) -> None:
        """Let the next run in."""
        self._lock.release()


def claim_output(
    directory: Path, source: Path | None, force: bool, run_id: str | None
) -> OutputClaim:
    """Lock the output directory and check it is this run's to write.

    Raises:
        OutputOwnershipError: The input is inside it, another run holds it, or it
            holds files fanout did not write (without ``force``).
    """
    _check_input(directory, source)
    lock = DirectoryLock(directory)
    _check_lock(directory, lock.acquire(run_id))
    try:
        if not force:
            _check_foreign(directory)
    except BaseException:
        lock.release()
        raise
    return OutputClaim(directory, run_id, lock)
