"""Progress reporting that never holds up the loop submitting calls.

:class:`~prefect_fanout.artifacts.ProgressReporter` updates a Prefect progress
artifact through the API. Under load a Prefect server can answer slowly (or
ask the client to retry after seconds), and the loop that submits calls must
not wait for that: :class:`BackgroundProgress` hands every update to one
helper thread, in order, inside the caller's run context.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from prefect_fanout.artifacts import ProgressReporter

__all__ = ["BackgroundProgress"]


class BackgroundProgress:
    """A :class:`ProgressReporter` driven from a helper thread.

    Args:
        total: Units of work expected.
        description: The progress artifact's description and the stderr bar's label.

    """

    def __init__(self, total: int, description: str) -> None:
        # The artifact belongs to the current flow run: carry its context over.
        self._context = contextvars.copy_context()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fanout-progress")
        self._reporter: Future[Any] = self._submit(ProgressReporter, total, description)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._executor.submit(self._context.run, fn, *args)

    def advance(self, failed: bool = False) -> None:
        """Count one finished unit (returns at once)."""
        self._submit(self._advance, failed)

    def _advance(self, failed: bool) -> None:
        self._reporter.result().advance(1, failed=failed)

    def finish(self) -> None:
        """Publish the final figure and wait for every pending update."""
        self._submit(lambda: self._reporter.result().finish())
        self._executor.shutdown(wait=True)
