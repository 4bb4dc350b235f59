"""Progress of a long run: a Prefect progress artifact and a bar on stderr."""

from __future__ import annotations

import contextvars
import sys
import threading
from collections.abc import Callable
from typing import TextIO

#: The longest :meth:`ProgressReporter.finish` waits for the API before giving up on it.
FINISH_WAIT_SECONDS = 5.0


class ProgressReporter:
    """Progress of a long run: a Prefect progress artifact and a bar on stderr.

    Counting and the stderr bar happen at once in the caller's thread. The
    artifact is reported best effort by one daemon thread that sends only the
    latest figure, at most every ``interval`` seconds (and at the end), so a
    5,000-call run makes a handful of API requests for it and a slow server never
    holds up the loop that submits calls. The first failed request (the API went
    away) stops the reporting for the rest of the run, and :meth:`finish` waits at
    most :data:`FINISH_WAIT_SECONDS`: progress never delays a run's outputs. The
    stderr bar is drawn only when stderr is a terminal. ``note``, when given, is read at
    each report and appended to the artifact's description (a budget's spend).
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        interval: float = 1.0,
        stream: TextIO | None = None,
        artifact: bool = True,
        note: Callable[[], str] | None = None,
    ) -> None:
        self.total = max(total, 0)
        self.done = 0
        self.failed = 0
        self.description = description
        self.note = note
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        # Asked once: a terminal's bar is redrawn per call, and the question is a system call
        # on the thread that collects the calls.
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.reported = artifact  # False once the API failed: no more requests
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._finished = False
        self._sent: float | None = None
        self._thread: threading.Thread | None = None
        if artifact:
            # The artifact belongs to the current flow run: carry its context over.
            context = contextvars.copy_context()
            self._thread = threading.Thread(
                target=context.run, args=(self._report,), name="fanout-progress", daemon=True
            )
            self._thread.start()
        self._draw()

    def _percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)

    def _described(self) -> str:
        if self.note is None:
            return self.description
        try:
            return f"{self.description} | {self.note()}"
        except Exception:  # informative only
            return self.description

    def _report(self) -> None:
        from prefect.artifacts import create_progress_artifact
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactUpdate

        try:
            described = self._described()
            artifact_id = create_progress_artifact(progress=self._percent(), description=described)
            self._sent = self._percent()
            # One client for every update: Prefect's update_progress_artifact makes a new
            # one per call (its TLS context alone is 18 ms of CPU, on the calls' GIL).
            with get_client(sync_client=True) as client:
                while True:
                    self._wake.wait(self.interval)
                    self._wake.clear()
                    with self._lock:
                        progress, finished = self._percent(), self._finished
                    now = self._described()
                    if progress != self._sent or now != described:
                        update = ArtifactUpdate(data=progress, description=now)
                        client.update_artifact(artifact_id=artifact_id, artifact=update)
                        self._sent, described = progress, now
                    if finished:
                        return
        except Exception:  # no flow run context or API: progress stays on stderr
            self.reported = False

    def advance(self, n: int = 1, failed: bool = False) -> None:
        """Count ``n`` finished units (``failed`` ones are also counted as failed)."""
        with self._lock:
            self.done = min(self.total, self.done + n)
            self.failed += n if failed else 0
        self._draw()

    def _draw(self) -> None:
        if not self._tty:
            return
        width = 30
        filled = 0 if self.total == 0 else int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        failed = f" ({self.failed} failed)" if self.failed else ""
        self.stream.write(f"\r{self.description} [{bar}] {self.done}/{self.total}{failed}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()

    def finish(self, wait: float = FINISH_WAIT_SECONDS) -> None:
        """Report the final figure, waiting at most ``wait`` seconds for the API."""
        with self._lock:
            self._finished = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)
            if self._thread.is_alive():
                self.reported = False
            self._thread = None
