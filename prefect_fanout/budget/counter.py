"""Where a budget's spend is counted: in this process, or on the Prefect server.

A counter holds, per unit (tokens; USD in micro-dollars), what was spent plus what calls in
flight reserved, against a limit. :meth:`Counter.take` reserves atomically or refuses;
:meth:`Counter.give_back` returns what a call reserved and did not spend; :meth:`Counter.add`
records what a call spent beyond its reservation (never refused: it is spent already).
"""

from __future__ import annotations

import math
import threading
from typing import Protocol

__all__ = ["Amount", "Counter", "LocalCounter", "micro_usd"]

Amount = tuple[int, int]
"""(tokens, micro-dollars)."""


def micro_usd(usd: float | None) -> int:
    """USD as whole micro-dollars, rounded up (None: 0)."""
    return 0 if usd is None else max(0, math.ceil(round(usd * 1e6, 6)))


class Counter(Protocol):
    """A budget's counter (see the module)."""

    def take(self, amount: Amount) -> bool:
        """Reserve ``amount`` if it fits under every limit; False when it does not."""
        ...

    def give_back(self, amount: Amount) -> None:
        """Return a reserved ``amount`` that was not spent."""
        ...

    def add(self, amount: Amount) -> None:
        """Record ``amount`` spent beyond what was reserved."""
        ...

    def used(self) -> Amount | None:
        """Spent plus reserved, as the counter holds it (None when it cannot be read)."""
        ...


class LocalCounter:
    """A counter in this process: the budget of one run.

    Args:
        limit: The limits (tokens, micro-dollars); None for a unit without a limit.
    """

    def __init__(self, limit: tuple[int | None, int | None]) -> None:
        self.limit = limit
        self._used = [0, 0]
        self._lock = threading.Lock()

    def take(self, amount: Amount) -> bool:
        """Reserve ``amount`` if it fits under every limit."""
        with self._lock:
            for unit in (0, 1):
                cap = self.limit[unit]
                if cap is not None and self._used[unit] + amount[unit] > cap:
                    return False
            self._used[0] += amount[0]
            self._used[1] += amount[1]
            return True

    def give_back(self, amount: Amount) -> None:
        """Return what was reserved and not spent."""
        with self._lock:
            self._used[0] = max(0, self._used[0] - amount[0])
            self._used[1] = max(0, self._used[1] - amount[1])

    def add(self, amount: Amount) -> None:
        """Record what was spent beyond the reservation."""
        with self._lock:
            self._used[0] += amount[0]
            self._used[1] += amount[1]

    def used(self) -> Amount:
        """Spent plus reserved."""
        with self._lock:
            return (self._used[0], self._used[1])
