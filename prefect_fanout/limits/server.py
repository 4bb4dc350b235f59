"""The shared layer: an endpoint's limits held across processes by one Prefect server.

Every process that calls an endpoint asks the same global concurrency limits,
named after the endpoint's key (:func:`limit_name`):

- ``fanout-rpm-KEY`` and ``fanout-tpm-KEY`` (rates): a limit of ``G`` slots that
  decay at the rate per second (``R/60``, ``T/60``). A process takes all ``G``
  slots in one request, which the server admits only when the previous holder's
  slots have fully decayed: that gives the process a :class:`~.pacer.Span` of
  ``G / rate`` seconds that no other process uses, from when it asked (the
  server admitted it later) to ``G / rate`` after. The process then spreads its
  requests inside the span by itself (:mod:`prefect_fanout.limits.pacer`). ``G``
  covers :data:`RPM_SPAN_SECONDS` of requests and :data:`TPM_SPAN_SECONDS` of
  tokens, so a span serves many requests for one or two API calls.
- ``fanout-concurrency-KEY``: a limit of ``max_concurrency`` slots without decay.
  A process takes one slot (with a lease of :data:`LEASE_SECONDS`, so the slots
  of a process that died come back) per request in flight, and keeps a slot it
  holds for its next request while it has callers waiting, for at most
  :data:`HOLD_SECONDS`; then it gives the slot back so other processes get
  their turn.

Prefect's server restarts the decay of a limit whenever it denies a request for
slots, so a process never asks for a span it would be denied: it reads the limit
first (a read changes nothing) and waits for the slots it shows to decay. The
calls to the Prefect API per span are a read and an increment; see
:attr:`PrefectBackend.api_calls`.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from prefect_fanout.limits.pacer import Span

RPM_SPAN_SECONDS = 5.0
"""The stretch of time one request-rate span covers."""

TPM_SPAN_SECONDS = 10.0
"""The stretch of time one token-rate span covers (a request counted for more tokens
than this holds is counted for a whole span)."""

LEASE_SECONDS = 600.0
"""The lease of a concurrency slot: a process that dies holding one frees it after this."""

HOLD_SECONDS = 5.0
"""The longest a process keeps a concurrency slot for its own waiting callers."""

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


def limit_name(kind: str, key: str) -> str:
    """The Prefect global concurrency limit of one kind (rpm, tpm, concurrency) for an endpoint."""
    return f"fanout-{kind}-{key}"


def span_units(rate_per_minute: int, seconds: float) -> int:
    """The slots of a rate limit whose span covers ``seconds`` (at least 1)."""
    return max(1, math.ceil(rate_per_minute / 60.0 * seconds))


@dataclass
class Lease:
    """A concurrency slot this process holds.

    Attributes:
        lease_id: The server's lease.
        taken: When it was taken or last renewed (``time.monotonic()``).
        first_taken: When it was first taken.
    """

    lease_id: UUID
    taken: float
    first_taken: float


class PrefectBackend:
    """Spans and concurrency slots from the Prefect server that ``PREFECT_API_URL`` names.

    Attributes:
        api_calls: Calls made to the Prefect API so far (for the limits only).
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()
        self._ensured: set[tuple[str, int, float]] = set()
        self.api_calls = 0

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._client is None:
                self._client = get_client(sync_client=True)
                self._client.__enter__()
            self.api_calls += 1
            client = self._client
        return getattr(client, method)(*args, **kwargs)

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
        while True:
            try:
                found = self._call("read_global_concurrency_limit_by_name", name)
            except ObjectNotFound:  # deleted meanwhile: make it again
                self._ensured.clear()
                self.ensure(name, units, rate)
                continue
            if found.active_slots > 0:
                time.sleep(found.active_slots / rate)
                continue
            asked = time.monotonic()
            try:
                self._call(
                    "increment_concurrency_slots", names=[name], slots=units, mode="rate_limit"
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 423:
                    continue  # another process took it first; the next read says how long
                if exc.response.status_code == 422:  # resized by another run: set ours
                    self._ensured.clear()
                    self.ensure(name, units, rate)
                    continue
                raise
            return Span(time.monotonic(), asked + units / rate)

    def take_slot(self, name: str, limit: int) -> Lease:
        """Wait for, then take, one slot of a concurrency limit (with a lease)."""
        self.ensure(name, limit, 0.0)
        while True:
            try:
                response = self._call(
                    "increment_concurrency_slots_with_lease",
                    names=[name],
                    slots=1,
                    mode="concurrency",
                    lease_duration=LEASE_SECONDS,
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:
                    raise
                asked = _seconds(exc.response.headers.get("retry-after"), SLOT_POLL_SECONDS)
                time.sleep(min(asked, SLOT_POLL_SECONDS))
                continue
            now = time.monotonic()
            return Lease(UUID(response.json()["lease_id"]), now, now)

    def renew(self, lease: Lease) -> None:
        """Renew a slot's lease."""
        self._call("renew_concurrency_lease", lease.lease_id, LEASE_SECONDS)
        lease.taken = time.monotonic()

    def give_back(self, lease: Lease) -> None:
        """Release a slot (best effort: a lease that expired is gone already)."""
        try:
            self._call("release_concurrency_slots_with_lease", lease.lease_id)
        except (httpx.HTTPStatusError, ObjectNotFound):
            pass


def _seconds(text: str | None, default: float) -> float:
    try:
        return max(0.0, float(text)) if text else default
    except ValueError:
        return default
