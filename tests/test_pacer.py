"""The pacer's bound, without clocks: intervals in exclusive spans never crowd a window."""

from __future__ import annotations

import random

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


# ----------------------------------------------- token rates, requests bigger than a span


@settings(max_examples=300, deadline=None)
@given(
    tpm=st.integers(1_000, 10_000_000),
    asks=st.lists(
        st.tuples(
            st.integers(0, 1),  # which process asks
            st.floats(0.0, 1.0),  # max_tokens, as a share of the limit
            st.integers(0, 200_000),  # prompt characters
            st.floats(0.0, 5.0),  # seconds since the process's previous request
        ),
        min_size=1,
        max_size=40,
    ),
    seed=st.integers(0, 2**32),  # the server's order, delays and round trips
)
def test_two_processes_hold_any_token_limit_with_requests_of_any_size(
    tpm: int, asks: list[tuple[int, float, int, float]], seed: int
) -> None:
    """The TPM bound over random T, max_tokens and prompt sizes, two processes sharing
    spans as the Prefect server hands them out: no 10-second window sees more than T/6
    plus one request's tokens, a request over T is refused before it is sent, and every
    other request is placed (no run fails to progress)."""
    from prefect_fanout.errors import ConfigurationError
    from prefect_fanout.limits.estimate import estimate_tokens
    from prefect_fanout.limits.server import TPM_SPAN_SECONDS, span_units
    from prefect_fanout.limits.spec import check_request_fits

    rate = tpm / 60.0
    units = span_units(tpm, TPM_SPAN_SECONDS)
    buckets = [Bucket(rate=rate, span_units=units) for _ in range(2)]
    queues: list[list[tuple[int, float]]] = [[], []]
    for process, share, chars, pause in asks:
        max_tokens = max(1, int(share * tpm))
        tokens = estimate_tokens([{"content": "a" * chars}], max_tokens)
        try:
            check_request_fits(tpm, tokens, "test")
        except ConfigurationError:
            assert tokens > tpm
            continue
        queues[process].append((tokens, pause))
    clocks = [0.0, 0.0]
    placed: list[tuple[float, int]] = []
    server_free = 0.0  # when the last span's slots have decayed, in server time
    server = random.Random(seed)
    for _ in range(20 + 10 * len(asks)):  # a request over a span owes at most 5 more
        owner, delay, trip = server.randint(0, 1), server.uniform(0, 0.5), server.uniform(0, 0.2)
        wanting = [p for p in (owner, 1 - owner) if queues[p]]
        if not wanting:
            break
        process = wanting[0]
        asked = max(server_free, clocks[process]) + delay
        admitted = asked + trip / 2
        buckets[process].add_span(Span(admitted + trip / 2, asked + units / rate))
        server_free = admitted + units / rate
        bucket = buckets[process]
        while queues[process]:
            tokens, pause = queues[process][0]
            duration = bucket.duration(tokens)
            start = bucket.earliest(clocks[process] + pause, duration)
            if start is None:
                break  # this process needs another span
            assert bucket.fits(start, duration)
            bucket.take(start, duration)
            clocks[process] = start
            placed.append((start, tokens))
            queues[process].pop(0)
    assert not queues[0] and not queues[1], "a request was never placed"
    if not placed:
        return
    placed.sort()
    largest = max(tokens for _, tokens in placed)
    for i, (first, _) in enumerate(placed):
        inside = sum(tokens for start, tokens in placed[i:] if start <= first + WINDOW)
        assert inside <= tpm / 6 + largest + 1e-6
