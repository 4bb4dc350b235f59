"""Keep a run's task runs within what the Prefect server can record, so the UI shows them all.

A Prefect 3.8 server records task runs from the events the client sends, and it
hands each event to its consumers (the task-run recorder, the event persister)
through an in-memory queue of 10,000 messages per consumer
(``prefect.server.utilities.messaging.memory``). A consumer that falls behind
loses what does not fit: the server logs ``Subscription queue is full, dropping
message`` and those task runs never appear. Measured on the 2-core machine, a
SQLite server records about 100 task runs a second, while 10,000 instant calls
finish at about 120 a second: without a brake, 2,500 of the 10,000 task runs were
lost.

So every call window of a flow run reports the task runs it saw finish to the
run's :class:`RecordingGuard`; every :data:`CHECK_EVERY` of them, the guard asks
the server how many task runs of the flow run it has recorded in a final state
(one ``POST /task_runs/count``). While more than :data:`MAX_LAG` finished task runs
are not yet recorded (at most three events each), new calls wait until the lag is
back to :data:`RESUME_LAG`. The brake never stalls a run: when the server's count
does not move for :data:`STALL_SECONDS`, or the count cannot be read within
:data:`READ_TIMEOUT_SECONDS` (the server is away: Prefect's client would retry for
a minute), the guard stops braking for the rest of the run and says so once.

A flow run's child runs (a map's partitions, :mod:`prefect_fanout.engine.child_runs`) share
their parent's guard, which counts the task runs of the parent and of its children: a child
of 1,000 calls could never be 1,000 behind on its own, while the server's queue holds what
every child before it sent (a B12 run with 1,000-call child runs on PostgreSQL lost 2,896 of
20,000 task runs when each child had its own guard).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from contextvars import ContextVar, Token
from typing import Any
from uuid import UUID

from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL

from prefect_fanout.bounded import KeptClient, call_within

__all__ = [
    "MAX_LAG",
    "RecordingGuard",
    "family_root",
    "guard_mark",
    "join_family",
    "recording_guard",
    "server_behind_line",
]

logger = logging.getLogger("prefect_fanout.recording")

CHECK_EVERY = 100
"""Finished task runs between two reads of the server's count."""

MAX_LAG = 1000
"""Finished task runs not yet recorded that make new calls wait (3,000 events at most,
well inside one consumer's queue of 10,000, with room for a second run on the server)."""

RESUME_LAG = 500
"""The lag at which waiting calls go on."""

POLL_SECONDS = 0.5
"""How often a waiting guard reads the count again."""

STALL_SECONDS = 15.0
"""How long the count may stand still before the guard stops braking."""

READ_TIMEOUT_SECONDS = 5.0
"""How long one read of the count may take before the guard gives up on it."""

END_READ_SECONDS = 20.0
"""How long the end of a command waits for the counts of its runs' recorded task runs.

Nothing waits on this read but the command's last line, and a server answers slowest just
then, while it takes in the events of the run's last calls (on a busy 2-core machine a
healthy server took more than 5 s): so it gets longer than a read that holds calls."""

FINAL_STATE_TYPES = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]


_clients: dict[str, KeptClient] = {}
_clients_lock = threading.Lock()


def _count_client() -> Any:
    """The process's client for the count reads, one per Prefect API URL (see KeptClient)."""
    url = str(PREFECT_API_URL.value() or "")
    with _clients_lock:
        kept = _clients.setdefault(url, KeptClient())
    return kept.get()


