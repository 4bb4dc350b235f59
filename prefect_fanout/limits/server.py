"""The shared layer: an endpoint's limits held across processes by one Prefect server.

Every process that calls an endpoint asks the same global concurrency limits,
named after the endpoint's key (:func:`limit_name`):

- ``fanout-rpm-KEY-R`` and ``fanout-tpm-KEY-T`` (rates; the name carries the rate per
  minute, so a run with another rate uses another limit and never waits out the
  slots a faster or slower run left behind): a limit of ``G`` slots that
  decay at the rate per second (``R/60``, ``T/60``). A process takes all ``G``
  slots in one request, which the server admits only when the previous holder's
  slots have fully decayed: that gives the process a :class:`~.pacer.Span` of
  ``G / rate`` seconds that no other process uses, from when it asked (the
  server admitted it later) to ``G / rate`` after. The process then spreads its
  requests inside the span by itself (:mod:`prefect_fanout.limits.pacer`). ``G``
  covers :data:`RPM_SPAN_SECONDS` of requests and :data:`TPM_SPAN_SECONDS` of
  tokens, so a span serves many requests for one or two API calls.
- ``fanout-concurrency-KEY``: a limit of ``max_concurrency`` slots without decay
  (resized in place when ``max_concurrency`` changes). A process takes slots in
  blocks (:func:`block_size`: a quarter of the limit, at least one) with one short
  lease per block (:data:`LEASE_SECONDS`, Prefect's shortest) and hands them to its
  own requests in memory, so the server is asked once per block, not once per
  request. A background thread renews the leases every :data:`RENEW_SECONDS` while
  the process lives, so the slots of a process that died come back within
  :data:`DEAD_HOLDER_BOUND_SECONDS` (the lease, plus the server's lease sweep every
  15 s). A block goes back to the server when none of its slots has been used for
  :data:`IDLE_SECONDS`, when the process exits, and, so that other processes get
  their turn, once it has been held :data:`HOLD_SECONDS` and its requests are done.

A caller that has waited :data:`WAIT_LOG_SECONDS` for a slot or a span says so in
the run's log (and on the command line), naming the limit, how many slots are
held, and since when; again every :data:`WAIT_LOG_SECONDS`.

Prefect's server restarts the decay of a limit whenever it denies a request for
slots, so a process never asks for a span it would be denied: it reads the limit
first (a read changes nothing) and waits for the slots it shows to decay. The
calls to the Prefect API per span are a read and an increment; see
:attr:`PrefectBackend.api_calls`.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    VariableCreate,
    VariableUpdate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from prefect_fanout.bounded import KeptClient
from prefect_fanout.limits.pacer import Span

RPM_SPAN_SECONDS = 5.0
"""The stretch of time one request-rate span covers."""

TPM_SPAN_SECONDS = 12.0
"""The stretch of time one token-rate span covers: longer than the 10-second window by more
than :data:`~prefect_fanout.limits.pacer.BIG_START_SECONDS`, so that two requests bigger
than a span are never in one window (a request bigger than a span takes a fresh one and
owes the rest, see :mod:`prefect_fanout.limits.pacer`)."""

LEASE_SECONDS = 60.0
"""The lease of a concurrency slot (Prefect's shortest); renewed while the process lives."""

RENEW_SECONDS = 20.0
"""How often a process renews the leases of the slots it holds."""

DEAD_HOLDER_BOUND_SECONDS = LEASE_SECONDS + 15.0
"""The longest the slots of a process that died stay taken: the lease, plus the server's
sweep of expired leases (every 15 s by default)."""

WAIT_LOG_SECONDS = 30.0
"""A caller that waited this long for the limits says what it waits for (and again after
each further stretch as long)."""

_log = logging.getLogger("prefect_fanout.limits")


def wait_logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The run's logger when called inside a flow or task run, else this package's."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run (MissingContextError) or no Prefect context at all
        return _log


def clock_time(monotonic: float) -> str:
    """A ``time.monotonic()`` instant as local wall-clock ``HH:MM:SS``."""
    return time.strftime("%H:%M:%S", time.localtime(time.time() - (time.monotonic() - monotonic)))


HOLD_SECONDS = 10.0
"""The longest a process hands out the slots of one block of a concurrency limit; then the
block goes back to the server once its requests are done (other processes get their turn)."""

IDLE_SECONDS = 1.0
"""A block of concurrency slots none of whose slots has been used this long goes back."""

SWEEP_SECONDS = 0.5
"""How often the background thread looks for idle blocks and leases due for renewal."""


def block_size(limit: int) -> int:
    """The slots of a concurrency limit one process takes at once: a quarter, at least one."""
    return max(1, math.ceil(limit / 4))


SLOT_POLL_SECONDS = 0.5
"""The longest wait before asking again for a concurrency slot the server refused."""


def endpoint_key(base_url: str, api_key: str | None) -> str:
    """A short, stable name for an endpoint: its host and port plus a hash of URL and key.

    The key itself never appears in the name (it only feeds the hash), so two
    accounts on one server get separate limits.
    """
    normalised = base_url.strip().rstrip("/").lower()
    parts = urlsplit(normalised)
    host = "".join(c if c.isalnum() else "-" for c in (parts.netloc or normalised))[:40]
    digest = hashlib.sha256(f"{normalised}\n{api_key or ''}".encode()).hexdigest()[:12]
    return f"{host}-{digest}"


def limit_name(kind: str, key: str, per_minute: int | None = None) -> str:
    """The Prefect global concurrency limit of one kind (rpm, tpm, concurrency) for an endpoint.

    A rate limit's name ends with the rate per minute (``per_minute``): its slots are
    spans of that rate, and a run at another rate must not wait out their decay.
    """
    suffix = f"-{per_minute}" if per_minute is not None else ""
    return f"fanout-{kind}-{key}{suffix}"


def learned_name(key: str) -> str:
    """The Prefect variable that keeps what was learned of an endpoint's rate limits."""
    return f"fanout-learned-{key}"


def span_units(rate_per_minute: int, seconds: float) -> int:
    """The slots of a rate limit whose span covers ``seconds`` (at least 1)."""
    return max(1, math.ceil(rate_per_minute / 60.0 * seconds))


@dataclass
class Lease:
    """A block of concurrency slots this process holds under one lease.

    Attributes:
        lease_id: The server's lease.
        taken: When it was taken or last renewed (``time.monotonic()``).
        first_taken: When it was first taken.
        slots: How many slots the lease holds.
    """

    lease_id: UUID
    taken: float
    first_taken: float
    slots: int = 1


class PrefectBackend:
    """Spans and concurrency slots from the Prefect server that ``PREFECT_API_URL`` names.

    Attributes:
        api_calls: Calls made to the Prefect API so far (for the limits only).
    """

    def __init__(self) -> None:
        self._client = KeptClient()
        self._lock = threading.Lock()
        self._ensured: set[tuple[str, int, float]] = set()
        self._held: dict[UUID, Lease] = {}
        self._renewer: threading.Thread | None = None
        self._renew_wake = threading.Event()
        self._sweepers: list[Any] = []
        self._turns: dict[str, _Turn] = {}
        self.api_calls = 0

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.api_calls += 1
        return getattr(self._client.get(), method)(*args, **kwargs)

    def ensure(self, name: str, limit: int, decay: float) -> None:
        """Create the limit, or set its size and decay when another run left others."""
        if (name, limit, decay) in self._ensured:
            return
        try:
            found = self._call("read_global_concurrency_limit_by_name", name)
        except ObjectNotFound:
            try:
                self._call(
                    "create_global_concurrency_limit",
                    GlobalConcurrencyLimitCreate(
                        name=name, limit=limit, slot_decay_per_second=decay, active=True
                    ),
                )
            except ObjectAlreadyExists:
                pass  # another process created it at the same moment
            else:
                self._ensured.add((name, limit, decay))
                return
            found = self._call("read_global_concurrency_limit_by_name", name)
        if (
            found.limit != limit
            or not math.isclose(found.slot_decay_per_second or 0.0, decay)
            or not found.active
        ):
            self._call(
                "update_global_concurrency_limit",
                name,
                GlobalConcurrencyLimitUpdate(limit=limit, slot_decay_per_second=decay, active=True),
            )
        self._ensured.add((name, limit, decay))

    def span(self, name: str, units: int, rate: float) -> Span:
        """Wait for, then take, a span of ``units / rate`` seconds of a rate limit.

        Args:
            name: The limit.
            units: Its size (all of it is taken).
            rate: Its decay, in slots per second.

        Returns:
            The span, in this process's monotonic clock.
        """
        self.ensure(name, units, rate)
        began = time.monotonic()
        turn = self._turns.setdefault(name, _Turn())
        try:
            return self._take_span(name, units, rate, turn, began)
        finally:
            if turn.queued is not None:
                self._leave_queue(turn)

    def _take_span(self, name: str, units: int, rate: float, turn: _Turn, began: float) -> Span:
        last_log = began
        yielded = slept = False
        while True:
            try:
                found = self._call("read_global_concurrency_limit_by_name", name)
            except ObjectNotFound:  # deleted meanwhile: make it again
                self._ensured.clear()
                self.ensure(name, units, rate)
                continue
            now = time.monotonic()
            if found.active_slots > 0 and now >= turn.own_until:
                if turn.queued is None:  # say so: the holder lets waiting processes go first
                    self._join_queue(name, turn)
                if slept:  # it took the span this process waited for: a turn lost
                    turn.missed += 1
            if found.active_slots == 0 and not yielded and turn.just_had_one(now):
                yielded = True
                if self._others_waiting(name):
                    # this process just had a span and others want the rate: let the
                    # one that has waited longest take it first
                    time.sleep(TURN_SECONDS)
                    continue
            if found.active_slots > 0:
                if now - last_log >= WAIT_LOG_SECONDS:
                    last_log = now
                    wait_logger().warning(
                        "waiting %.0fs (since %s) for a span of the rate limit %s: %d of its "
                        "%d slots are held by another run or process, decaying at %.4g/s",
                        now - began,
                        clock_time(began),
                        name,
                        found.active_slots,
                        units,
                        rate,
                    )
                waiting = found.active_slots / rate
                if waiting < WAIT_LOG_SECONDS and now >= turn.own_until:
                    # the longer it has waited, the sooner it asks
                    waiting += TURN_SECONDS / (2 + turn.missed)
                    yielded = slept = True
                time.sleep(min(waiting, WAIT_LOG_SECONDS))
                continue
            asked = time.monotonic()
            try:
                self._call(
                    "increment_concurrency_slots", names=[name], slots=units, mode="rate_limit"
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 423:
                    turn.missed += 1
                    continue  # another process took it first; the next read says how long
                if exc.response.status_code == 422:  # resized by another run: set ours
                    self._ensured.clear()
                    self.ensure(name, units, rate)
                    continue
                raise
            turn.took(asked + units / rate)
            return Span(time.monotonic(), asked + units / rate)

    def _join_queue(self, name: str, turn: _Turn) -> None:
        """Hold a slot of ``NAME-waiting`` while this process waits for another's span."""
        queue = f"{name}-waiting"
        try:
            self.ensure(queue, QUEUE_SIZE, 0.0)
            answer = self._call(
                "increment_concurrency_slots_with_lease",
                names=[queue],
                slots=1,
                mode="concurrency",
                lease_duration=LEASE_SECONDS,
            )
            turn.queued = UUID(answer.json()["lease_id"])
        except Exception:  # taking turns is a courtesy: the span is asked for all the same
            _log.debug("could not join the queue of %s", name, exc_info=True)

    def _leave_queue(self, turn: _Turn) -> None:
        lease, turn.queued = turn.queued, None
        try:
            self._call("release_concurrency_slots_with_lease", lease)
        except Exception:  # its lease ends on its own
            pass

    def _others_waiting(self, name: str) -> bool:
        """True when another process waits for a span of ``name`` (holds a queue slot)."""
        queue = f"{name}-waiting"
        try:
            return self._call("read_global_concurrency_limit_by_name", queue).active_slots > 0
        except Exception:  # no queue yet: nobody waited
            return False

    def take_slots(self, name: str, limit: int, count: int = 1) -> Lease:
        """Wait for, then take, ``count`` slots of a concurrency limit under one lease.

        When the server refuses the whole block, the process reads how many slots
        are free and asks for those (at least one), so a nearly full limit still
        serves it.
        """
        self.ensure(name, limit, 0.0)
        count = max(1, min(count, limit))
        began = last_log = time.monotonic()
        while True:
            try:
                response = self._call(
                    "increment_concurrency_slots_with_lease",
                    names=[name],
                    slots=count,
                    mode="concurrency",
                    lease_duration=LEASE_SECONDS,
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
                if count > 1:
                    try:
                        held = self._call("read_global_concurrency_limit_by_name", name)
                        free = limit - int(held.active_slots)
                    except Exception:  # the next ask says more
                        free = 1
                    if free >= 1:
                        count = min(count, free)
                        continue
                    count = 1
                now = time.monotonic()
                if now - last_log >= WAIT_LOG_SECONDS:
                    last_log = now
                    self._log_slot_wait(name, limit, began)
                asked = _seconds(exc.response.headers.get("retry-after"), SLOT_POLL_SECONDS)
                time.sleep(min(asked, SLOT_POLL_SECONDS))
                continue
            now = time.monotonic()
            lease = Lease(UUID(response.json()["lease_id"]), now, now, count)
            self._hold(lease)
            return lease

    def watch(self, sweep: Any) -> None:
        """Call ``sweep()`` from the background thread every :data:`SWEEP_SECONDS`.

        A limiter uses it to give back blocks that went idle.
        """
        with self._lock:
            self._sweepers.append(sweep)
            self._start_thread()

    def _log_slot_wait(self, name: str, limit: int, began: float) -> None:
        try:
            held: Any = self._call("read_global_concurrency_limit_by_name", name).active_slots
        except Exception:  # the message matters more than the count
            held = "?"
        wait_logger().warning(
            "waiting %.0fs (since %s) for a slot of the concurrency limit %s: %s of %d "
            "slots held (%d by this process); a slot whose holder died comes back within %.0fs",
            time.monotonic() - began,
            clock_time(began),
            name,
            held,
            limit,
            len(self._held),
            DEAD_HOLDER_BOUND_SECONDS,
        )

    def _hold(self, lease: Lease) -> None:
        """Keep renewing ``lease`` until it is given back (starts the renewer once)."""
        with self._lock:
            self._held[lease.lease_id] = lease
            self._start_thread()

    def _start_thread(self) -> None:
        """Start the background thread and the release at exit, once (lock held)."""
        if self._renewer is None:
            self._renewer = threading.Thread(
                target=self._renew_loop, name="fanout-lease-renewer", daemon=True
            )
            self._renewer.start()
            atexit.register(self.close)

    def _renew_loop(self) -> None:
        while True:
            self._renew_wake.wait(SWEEP_SECONDS)
            with self._lock:
                sweepers = list(self._sweepers)
            for sweep in sweepers:
                try:
                    sweep()
                except Exception:  # a failed give-back: the lease expires on its own
                    _log.debug("sweeping idle concurrency slots failed", exc_info=True)
            with self._lock:
                due = [
                    lease
                    for lease in self._held.values()
                    if time.monotonic() - lease.taken >= RENEW_SECONDS
                ]
            for lease in due:
                try:
                    self.renew(lease)
                except Exception:  # gone (expired, released) or the API is down: try later
                    with self._lock:
                        if time.monotonic() - lease.taken > LEASE_SECONDS:
                            self._held.pop(lease.lease_id, None)

    def read_learned(self, key: str) -> dict[str, Any] | None:
        """What a process learned of an endpoint's rate limits, kept in a Prefect variable."""
        found = self._call("read_variable_by_name", learned_name(key))
        value = getattr(found, "value", None)
        return value if isinstance(value, dict) else None

    def publish_learned(self, key: str, values: dict[str, Any]) -> None:
        """Keep what this process learned in the variable :func:`learned_name` names."""
        name = learned_name(key)
        try:
            self._call("create_variable", VariableCreate(name=name, value=values))
        except ObjectAlreadyExists:
            self._call("update_variable", VariableUpdate(name=name, value=values))

    def close(self) -> None:
        """Give back every block still held (at exit; best effort)."""
        with self._lock:
            held = list(self._held.values())
        for lease in held:
            try:
                self.give_back(lease)
            except Exception:  # the server is gone: the leases expire on their own
                pass

    def renew(self, lease: Lease) -> None:
        """Renew a slot's lease."""
        self._call("renew_concurrency_lease", lease.lease_id, LEASE_SECONDS)
        lease.taken = time.monotonic()

    def give_back(self, lease: Lease) -> None:
        """Release a slot (best effort: a lease that expired is gone already)."""
        with self._lock:
            self._held.pop(lease.lease_id, None)
        try:
            self._call("release_concurrency_slots_with_lease", lease.lease_id)
        except (httpx.HTTPStatusError, ObjectNotFound):
            pass


@dataclass
class _Turn:
    """How this process takes turns with others at one rate limit.

    Spans go to whoever asks first once the last one has decayed. So that processes
    sharing a rate get like shares, a process waiting for another's span holds a slot
    of the limit ``NAME-waiting``; a process that just had a span and sees a waiting
    one waits :data:`TURN_SECONDS` before asking again, and a waiter that lost
    ``missed`` turns asks ``TURN_SECONDS / (2 + missed)`` after the decay: the longest
    waiter asks first.
    """

    own_until: float = 0.0
    missed: int = 0
    queued: UUID | None = None

    def just_had_one(self, now: float) -> bool:
        return now - self.own_until < TURN_SECONDS * 4

    def took(self, until: float) -> None:
        self.own_until = until
        self.missed = 0


TURN_SECONDS = 0.15
"""How long a process that just had a span of a shared rate lets waiting ones go first."""

QUEUE_SIZE = 100_000
"""The size of a rate limit's ``-waiting`` limit (one slot per waiting process)."""


def _seconds(text: str | None, default: float) -> float:
    try:
        return max(0.0, float(text)) if text else default
    except ValueError:
        return default
