"""Progress of a long run: a Prefect progress artifact and a bar on stderr."""

from __future__ import annotations

import contextvars
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TextIO
from uuid import UUID


class ProgressReporter:
    """Progress of a long run: a Prefect progress artifact and a bar on stderr.

    Counting and the stderr bar happen at once in the caller's thread; the
    artifact's API requests run in order on one helper thread (inside the
    caller's run context), so a slow server never holds up the loop that
    submits calls. The artifact is updated at most every ``interval`` seconds
    (and at the end), so a 5,000-call run does not make 5,000 API requests for
    it. The stderr bar is drawn only when stderr is a terminal.
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        interval: float = 1.0,
        stream: TextIO | None = None,
        artifact: bool = True,
    ) -> None:
        self.total = max(total, 0)
        self.done = 0
        self.failed = 0
        self.description = description
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._last_publish = 0.0
        self._artifact_id: UUID | None = None
        self._executor: ThreadPoolExecutor | None = None
        if artifact:
            # The artifact belongs to the current flow run: carry its context over.
            self._context = contextvars.copy_context()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fanout-progress")
            self._executor.submit(self._context.run, self._create, self._percent())
        self._draw()

    def _percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)

    def _create(self, progress: float) -> None:
        from prefect.artifacts import create_progress_artifact

        try:
            self._artifact_id = create_progress_artifact(  # type: ignore[assignment]
                progress=progress, description=self.description
            )
        except Exception:  # no flow run context or API: progress stays on stderr
            self._artifact_id = None

    def advance(self, n: int = 1, failed: bool = False) -> None:
        """Count ``n`` finished units (``failed`` ones are also counted as failed)."""
        with self._lock:
            self.done = min(self.total, self.done + n)
            self.failed += n if failed else 0
            now = time.monotonic()
            publish = now - self._last_publish >= self.interval or self.done >= self.total
            if publish:
                self._last_publish = now
            progress = self._percent()
        self._draw()
        if publish:
            self._publish(progress)

    def _publish(self, progress: float) -> None:
        if self._executor is not None:
            self._executor.submit(self._context.run, self._update, progress)

    def _update(self, progress: float) -> None:
        if self._artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(artifact_id=self._artifact_id, progress=progress)
        except Exception:  # progress is informative; never fail the run for it
            pass

    def _draw(self) -> None:
        if not getattr(self.stream, "isatty", lambda: False)():
            return
        width = 30
        filled = 0 if self.total == 0 else int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        failed = f" ({self.failed} failed)" if self.failed else ""
        self.stream.write(f"\r{self.description} [{bar}] {self.done}/{self.total}{failed}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()

    def finish(self) -> None:
        """Publish the final figure and wait for every pending artifact update."""
        self._publish(self._percent())
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