class RecordingGuard:
    """Holds one flow run's new calls while its finished task runs are not yet recorded.

    Args:
        flow_run_id: The flow run whose task runs are counted.
        max_lag: Unrecorded finished task runs that make :meth:`finished` wait.
        resume_lag: The lag at which a waiting :meth:`finished` returns.
        check_every: Finished task runs between two reads of the count.
        stall_seconds: How long the count may stand still before the guard stops braking.

    Attributes:
        waited_s: Seconds spent waiting for the server so far.
        checks: Reads of the server's count so far.
        active: False once the guard stopped braking (count stalled or unreadable).
        unreadable: Why the count could not be read, once a read failed (else None).
    """

    def __init__(
        self,
        flow_run_id: UUID,
        *,
        max_lag: int = MAX_LAG,
        resume_lag: int = RESUME_LAG,
        check_every: int = CHECK_EVERY,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        if not 0 <= resume_lag <= max_lag:
            raise ValueError(f"need 0 <= resume_lag <= max_lag, got {resume_lag}, {max_lag}")
        self.flow_run_id = flow_run_id
        self.max_lag = max_lag
        self.resume_lag = resume_lag
        self.check_every = max(1, check_every)
        self.stall_seconds = stall_seconds
        self.waited_s = 0.0
        self.checks = 0
        self.active = True
        self.unreadable: str | None = None
        self.sequence = next(_sequence)
        self._finished = 0
        self._since_check = 0
        self._lock = threading.Lock()

    def finished(self, count: int = 1) -> None:
        """Note ``count`` task runs that finished here; wait if the server is too far behind."""
        with self._lock:
            self._finished += count
            self._since_check += count
            if not self.active or self._since_check < self.check_every:
                return
            self._since_check = 0
            self._catch_up()

    @property
    def finished_count(self) -> int:
        """Task runs reported finished so far."""
        return self._finished

    def recorded(self) -> int:
        """Task runs of the flow run and its child runs the server has recorded in a final state."""
        self.checks += 1
        family = {"any_": [str(self.flow_run_id)]}
        body = {
            "flow_runs": {"operator": "or_", "id": family, "parent_flow_run_id": family},
            # a child run's own task run in its parent is no call (and is not recorded from
            # events): left out, so the count compares with the calls reported finished
            "task_runs": {
                "state": {"type": {"any_": FINAL_STATE_TYPES}},
                "subflow_runs": {"exists_": False},
            },
        }
        response = _count_client().request("POST", "/task_runs/count", json=body)
        response.raise_for_status()
        return int(response.json())

    def _catch_up(self) -> None:
        started = time.monotonic()
        waiting = False
        last, last_moved = -1, started
        try:
            while True:
                recorded = call_within(READ_TIMEOUT_SECONDS, "a count request", self.recorded)
                lag = self._finished - recorded
                if lag <= (self.resume_lag if waiting else self.max_lag):
                    return
                now = time.monotonic()
                if recorded != last:
                    last, last_moved = recorded, now
                elif now - last_moved >= self.stall_seconds:
                    self._stop(
                        f"the Prefect server's count of recorded task runs stood at {recorded} "
                        f"for {self.stall_seconds:g} s ({lag} behind)"
                    )
                    return
                if not waiting:
                    waiting = True
                    logger.debug("waiting for the Prefect server to record %d task runs", lag)
                time.sleep(POLL_SECONDS)
        except Exception as exc:  # the server is away or answers oddly: never stall the run
            why = "no answer" if isinstance(exc, TimeoutError) else str(exc)
            self.unreadable = why
            self._stop(f"the count of recorded task runs could not be read ({why})")
        finally:
            if waiting:
                self.waited_s += time.monotonic() - started

    def _stop(self, why: str) -> None:
        self.active = False
        logger.warning(
            "Not waiting for the Prefect server to record task runs any more: %s. "
            "Task runs may be missing from the UI; see README: Performance.",
            why,
        )


_sequence = itertools.count(1)

KEPT_GUARDS = 256
"""Guards kept for the flow runs of a long-lived process (the oldest is forgotten first)."""

_guards: OrderedDict[UUID, RecordingGuard] = OrderedDict()
_guards_lock = threading.Lock()


_family: ContextVar[UUID | None] = ContextVar("fanout_recording_family", default=None)


def family_root() -> UUID | None:
    """The flow run whose guard this context's calls report to, or None outside a flow run.

    The flow run in context, or, in a child run started by
    :func:`~prefect_fanout.engine.child_runs.run_as_child`, the parent it joined.
    """
    root = _family.get()
    if root is not None:
        return root
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return None
    return context.flow_run.id


def join_family(root: UUID) -> Token[UUID | None]:
    """Make this context's calls report to ``root``'s guard (a child run's thread)."""
    return _family.set(root)


def recording_guard() -> RecordingGuard | None:
    """The guard of the flow run in context (its family's: one per root flow run), or None."""
    flow_run_id = family_root()
    if flow_run_id is None:
        return None
    with _guards_lock:
        guard = _guards.get(flow_run_id)
        if guard is None:
            guard = _guards[flow_run_id] = RecordingGuard(flow_run_id)
            while len(_guards) > KEPT_GUARDS:
                _guards.popitem(last=False)
        return guard


BEHIND_MIN_LAG = 200
"""Unrecorded task runs at a run's end that count as behind, at the least (a server that
keeps up, flushing once a second, is a second of calls behind at the end)."""

BEHIND_SHARE = 0.1
"""The share of a run's task runs unrecorded at its end that counts as behind."""


def guard_mark() -> int:
    """A mark: :func:`server_behind_line` looks only at the flow runs started after it."""
    with _guards_lock:
        return max((guard.sequence for guard in _guards.values()), default=0)


def server_behind_line(since: int = 0) -> str | None:
    """One line saying the Prefect server fell behind the flow runs started after ``since``.

    Behind means: a run had to wait for the server to record its task runs, its guard
    stopped braking (the count stood still or could not be read), or at the end more than
    :data:`BEHIND_MIN_LAG` and :data:`BEHIND_SHARE` of its finished task runs are not yet
    recorded. One read of the count per flow run, all of them bounded by
    :data:`END_READ_SECONDS`; none when a read already failed during the run.

    Args:
        since: A :func:`guard_mark` taken before the runs started.

    Returns:
        The line, or None when the server kept up (or no task run was made).
    """
    with _guards_lock:
        guards = [g for g in _guards.values() if g.sequence > since and g.finished_count]
    if not guards:
        return None
    finished = sum(guard.finished_count for guard in guards)
    waited = sum(guard.waited_s for guard in guards)
    stalled = not all(guard.active for guard in guards)
    unreadable = next((guard.unreadable for guard in guards if guard.unreadable), None)
    if unreadable is not None:  # the server did not answer during the run: no second wait
        return _unreadable_line("during the run", unreadable)
    try:
        recorded = call_within(END_READ_SECONDS, "the count requests", _recorded, guards)
    except Exception as exc:
        timed_out = isinstance(exc, TimeoutError)
        why = f"no answer within {END_READ_SECONDS:g} s" if timed_out else exc
        return _unreadable_line("at the end of the run", why)
    lag = finished - recorded
    if not (waited > 0 or stalled or lag > max(BEHIND_MIN_LAG, BEHIND_SHARE * finished)):
        return None
    held = f"; this run waited {waited:.1f} s for it" if waited > 0 else ""
    return (
        f"the Prefect server at {_api_url()} fell behind: it has recorded {recorded:,} of the "
        f"{finished:,} task runs this run finished{held}; its next runs' API calls wait behind "
        "that backlog. Start it with `fanout server start` (README: Server)"
    )


def _recorded(guards: list[RecordingGuard]) -> int:
    return sum(guard.recorded() for guard in guards)


def _unreadable_line(when: str, why: object) -> str:
    return (
        f"the Prefect server at {_api_url()} fell behind: its count of recorded task runs "
        f"could not be read {when} ({why}); start it with "
        "`fanout server start` (README: Server)"
    )


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "(embedded)"
