"""The pacer's bound, without clocks: intervals in exclusive spans never crowd a window."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_fanout.limits.pacer import Bucket, Span

RATE = 5.0  # units per second
SPAN_SECONDS = 2.0
WINDOW = 10.0


@settings(max_examples=200, deadline=None)
@given(
    asks=st.lists(
        st.tuples(st.integers(0, 1), st.integers(1, 10), st.floats(0.0, 3.0)),
        min_size=1,
        max_size=120,
    ),
    owners=st.lists(st.integers(0, 1), min_size=40, max_size=40),
)
def test_two_processes_in_alternating_spans_never_exceed_a_window(
    asks: list[tuple[int, int, float]], owners: list[int]
) -> None:
    """Spans go to one process at a time (as the server's full-capacity grants do);
    each process places intervals at its own times; the units starting in any
    window stay within ``WINDOW * RATE`` plus the last request's units."""
    buckets = [Bucket(rate=RATE, span_units=int(RATE * SPAN_SECONDS)) for _ in range(2)]
    for index, owner in enumerate(owners):
        start = index * SPAN_SECONDS
        buckets[owner].spans.append(Span(start, start + SPAN_SECONDS))
    clocks = [0.0, 0.0]
    placed: list[tuple[float, int]] = []
    for process, units, pause in asks:
        bucket = buckets[process]
        clocks[process] += pause
        duration = bucket.duration(units)
        start = bucket.earliest(clocks[process], duration)
        if start is None:
            continue  # no span left for this process: the server would be asked for one
        assert bucket.fits(start, duration)
        bucket.take(start, duration)
        clocks[process] = start
        placed.append((start, units))
    placed.sort()
    for i, (first, _) in enumerate(placed):
        inside = [units for start, units in placed[i:] if start <= first + WINDOW]
        assert sum(inside[:-1]) <= WINDOW * RATE
        assert sum(inside) <= WINDOW * RATE + max(units for _, units in placed)


def test_a_correction_gives_back_only_the_last_interval() -> None:
    bucket = Bucket(rate=1.0, span_units=100, spans=[Span(0.0, 100.0)])
    bucket.take(0.0, 10.0)
    bucket.correct(0.0, counted=10.0, used=4.0)
    assert bucket.cursor == 4.0  # nothing placed after it: the rest is handed on
    bucket.take(4.0, 10.0)
    bucket.take(14.0, 10.0)
    bucket.correct(4.0, counted=10.0, used=2.0)
    assert bucket.cursor == 24.0  # a later interval exists: nothing moves back
    bucket.correct(14.0, counted=10.0, used=13.0)
    assert bucket.cursor == 27.0  # used more: this process's next requests make up for it
