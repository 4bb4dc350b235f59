"""Spreading one rate over time: reservations of time inside the spans a process holds.

A rate of ``r`` units per second (requests, or tokens) is spread by giving every
request an interval of ``units / r`` seconds of its own. Intervals never overlap,
so in any window of ``w`` seconds the requests that start in it add up to at most
``w * r`` units plus the units of the last one: with ``requests_per_minute=R``
a 10-second window sees at most ``R/6 + 1`` requests, and with
``tokens_per_minute=T`` at most ``T/6`` tokens plus one request's.

A process places intervals only inside a :class:`Span`, a stretch of time that
no other process uses for that rate: the Prefect server hands spans out one at a
time (:mod:`prefect_fanout.limits.server`), or, without a server, the process
owns all of time (:data:`ALL_TIME`). Intervals are placed at a cursor that only
moves forward, so they cannot overlap within a process either.

A request must start in the first half of its interval and at most 0.1 s after
its start (see :attr:`Reservation.deadline`); one that wakes later gives its
interval up and asks again. So the HTTP request reaches the server inside its
interval even when sending it takes a moment, and the bound holds where the
server counts. (For tokens, a request that starts late by ``d`` seconds can add
``d * T/60`` tokens to a window: at most 0.1 s worth.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Span:
    """A stretch of time, in this process's ``time.monotonic()`` clock, that it alone uses.

    Attributes:
        start: When it begins.
        end: When it ends; no interval placed in it may end later.
    """

    start: float
    end: float


ALL_TIME = Span(-math.inf, math.inf)
"""The span of a process that shares its limits with no other process."""


@dataclass(frozen=True)
class Reservation:
    """An interval of one bucket (or of several, at one start) that a request may use.

    Attributes:
        start: When the request may start.
        deadline: The request must start before this, else it asks again.
    """

    start: float
    deadline: float


@dataclass
class Bucket:
    """One rate, and the spans and cursor of this process for it.

    Attributes:
        rate: Units per second (requests per minute / 60, or tokens per minute / 60).
        span_units: The units one span holds; a request counted for more is
            counted for this many (it then has a whole span to itself).
        spans: The spans held, oldest first.
        cursor: Where the next interval may start.
        fetching: True while a span is being fetched for it.
    """

    rate: float
    span_units: int
    spans: list[Span] = field(default_factory=list)
    cursor: float = -math.inf
    fetching: bool = False

    def duration(self, units: float, factor: float = 1.0) -> float:
        """Seconds of this rate that ``units`` take (slowed by ``factor`` < 1 after a 429)."""
        return min(float(units), float(self.span_units)) / (self.rate * factor)

    def earliest(self, at: float, duration: float) -> float | None:
        """The earliest start at or after ``at`` where ``duration`` fits in a held span.

        Spans that have ended are dropped. None when no held span has room: a new
        span is needed.
        """
        self.spans = [span for span in self.spans if span.end > at]
        for span in self.spans:
            start = max(at, self.cursor, span.start)
            if start + duration <= span.end:
                return start
        return None

    def fits(self, start: float, duration: float) -> bool:
        """True when an interval at ``start`` fits in a held span and after the cursor."""
        if start < self.cursor:
            return False
        return any(span.start <= start and start + duration <= span.end for span in self.spans)

    def take(self, start: float, duration: float) -> None:
        """Use the interval ``[start, start + duration)``."""
        self.cursor = start + duration

    def correct(self, start: float, counted: float, used: float) -> None:
        """Correct an interval of ``counted`` seconds whose request used ``used`` seconds' worth.

        More used than counted moves the cursor on by the difference, so this
        process's next requests make up for it. Less used gives the rest back
        when no later interval was placed yet.
        """
        if used > counted:
            self.cursor += used - counted
        elif self.cursor == start + counted:
            self.cursor = start + used
