"""Bounded submission of agent-call tasks: at most ``window`` calls in flight.

Submitting thousands of task runs at once would create them all up front and
hold a future for each; instead a :class:`CallWindow` keeps ``window`` calls
submitted, submits the next one as each finishes, and hands back outcomes in
the order the calls finish. It also measures the most calls it had in flight
at once, the run's reached concurrency.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prefect.futures import PrefectFuture

from prefect_fanout.call.result import AgentResult
from prefect_fanout.call.task import result_from_future

__all__ = ["CallOutcome", "CallWindow"]

K = TypeVar("K")


@dataclass
class CallOutcome(Generic[K]):
    """One finished call: the caller's key and either a result or the error."""

    key: K
    result: AgentResult | None
    error: BaseException | None

    @property
    def ok(self) -> bool:
        """True when the call completed."""
        return self.error is None


class CallWindow:
    """Submits calls with a bounded number in flight and yields them as they finish.

    Args:
        window: The most calls submitted and not yet finished at any moment.

    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self.peak = 0
        self.submitted = 0
        self._lock = threading.Lock()

    def run(
        self, calls: Iterable[tuple[K, Callable[[], PrefectFuture[Any]]]]
    ) -> Iterator[CallOutcome[K]]:
        """Submit ``calls`` (key, submit function) and yield their outcomes as they finish.

        The submit function of a call is invoked only when a slot is free, so
        requests can be built lazily. A call's error (the agent-call error, or
        any exception reading its result) is returned in its outcome, never
        raised; an error raised by a submit function itself propagates.
        """
        finished: queue.SimpleQueue[tuple[K, PrefectFuture[Any]]] = queue.SimpleQueue()
        pending = iter(calls)
        in_flight = 0
        exhausted = False
        while True:
            while not exhausted and in_flight < self.window:
                try:
                    key, submit = next(pending)
                except StopIteration:
                    exhausted = True
                    break
                future = submit()
                in_flight += 1
                with self._lock:
                    self.submitted += 1
                    self.peak = max(self.peak, in_flight)
                future.add_done_callback(lambda done, key=key: finished.put((key, done)))
            if in_flight == 0:
                return
            key, future = finished.get()
            in_flight -= 1
            yield _outcome(key, future)


def _outcome(key: K, future: PrefectFuture[Any]) -> CallOutcome[K]:
    try:
        return CallOutcome(key, result_from_future(future), None)
    except Exception as exc:  # the call's own error, re-raised from its final state
        return CallOutcome(key, None, exc)
