"""Bounded submission of agent-call tasks: at most ``window`` calls in flight.

Submitting thousands of task runs at once would create them all up front and
hold a future for each; instead a :class:`CallWindow` keeps at most ``window``
calls submitted and hands back outcomes in the order the calls finish. It is
the one submission mechanism of every shape: the map stage, the classifier and
the tree reduce feed it a (lazy) stream of calls with :meth:`CallWindow.run`;
the plan dispatcher, whose next calls depend on the last results, uses
:meth:`CallWindow.submit` and :meth:`CallWindow.next_finished` directly. The
window also measures the most calls it had in flight at once, the run's
reached concurrency.

Every task run a window sees finish is reported to the flow run's
:class:`~prefect_fanout.call.recording.RecordingGuard`, which holds new calls
while the Prefect server is too far behind in recording them.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prefect.futures import PrefectFuture

from prefect_fanout.call.recording import RecordingGuard, recording_guard
from prefect_fanout.call.task import result_from_future
from prefect_fanout.errors import BudgetExhausted
from prefect_fanout.limits.hook import REQUESTS
from prefect_fanout.llm.result import AgentResult

__all__ = ["CallOutcome", "CallWindow"]

K = TypeVar("K")

Submitted = PrefectFuture[Any] | AgentResult | BaseException
"""What a submit function returns: the call's future, its stored result (a cache hit), or
the error that already ended it (e.g. a batch answer that failed validation)."""


@dataclass
class CallOutcome(Generic[K]):
    """One finished call: the caller's key, its future, and either a result or the error."""

    key: K
    result: AgentResult | None
    error: BaseException | None
    future: PrefectFuture[Any] | None = None

    @property
    def ok(self) -> bool:
        """True when the call completed."""
        return self.error is None

    @property
    def over_budget(self) -> bool:
        """True when the call was not made because the run's budget was reached."""
        return isinstance(self.error, BudgetExhausted)


class CallWindow(Generic[K]):
    """Submits calls with a bounded number in flight and returns them as they finish.

    Args:
        window: The most calls submitted and not yet finished at any moment.
        guard: Reports finished task runs to this guard; by default the guard of the
            flow run in context (:func:`~prefect_fanout.call.recording.recording_guard`).

    Raises:
        ValueError: ``window`` is below 1.
    """

    def __init__(self, window: int, guard: RecordingGuard | None = None) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.window = window
        self._calls_peak = 0
        self._requests = REQUESTS.peak()
        self.submitted = 0
        self.in_flight = 0
        self._guard = guard
        self._guard_found = False
        self._finished: queue.SimpleQueue[tuple[K, Submitted]] = queue.SimpleQueue()

    @property
    def peak(self) -> int:
        """The concurrency reached: the most requests at the server at once.

        Counted from this process's HTTP requests since the window was made; when it
        sent none (the offline ``test`` model, or calls run in other processes), the
        most calls in flight at once.
        """
        return self._requests.value or self._calls_peak

    def note_peak(self, in_flight: int) -> None:
        """Count calls that ran in flight elsewhere (worker processes) in the reached peak."""
        self._calls_peak = max(self._calls_peak, in_flight)

    @property
    def has_room(self) -> bool:
        """True when another call may be submitted now."""
        return self.in_flight < self.window

    def submit(self, key: K, submit: Callable[[], Submitted]) -> None:
        """Submit one call now (call only when :attr:`has_room`).

        Args:
            key: The caller's name for the call, returned in its outcome.
            submit: Submits the call's task and returns its future, or returns the
                call's stored result (a cache hit: no task run was needed). When it
                raises :class:`~prefect_fanout.errors.BudgetExhausted` the call was not
                made: its outcome carries that error at once.
        """
        try:
            submitted: Submitted | BudgetExhausted = submit()
        except BudgetExhausted as exc:
            submitted = exc
        self.in_flight += 1
        if not isinstance(submitted, BudgetExhausted):  # not made: not counted as submitted
            self.submitted += 1
            self._calls_peak = max(self._calls_peak, self.in_flight)
        if isinstance(submitted, AgentResult | BaseException):
            self._finished.put((key, submitted))
        else:
            submitted.add_done_callback(lambda done, key=key: self._finished.put((key, done)))

    def next_finished(self) -> CallOutcome[K]:
        """Wait for the next call to finish and return its outcome (never raises its error)."""
        if self.in_flight == 0:
            raise RuntimeError("no call in flight")
        key, future = self._finished.get()
        self.in_flight -= 1
        if isinstance(future, AgentResult):
            return CallOutcome(key, future, None, None)
        if isinstance(future, BaseException):  # not made (a budget), or a batch line's error
            return CallOutcome(key, None, future, None)
        if not self._guard_found:  # once: the window lives inside one flow run, or none
            self._guard = self._guard or recording_guard()
            self._guard_found = True
        if self._guard is not None:
            self._guard.finished()
        try:
            return CallOutcome(key, result_from_future(future), None, future)
        except Exception as exc:  # the call's own error, re-raised from its final state
            return CallOutcome(key, None, exc, future)

    def run(self, calls: Iterable[tuple[K, Callable[[], Submitted]]]) -> Iterator[CallOutcome[K]]:
        """Submit ``calls`` (key, submit function) and yield their outcomes as they finish.

        The submit function of a call is invoked only when a slot is free, so
        requests can be built lazily. A call's error is returned in its outcome,
        never raised; an error raised by a submit function itself propagates.
        """
        pending = iter(calls)
        exhausted = False
        while True:
            while not exhausted and self.has_room:
                entry = next(pending, None)
                if entry is None:
                    exhausted = True
                    break
                self.submit(*entry)
            if self.in_flight == 0:
                return
            yield self.next_finished()
