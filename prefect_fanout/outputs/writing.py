"""Output files that could not be written: reported once each, the run goes on.

Every output is written atomically (:mod:`prefect_fanout.files`), so a write
that fails (a full disk, a read-only mount) leaves the previous version of the
file, if any, exactly as it was and no temp file behind. :class:`OutputWrites`
turns such a failure into one error line naming the file and the reason, and
remembers it for the summary's ``missing_outputs`` (and exit code 1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["OutputWrites"]


class OutputWrites:
    """Attempts at writing a run's output files, and the ones that failed.

    Attributes:
        missing: File name -> why it could not be written.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self.missing: dict[str, str] = {}

    def attempt(self, name: str, write: Callable[[], Any]) -> bool:
        """Run ``write``; on an ``OSError`` record ``name`` as missing and log one line.

        Returns:
            Whether the file was written.
        """
        try:
            write()
        except OSError as exc:
            reason = f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)
            self.missing[name] = reason
            self.logger.error(
                "could not write %s: %s; its previous version, if any, is left as it was",
                name,
                reason,
            )
            return False
        return True
