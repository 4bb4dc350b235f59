"""A budget shared by several runs by name, held on the Prefect server.

Each unit of a named budget is one Prefect global concurrency limit without decay, used as
a counter: ``fanout-budget:NAME:tokens`` (limit: the token budget) and
``fanout-budget:NAME:usd-micro`` (limit: the dollar budget in micro-dollars). Its occupied
slots are what every run of that name spent plus what their calls in flight reserved.
Reserving is the server's atomic increment (refused with 423 when it would pass the limit);
returning the unspent part of a reservation is a release. The rare answer that spends more
than its reservation is added with an increment, or, when that would pass the limit, by
setting the occupied slots (a read and a write, not atomic).

Spend accumulates over runs: a named budget is an account. A run with a larger budget raises
the limit (the spent part stays); ``prefect gcl delete fanout-budget:NAME:tokens`` (and
``...:usd-micro``) starts it again from zero.
"""

from __future__ import annotations

from typing import Any

import httpx
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from prefect_fanout.bounded import KeptClient
from prefect_fanout.budget.counter import Amount

__all__ = ["SharedCounter", "limit_names"]

OCCUPANCY_SECONDS = 1.0
"""What a release reports as the slots' occupancy (the server refuses 0; it only tunes the
server's Retry-After hints, which a budget never waits on)."""

REFUSED = (422, 423)
"""The increment's answers for "does not fit": over the limit, or larger than it."""


def limit_names(name: str) -> tuple[str, str]:
    """The global concurrency limits of a named budget: (tokens, micro-dollars)."""
    return (f"fanout-budget:{name}:tokens", f"fanout-budget:{name}:usd-micro")


class SharedCounter:
    """A named budget's counter on the Prefect server that ``PREFECT_API_URL`` names.

    Args:
        name: The budget's name.
        limit: The limits (tokens, micro-dollars); None for a unit without a limit.
    """

    def __init__(self, name: str, limit: tuple[int | None, int | None]) -> None:
        self.name = name
        self.limit = limit
        self.names = limit_names(name)
        self._client = KeptClient()
        self._ready = False

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._client.get(), method)(*args, **kwargs)

    def _units(self) -> list[int]:
        return [unit for unit in (0, 1) if self.limit[unit] is not None]

    def ensure(self) -> None:
        """Create each limit, or set its size to this run's budget (spent slots stay)."""
        if self._ready:
            return
        for unit in self._units():
            name, size = self.names[unit], int(self.limit[unit] or 0)
            try:
                found = self._call("read_global_concurrency_limit_by_name", name)
            except ObjectNotFound:
                try:
                    self._call(
                        "create_global_concurrency_limit",
                        GlobalConcurrencyLimitCreate(
                            name=name, limit=size, slot_decay_per_second=0.0, active=True
                        ),
                    )
                    continue
                except ObjectAlreadyExists:
                    found = self._call("read_global_concurrency_limit_by_name", name)
            if found.limit != size or not found.active or found.slot_decay_per_second:
                self._call(
                    "update_global_concurrency_limit",
                    name,
                    GlobalConcurrencyLimitUpdate(limit=size, active=True, slot_decay_per_second=0),
                )
        self._ready = True

    def _increment(self, name: str, slots: int) -> bool:
        if slots <= 0:
            return True
        try:
            self._call("increment_concurrency_slots", names=[name], slots=slots, mode="concurrency")
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code in REFUSED:
                return False
            raise
        return True

    def _release(self, name: str, slots: int) -> None:
        if slots > 0:
            self._call(
                "release_concurrency_slots",
                names=[name],
                slots=slots,
                occupancy_seconds=OCCUPANCY_SECONDS,
            )

    def take(self, amount: Amount) -> bool:
        """Reserve ``amount`` on the server, every unit or none."""
        self.ensure()
        taken: list[int] = []
        for unit in self._units():
            if not self._increment(self.names[unit], amount[unit]):
                for done in taken:
                    self._release(self.names[done], amount[done])
                return False
            taken.append(unit)
        return True

    def give_back(self, amount: Amount) -> None:
        """Release what was reserved and not spent."""
        for unit in self._units():
            self._release(self.names[unit], amount[unit])

    def add(self, amount: Amount) -> None:
        """Record what was spent beyond the reservation (even past the limit)."""
        for unit in self._units():
            name, slots = self.names[unit], amount[unit]
            if slots <= 0 or self._increment(name, slots):
                continue
            found = self._call("read_global_concurrency_limit_by_name", name)
            self._call(
                "update_global_concurrency_limit",
                name,
                GlobalConcurrencyLimitUpdate(active_slots=found.active_slots + slots),
            )

    def used(self) -> Amount | None:
        """What every run of this name spent plus what their calls in flight reserved."""
        try:
            self.ensure()
            values = [0, 0]
            for unit in self._units():
                found = self._call("read_global_concurrency_limit_by_name", self.names[unit])
                values[unit] = int(found.active_slots)
            return (values[0], values[1])
        except Exception:  # informative only
            return None
