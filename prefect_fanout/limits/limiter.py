"""The in-process layer: one limiter per endpoint, shared by every thread and event loop.

A request asks its endpoint's :class:`EndpointLimiter` for a :class:`Permit`
(``with limiter.request(tokens) as permit`` in threads, ``async with
limiter.arequest(tokens)`` on an event loop), sends one HTTP request, and
settles the permit with the tokens the server reported. Getting a permit:

1. the end of any 429 pause (:mod:`~prefect_fanout.limits.backoff`);
2. an interval of the request rate and of the token rate that starts now
   (:mod:`~prefect_fanout.limits.pacer`), inside spans this process holds: a
   caller whose turn is later waits and looks again (so an answer that used
   fewer tokens than counted hands the rest on); a span comes from the server
   when none has room (one caller fetches it, the others wait for it);
3. a place in flight under the endpoint's ``max_concurrency`` (and the cap of
   the 429 rule). With a Prefect server each place is a slot of the shared
   limit, taken from a block of slots the process holds
   (:func:`~prefect_fanout.limits.server.block_size`); a block is fetched (one
   caller fetches, the others wait for it) only when every held block is in
   use, so the server is asked once per block, not once per request. If the
   place came too late for the interval (more than :data:`MAX_LATE_SECONDS`),
   the caller asks for a new interval, keeping its place.

The rate comes before the place in flight so that a process never holds slots
while it waits for a span another process holds (each waiting for the other).
Both APIs drive the same steps (a generator yielding what to wait for), so the
state is one, guarded by one lock, whichever API a caller uses. The time from
asking to getting the permit is the permit's ``waited_s``.

No wait is silent: a caller that has waited
:data:`~prefect_fanout.limits.server.WAIT_LOG_SECONDS` says in the run's log what it
waits for (a place in flight, a rate, a span another caller fetches, a 429 pause),
and again after each further stretch as long; the Prefect server's layer says the
same of a concurrency slot or a span another process holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prefect_fanout.limits.backoff import Adaptation
from prefect_fanout.limits.learned import read_headers
from prefect_fanout.limits.learning import PROBE_WAIT_SECONDS, Learning
from prefect_fanout.limits.pacer import ALL_TIME, Bucket, Reservation, Span
from prefect_fanout.limits.server import (
    HOLD_SECONDS,
    IDLE_SECONDS,
    LEASE_SECONDS,
    RPM_SPAN_SECONDS,
    TPM_SPAN_SECONDS,
    WAIT_LOG_SECONDS,
    Lease,
    block_size,
    clock_time,
    limit_name,
    span_units,
    wait_logger,
)
from prefect_fanout.limits.spec import LimitSpec

#: How often a caller on an event loop looks again while it waits for another caller.
ASYNC_POLL_SECONDS = 0.02

MAX_LATE_SECONDS = 0.1
"""The latest a request may start after the start of its interval (and at most half the
interval): a caller that wakes later gives the interval up and asks again."""

MIN_LATE_SECONDS = 0.001
"""The lateness always allowed, however short the interval. Below it a caller could never
reach its interval in time (its own bookkeeping takes longer) and would ask for ever; the
price, only for rates above 30,000 per minute, is that a 10-second window may see up to
``rate_per_minute / 60,000`` requests (or tokens' worth) above its bound."""


class Backend(Protocol):
    """Where spans and concurrency slots come from when limits are shared across processes.

    Attributes:
        api_calls: Calls made to the Prefect API so far.
    """

    api_calls: int

    def span(self, name: str, units: int, rate: float) -> Span:
        """Wait for, then take, a span of ``units / rate`` seconds of a rate limit."""
        ...

    def take_slots(self, name: str, limit: int, count: int = 1) -> Lease:
        """Wait for, then take, ``count`` slots of a concurrency limit under one lease."""
        ...

    def watch(self, sweep: Callable[[], None]) -> None:
        """Call ``sweep()`` now and then from a background thread."""
        ...

    def renew(self, lease: Lease) -> None:
        """Renew a slot's lease."""
        ...

    def give_back(self, lease: Lease) -> None:
        """Release a block of slots."""
        ...

    def read_learned(self, key: str) -> dict[str, Any] | None:
        """What another process learned of an endpoint's rate limits (None: nothing)."""
        ...

    def publish_learned(self, key: str, values: dict[str, Any]) -> None:
        """Keep what this process learned of an endpoint's rate limits for the others."""
        ...


@dataclass
class _Block:
    """A block of concurrency slots this process holds, and how many are in use."""

    lease: Lease
    used: int = 0
    retiring: bool = False
    idle_since: float | None = None


@dataclass(frozen=True)
class _Wait:
    """Wait until the limiter's state changes, or at most ``seconds``."""

    version: int
    seconds: float | None = None
    why: str = "the endpoint's limits"


@dataclass(frozen=True)
class _Call:
    """Make a blocking call to the Prefect API (on a worker thread for an event loop)."""

    function: Callable[[], Any]


_Step = _Wait | _Call


@dataclass
class Permit:
    """The right to send one HTTP request.

    Attributes:
        waited_s: Seconds spent waiting for capacity (concurrency, pause, rates).
        tokens: The tokens the request was counted for.
    """

    waited_s: float
    tokens: int
    _limiter: EndpointLimiter
    _start: float = 0.0
    _factor: float = 1.0
    _settled: bool = False
    _probe: bool = False

    def settle(self, tokens: int | None) -> None:
        """Correct the token count with what the server reported (None: keep the estimate)."""
        if tokens is None or self._settled:
            return
        self._settled = True
        self._limiter._correct(self, tokens)


@dataclass(frozen=True)
class LimiterStats:
    """What one endpoint's limiter did in this process.

    Attributes:
        permits: Permits given (HTTP requests sent).
        waited_s: Seconds all of them waited for capacity.
        rate_limited: 429 answers seen.
        api_calls: Calls to the Prefect API for spans and slots (all endpoints of the process).
    """

    permits: int
    waited_s: float
    rate_limited: int
    api_calls: int


class EndpointLimiter:
    """The limits of one endpoint in this process (see the module docstring).

    Args:
        key: The endpoint's key (:func:`~prefect_fanout.limits.server.endpoint_key`).
        spec: Its limits.
        backend: The Prefect server's layer, or None to hold the limits in this process.
    """

    def __init__(self, key: str, spec: LimitSpec, backend: Backend | None = None) -> None:
        self.key = key
        self.spec = spec
        self.backend = backend
        self._cond = threading.Condition()
        self._version = 0
        shared = backend is not None
        self._per_minute = {"rpm": spec.requests_per_minute, "tpm": spec.tokens_per_minute}
        self._rpm = self._bucket("rpm", spec.requests_per_minute, RPM_SPAN_SECONDS, shared)
        self._tpm = self._bucket("tpm", spec.tokens_per_minute, TPM_SPAN_SECONDS, shared)
        self._learning = Learning(spec.requests_per_minute, spec.tokens_per_minute)
        self._slot_name = limit_name("concurrency", key)
        self._shared_slots = shared and spec.max_concurrency is not None
        self._in_flight = 0
        self._peak = 0
        self._blocks: list[_Block] = []
        self._waiting = 0
        self._fetching_slots = 0
        if self._shared_slots and backend is not None:
            backend.watch(self._sweep)
        self._pause_until = 0.0
        self._adapt = Adaptation()
        self._permits = 0
        self._waited = 0.0
        self._rate_limited = 0

    @staticmethod
    def _bucket(kind: str, per_minute: int | None, seconds: float, shared: bool) -> Bucket | None:
        if per_minute is None:
            return None
        bucket = Bucket(rate=per_minute / 60.0, span_units=span_units(per_minute, seconds))
        if not shared:
            bucket.spans.append(ALL_TIME)
        return bucket

    # ----------------------------------------------------------------- public API

    @contextlib.contextmanager
    def request(self, tokens: int = 0) -> Iterator[Permit]:
        """Wait for capacity (blocking this thread), then hold it while the request runs.

        Args:
            tokens: The tokens the request is counted for before it is sent.
        """
        permit, block = _run_sync(self._acquire(tokens), self)
        try:
            yield permit
        finally:
            self._end_probe(permit)
            self._release(block)

    @contextlib.asynccontextmanager
    async def arequest(self, tokens: int = 0) -> AsyncIterator[Permit]:
        """As :meth:`request`, waiting on the event loop instead of blocking it."""
        permit, block = await _run_async(self._acquire(tokens), self)
        try:
            yield permit
        finally:
            self._end_probe(permit)
            lease = self._leave(block)
            if lease is not None and self.backend is not None:
                await asyncio.to_thread(self.backend.give_back, lease)

    def note_rate_limited(self, seconds: float) -> None:
        """A 429 from the endpoint: pause new requests for ``seconds`` and slow down.

        Once the provider's headers gave its rates, the pace already follows them: the
        429 only pauses. Without them, the request rate is guessed from the 429s
        (:mod:`~prefect_fanout.limits.learning`) and the 429 rule slows every caller.
        """
        with self._cond:
            now = time.monotonic()
            self._pause_until = max(self._pause_until, now + seconds)
            self._rate_limited += 1
            if not self._learning.heard:
                self._adapt.on_429(now, max(self._in_flight, self._peak))
                guess = self._learning.on_429(now, self._per_minute["rpm"])
                if guess is not None:
                    self._set_rate("rpm", guess, shared=False)
                    wait_logger().warning(
                        "%s answered 429 without x-ratelimit headers: pacing at %d requests "
                        "a minute, learned from the 429s (set --rpm to choose the rate)",
                        self.key,
                        guess,
                    )
            self._changed()

    def learn(self, headers: Any, permit: Permit | None, reported: int | None) -> None:
        """Read an answer's ``x-ratelimit-*`` headers and pace to what they say.

        Args:
            headers: The answer's headers (a 429's included).
            permit: The permit the request was sent with.
            reported: The tokens the answer reported it used (None for an error).
        """
        if reported is not None:
            with self._cond:
                self._learning.answered(time.monotonic())
        said = read_headers(headers)
        if said is None:
            if permit is not None and permit._probe and reported is not None:
                # nothing to learn from this endpoint: kept, so the next process sends its
                # first requests at once instead of one alone
                self._keep({"headers": False})
            return
        with self._cond:
            learned = False
            for kind, rate in self._learning.rates_from(said).items():
                if self._per_minute[kind] != rate:
                    self._set_rate(kind, rate, shared=self.backend is not None)
                    learned = True
            if permit is not None and permit._probe:
                self._learning.counting_from(said, permit.tokens, reported)
                learned = True
            if said.remaining_requests == 0 and said.requests_per_minute:
                # a longer pause needs no wake-up: waiters see it when they look again
                pause = time.monotonic() + 60.0 / said.requests_per_minute
                self._pause_until = max(self._pause_until, pause)
            kept = {
                "requests_per_minute": self._learned("rpm"),
                "tokens_per_minute": self._learned("tpm"),
                "hand_back": self._learning.hand_back,
            }
        if learned:
            self._keep(kept)

    def _keep(self, values: dict[str, Any]) -> None:
        """Keep what was learned on the Prefect server for the next processes (best effort)."""
        if self.backend is None:
            return
        try:
            self.backend.publish_learned(self.key, values)
        except Exception:  # the next process learns it again with one request
            wait_logger().debug("could not keep the learned limits", exc_info=True)

    def say_token_bound(self, max_tokens: int, estimate: int, reported: int | None) -> None:
        """Say once in the run's log when ``max_tokens`` is what bounds the token rate.

        That is when the provider counts ``max_tokens`` up front, the token rate admits
        fewer requests a minute than the request rate, and ``max_tokens`` is most of
        what a request is counted for.
        """
        if self._learning.said_token_bound:  # said once: nothing to do on each answer
            return
        with self._cond:
            tpm, rpm = self._per_minute["tpm"], self._per_minute["rpm"]
            if self._learning.said_token_bound or tpm is None or self._learning.hand_back:
                return
            if max_tokens * 2 <= estimate or tpm / max(1, estimate) >= (rpm or math.inf):
                return
            self._learning.said_token_bound = True
        prompt = estimate - max_tokens
        used = max(1, (reported or prompt) - prompt)
        smaller = max(16, 2 * used)
        wait_logger().warning(
            "the token rate of %s (%d/min) admits about %d requests a minute, because the "
            "provider counts each request's max_tokens (%d) up front beside its prompt (~%d): "
            "max_tokens, not the prompts, bounds this run; with max_tokens %d (twice what an "
            "answer used) it could reach about %d a minute",
            self.key,
            tpm,
            tpm // max(1, estimate),
            max_tokens,
            prompt,
            smaller,
            min(rpm or math.inf, tpm // max(1, prompt + smaller)),
        )

    def stats(self) -> LimiterStats:
        """What this limiter did so far."""
        with self._cond:
            return LimiterStats(
                permits=self._permits,
                waited_s=round(self._waited, 6),
                rate_limited=self._rate_limited,
                api_calls=self.backend.api_calls if self.backend is not None else 0,
            )

    # ----------------------------------------------------------------- the steps

    def _changed(self) -> None:
        self._version += 1
        self._cond.notify_all()

    def _acquire(self, tokens: int) -> Generator[_Step, Any, tuple[Permit, _Block | None]]:
        began = time.monotonic()
        lease: _Block | None = None
        placed = False
        probe = yield from self._await_probe()
        try:
            while True:
                reservation, factor = yield from self._reserve(tokens)
                if not placed:
                    lease = yield from self._place_in_flight()
                    placed = True
                with self._cond:
                    now = time.monotonic()
                    if now < reservation.deadline and now >= self._pause_until:
                        waited = now - began
                        self._permits += 1
                        self._peak = max(self._peak, self._in_flight)
                        self._waited += waited
                        permit = Permit(waited, tokens, self, reservation.start, factor)
                        permit._probe = probe
                        return permit, lease
                # the place in flight came too late for the interval (or a 429 paused
                # the endpoint meanwhile): ask for another interval, keeping the place
        except BaseException:
            if probe:
                self._end_probe(None)
            if placed:
                self._release(lease)
            raise

    def _await_probe(self) -> Generator[_Step, Any, bool]:
        """Wait while the first request to an endpoint with unknown rates learns them.

        Returns:
            True when this caller's request is that first request.
        """
        probe = self._learning.probe
        while True:
            with self._cond:
                if probe.state == "done":
                    return False
                now = time.monotonic()
                if probe.state == "wanted":
                    probe.state = "asking" if self.backend is not None else "running"
                    probe.started = now
                    if probe.state == "running":
                        return True
                    ask = True
                elif now - probe.started >= PROBE_WAIT_SECONDS:
                    probe.state = "done"  # a slow first request holds nobody back for long
                    self._changed()
                    return False
                else:
                    ask, version = False, self._version
            if not ask:
                yield _Wait(
                    version,
                    probe.started + PROBE_WAIT_SECONDS - now,
                    why=f"the first request to {self.key}, which learns the provider's "
                    "rate limits from its answer",
                )
                continue
            backend = self.backend
            assert backend is not None
            try:
                known = yield _Call(lambda backend=backend: backend.read_learned(self.key))
            except Exception:  # the server could not say: learn it here
                known = None
            with self._cond:
                if known:
                    for kind, field in (
                        ("rpm", "requests_per_minute"),
                        ("tpm", "tokens_per_minute"),
                    ):
                        value = known.get(field)
                        if value and self._learning.explicit[kind] is None:
                            self._set_rate(kind, int(value), shared=True)
                    # an endpoint kept as sending no headers: no probe, and 429s guess
                    self._learning.heard = known.get("headers", True) is not False
                    self._learning.hand_back = bool(known.get("hand_back", True))
                    probe.state = "done"
                else:
                    probe.state, probe.started = "running", time.monotonic()
                self._changed()
            return probe.state == "running"

    def _end_probe(self, permit: Permit | None) -> None:
        """The first request is answered (or failed): the others go."""
        if permit is not None and not permit._probe:
            return
        with self._cond:
            if self._learning.probe.state in ("running", "asking"):
                self._learning.probe.state = "done"
                self._changed()

    def _learned(self, kind: str) -> int | None:
        """A rate learned from the provider (not one set explicitly), or None."""
        if self._learning.explicit[kind] is not None:
            return None
        return self._per_minute[kind]

    def _set_rate(self, kind: str, per_minute: int, shared: bool) -> None:
        """Pace ``kind`` (rpm, tpm) at ``per_minute`` from now (lock held)."""
        seconds = RPM_SPAN_SECONDS if kind == "rpm" else TPM_SPAN_SECONDS
        bucket = self._bucket(kind, per_minute, seconds, shared and self.backend is not None)
        self._per_minute[kind] = per_minute
        if kind == "rpm":
            self._rpm = bucket
        else:
            self._tpm = bucket
        self._changed()

    def _place_in_flight(self) -> Generator[_Step, Any, _Block | None]:
        while True:
            with self._cond:
                now = time.monotonic()
                cap = self._adapt.cap(now, self.spec.max_concurrency)
                room = cap is None or self._in_flight < cap
                if not self._shared_slots:
                    if room:
                        self._in_flight += 1
                        return None
                    fetch = 0
                else:
                    block = self._free_block(now) if room else None
                    if block is not None:
                        block.used += 1
                        block.idle_since = None
                        self._in_flight += 1
                        break
                    fetch = self._block_to_fetch(cap) if room and not self._fetching_slots else 0
                if fetch:
                    self._fetching_slots += 1
                else:
                    self._waiting += 1
                    version = self._version
            if fetch:
                try:
                    lease = yield _Call(lambda size=fetch: self._take_slots(size))
                finally:
                    with self._cond:
                        self._fetching_slots -= 1
                        self._changed()
                with self._cond:
                    self._blocks.append(_Block(lease))
                    self._changed()
                continue
            try:
                yield _Wait(
                    version,
                    why=f"a place in flight (max_concurrency {self.spec.max_concurrency}, "
                    f"cap {cap}, {self._in_flight} in flight in this process)",
                )
            finally:
                with self._cond:
                    self._waiting -= 1
        if time.monotonic() - block.lease.taken > LEASE_SECONDS / 2:
            try:
                yield _Call(lambda: self.backend.renew(block.lease))  # type: ignore[union-attr]
            except BaseException:
                self._release(block)
                raise
        return block

    def _free_block(self, now: float) -> _Block | None:
        """A held block with a slot to hand out (lock held); old blocks stop handing out."""
        for block in self._blocks:
            if not block.retiring and now - block.lease.first_taken >= HOLD_SECONDS:
                block.retiring = True
            if not block.retiring and block.used < block.lease.slots:
                return block
        return None

    def _block_to_fetch(self, cap: int | None) -> int:
        """How many slots to ask the server for now (lock held)."""
        limit = int(self.spec.max_concurrency or 1)
        held = sum(block.lease.slots for block in self._blocks)
        ceiling = min(limit, cap) if cap is not None else limit
        return max(1, min(block_size(limit), ceiling - held))

    def _take_slots(self, count: int) -> Lease:
        assert self.backend is not None
        return self.backend.take_slots(self._slot_name, int(self.spec.max_concurrency or 1), count)

    def _sweep(self) -> None:
        """Give back blocks that went idle or retired with nothing in flight (background)."""
        now = time.monotonic()
        done: list[Lease] = []
        with self._cond:
            for block in list(self._blocks):
                if block.used:
                    continue
                idle = block.idle_since is not None and now - block.idle_since >= IDLE_SECONDS
                old = now - block.lease.first_taken >= HOLD_SECONDS
                if block.retiring or old or (idle and not self._waiting):
                    self._blocks.remove(block)
                    done.append(block.lease)
            if done:
                self._changed()
        for lease in done:
            assert self.backend is not None
            self.backend.give_back(lease)

    def _reserve(self, tokens: int) -> Generator[_Step, Any, tuple[Reservation, float]]:
        """An interval starting now in every rate bucket, after any pause (and its factor)."""
        while True:
            with self._cond:
                now = time.monotonic()
                factor = self._adapt.current(now)
                grown = self._learning.recovered(now, self._per_minute["rpm"])
                if grown == 0:  # the guess has expired: unpaced again
                    self._per_minute["rpm"], self._rpm = None, None
                elif grown is not None:
                    self._set_rate("rpm", grown, shared=False)
                if now < self._pause_until:
                    step: _Step | None = _Wait(
                        self._version, self._pause_until - now, "the pause a 429 asked for"
                    )
                    reservation = None
                else:
                    reservation, step = self._plan(tokens, now, factor)
            if reservation is not None:
                return reservation, factor
            assert step is not None
            yield step

    def _plan(
        self, tokens: int, now: float, factor: float
    ) -> tuple[Reservation | None, _Step | None]:
        """A reservation at one start in every bucket, or the step to take first (lock held)."""
        # a request rate guessed from the 429s is itself the slowing down: no factor on it
        rpm_factor = 1.0 if self._learning.guessed else factor
        parts = [
            (bucket, bucket.duration(units, slowed))
            for bucket, units, slowed in (
                (self._rpm, 1, rpm_factor),
                (self._tpm, max(1, tokens), factor),
            )
            if bucket is not None
        ]
        if not parts:
            return Reservation(now, math.inf), None
        shortest = min(duration for _, duration in parts)
        late = max(min(shortest / 2, MAX_LATE_SECONDS), MIN_LATE_SECONDS)
        # An interval may have begun up to half its lateness ago: a caller that woke a
        # little after its turn (a busy machine) uses it instead of leaving it empty; the
        # request still starts within ``late`` of the interval's start, so the bound holds.
        start = now - late / 2
        for _ in range(8):
            for bucket, duration in parts:
                earliest = bucket.earliest(start, duration)
                if earliest is None:
                    return None, self._fetch_span(bucket)
                start = max(start, earliest)
            if start > now:
                # Intervals are only placed when they can start now: a caller waits for
                # its turn and looks again, so an answer that used fewer tokens than
                # counted hands the rest to the next request.
                return None, _Wait(self._version, start - now, self._rates())
            if all(bucket.fits(start, duration) for bucket, duration in parts):
                for bucket, duration in parts:
                    bucket.take(start, duration)
                return Reservation(start, start + late), None
        short = next(bucket for bucket, duration in parts if not bucket.fits(start, duration))
        return None, self._fetch_span(short)

    def _fetch_span(self, bucket: Bucket) -> _Step:
        """The step that gets ``bucket`` a new span: fetch it, or wait for the fetcher.

        Called with the lock held.
        """
        if bucket.fetching or self.backend is None:
            return _Wait(self._version, why=f"a span of {self._rates()} another caller fetches")
        bucket.fetching = True
        backend = self.backend
        kind = "rpm" if bucket is self._rpm else "tpm"
        name = limit_name(kind, self.key, self._per_minute[kind])

        def fetch() -> None:
            try:
                span = backend.span(name, bucket.span_units, bucket.rate)
            finally:
                with self._cond:
                    bucket.fetching = False
                    self._changed()
            with self._cond:
                bucket.add_span(span)
                self._changed()

        return _Call(fetch)

    def _rates(self) -> str:
        rates = []
        if self._per_minute["rpm"]:
            rates.append(f"the request rate ({self._per_minute['rpm']}/min)")
        if self._per_minute["tpm"]:
            rates.append(f"the token rate ({self._per_minute['tpm']}/min)")
        return " and ".join(rates) or "the rates"

    def _correct(self, permit: Permit, tokens: int) -> None:
        if self._tpm is None:
            return
        with self._cond:
            if tokens < permit.tokens and not self._learning.hand_back:
                return  # the provider counted max_tokens when it admitted the request
            counted = self._tpm.duration(max(1, permit.tokens), permit._factor)
            used = self._tpm.duration(max(1, tokens), permit._factor)
            self._tpm.correct(permit._start, counted, used)
            self._changed()

    def _leave(self, block: _Block | None) -> Lease | None:
        """Leave the flight; the block's lease when it is to go back to the server now."""
        with self._cond:
            self._in_flight -= 1
            lease = None
            if block is not None:
                block.used -= 1
                now = time.monotonic()
                if now - block.lease.first_taken >= HOLD_SECONDS:
                    block.retiring = True
                if block.used == 0:
                    if block.retiring:
                        self._blocks.remove(block)
                        lease = block.lease
                    else:
                        block.idle_since = now
            self._changed()
        return lease

    def _release(self, block: _Block | None) -> None:
        lease = self._leave(block)
        if lease is not None and self.backend is not None:
            self.backend.give_back(lease)


class _WaitLog:
    """Says what a caller waits for once it has waited :data:`WAIT_LOG_SECONDS`.

    And again after each further stretch as long.
    """

    def __init__(self, limiter: EndpointLimiter) -> None:
        self.limiter = limiter
        self.began = self.last = time.monotonic()

    def note(self, step: _Wait) -> float | None:
        """Log when due; the longest this wait may last before the next check."""
        now = time.monotonic()
        if now - self.last >= WAIT_LOG_SECONDS:
            self.last = now
            wait_logger().warning(
                "a request to %s has waited %.0fs (since %s) for %s",
                self.limiter.key,
                now - self.began,
                clock_time(self.began),
                step.why,
            )
        return WAIT_LOG_SECONDS if step.seconds is None else min(step.seconds, WAIT_LOG_SECONDS)


def _run_sync(steps: Generator[_Step, Any, Any], limiter: EndpointLimiter) -> Any:
    """Drive the steps on this thread."""
    value: Any = None
    error: BaseException | None = None
    log = _WaitLog(limiter)
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as done:
            return done.value
        value, error = None, None
        try:
            if isinstance(step, _Call):
                value = step.function()
            else:
                seconds = log.note(step)
                with limiter._cond:
                    if limiter._version == step.version:
                        limiter._cond.wait(seconds)
        except BaseException as exc:  # handed to the steps, which clean up and re-raise
            error = exc


async def _run_async(steps: Generator[_Step, Any, Any], limiter: EndpointLimiter) -> Any:
    """Drive the steps on the running event loop (API calls on a worker thread)."""
    value: Any = None
    error: BaseException | None = None
    log = _WaitLog(limiter)
    while True:
        try:
            step = steps.throw(error) if error is not None else steps.send(value)
        except StopIteration as done:
            return done.value
        value, error = None, None
        try:
            if isinstance(step, _Call):
                value = await asyncio.to_thread(step.function)
            else:
                seconds = log.note(step)
                deadline = None if seconds is None else time.monotonic() + seconds
                while limiter._version == step.version:
                    left = ASYNC_POLL_SECONDS if deadline is None else deadline - time.monotonic()
                    if left <= 0:
                        break
                    await asyncio.sleep(min(left, ASYNC_POLL_SECONDS))
        except BaseException as exc:  # handed to the steps, which clean up and re-raise
            error = exc
