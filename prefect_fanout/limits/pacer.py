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

**A request bigger than a span.** A request counted for more than a span's units
(a token estimate above ``T/5`` with 12-second token spans) can never fit in one.
It is placed at the start of a *fresh* span (one this process has placed nothing
in, within :data:`BIG_START_SECONDS` of its start), takes the whole span, and
owes the rest of its interval (:attr:`Bucket.debt`): the next spans this process
gets pay it off before anything else is placed in them, so over time the rate
holds. Spans are longer than the 10-second window by more than
:data:`BIG_START_SECONDS`, so two such requests (from any processes) are always
more than 10 s apart, and a window that holds one holds at most ``T/6`` tokens
besides. A request counted for more than the whole per-minute rate is refused
before it is sent (:mod:`prefect_fanout.limits.hook`).
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


BIG_START_SECONDS = 1.0
"""How late in a fresh span a request bigger than the span may still start (see above)."""

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
        span_units: The units one span holds; a request counted for more takes a
            fresh span of its own and owes the rest (:attr:`debt`).
        spans: The spans held, oldest first.
        cursor: Where the next interval may start.
        fetching: True while a span is being fetched for it.
        debt: Seconds of this rate that a request bigger than its span still owes;
            the next spans added pay it off first.
    """

    rate: float
    span_units: int
    spans: list[Span] = field(default_factory=list)
    cursor: float = -math.inf
    fetching: bool = False
    debt: float = 0.0

    def duration(self, units: float, factor: float = 1.0) -> float:
        """Seconds of this rate that ``units`` take (slowed by ``factor`` < 1 after a 429)."""
        return float(units) / (self.rate * factor)

    def _room(self, span: Span, start: float, duration: float) -> bool:
        """True when an interval at ``start`` may be placed in ``span``."""
        if start < span.start or start >= span.end:
            return False
        if start + duration <= span.end:
            return True
        # bigger than what is left: only at the start of a fresh span, owing the rest
        return self.debt <= 0.0 and self.cursor <= span.start <= start <= (
            span.start + BIG_START_SECONDS
        )

    def earliest(self, at: float, duration: float) -> float | None:
        """The earliest start at or after ``at`` where ``duration`` fits in a held span.

        Spans that have ended are dropped. None when no held span has room: a new
        span is needed.
        """
        self.spans = [span for span in self.spans if span.end > at]
        for span in self.spans:
            start = max(at, self.cursor, span.start)
            if self._room(span, start, duration):
                return start
        return None

    def fits(self, start: float, duration: float) -> bool:
        """True when an interval at ``start`` fits in a held span and after the cursor."""
        if start < self.cursor:
            return False
        return any(self._room(span, start, duration) for span in self.spans)

    def take(self, start: float, duration: float) -> None:
        """Use the interval ``[start, start + duration)`` (what its span cannot hold is owed)."""
        end = start + duration
        for span in self.spans:
            if span.start <= start < span.end < end:
                self.debt += end - span.end
                end = span.end
                break
        self.cursor = end

    def add_span(self, span: Span) -> None:
        """Hold a new span; it pays off any debt first (that much of it stays unused)."""
        if self.debt > 0.0:
            begin = max(self.cursor, span.start)
            paid = min(self.debt, max(0.0, span.end - begin))
            self.debt -= paid
            self.cursor = begin + paid
        self.spans.append(span)

    def correct(self, start: float, counted: float, used: float) -> None:
        """Correct an interval of ``counted`` seconds whose request used ``used`` seconds' worth.

        More used than counted moves the cursor on by the difference (or adds it to
        the debt), so this process's next requests make up for it. Less used pays
        off debt, or gives the rest back when no later interval was placed yet.
        """
        if used > counted:
            if self.debt > 0.0:
                self.debt += used - counted
            else:
                self.cursor += used - counted
        elif self.debt > 0.0:
            self.debt = max(0.0, self.debt - (counted - used))
        elif self.cursor == start + counted:
            self.cursor = start + used
