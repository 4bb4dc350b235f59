"""Let Prefect's temporary server record the run before it stops, so its shutdown is quiet.

With no ``PREFECT_API_URL``, Prefect starts a temporary server in a subprocess and stops it
(SIGTERM) when the process exits. The task runs' final states reach that server as events,
which the client sends in the background and the server's task-run recorder writes one at a
time. At exit the client's event worker sends what it still holds, and the server is stopped
right after: a recorder cancelled in the middle of writing logs ``Error flushing 1 events``
with two ``CancelledError`` tracebacks on the terminal (seen on a first run, in a new
``PREFECT_HOME``, when the server is slowest), and that task run stays unfinished in its
database.

:func:`let_temporary_server_finish` is called when a command or the demo has its result: it
sends the client's pending events now, then waits (at most :data:`SETTLE_SECONDS`) until the
server holds no task run in an open state and its count of task runs stood still for
:data:`STILL_SECONDS`; then nothing is in flight when the server is stopped. When no temporary
server runs (``PREFECT_API_URL`` set, or no flow ran) it returns at once.
"""

from __future__ import annotations

import logging
import sys
import time

from prefect.client.orchestration import get_client
from prefect.events.worker import EventsWorker

from prefect_fanout.bounded import call_within

__all__ = ["SETTLE_SECONDS", "let_temporary_server_finish"]

logger = logging.getLogger("prefect_fanout.settle")

SETTLE_SECONDS = 10.0
"""The longest wait for the temporary server to record what was sent."""

STILL_SECONDS = 0.5
"""How long the server's count of task runs must stand still (nothing more arriving)."""

OPEN_STATE_TYPES = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]


def _count(client: object, state_types: list[str] | None) -> int:
    body = {"task_runs": {"state": {"type": {"any_": state_types}}}} if state_types else {}
    response = client.request("POST", "/task_runs/count", json=body)  # type: ignore[attr-defined]
    response.raise_for_status()
    return int(response.json())


def let_temporary_server_finish(timeout: float = SETTLE_SECONDS) -> bool:
    """Send the pending events and wait until the temporary server has recorded them.

    Returns:
        True when the server is done (or is not a temporary one), False when the wait ran
        out or the server could not be asked (the process then exits as before).
    """
    # Prefect's client imports the temporary server's module only to start one: when it is not
    # imported, none runs (and importing it here would cost every command a second).
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:
        return True
    # The client's own singleton (what get_client() starts with no PREFECT_API_URL): asked
    # whether it runs, never started here.
    if not server_module.SubprocessASGIServer().running:
        return True
    deadline = time.monotonic() + timeout
    try:
        EventsWorker.drain_all(timeout=timeout, at_exit=False)
        with get_client(sync_client=True) as client:
            last, still_since = -1, time.monotonic()
            while time.monotonic() < deadline:
                left = max(0.1, deadline - time.monotonic())
                total = call_within(left, "a count request", lambda: _count(client, None))
                open_runs = call_within(
                    left, "a count request", lambda: _count(client, OPEN_STATE_TYPES)
                )
                now = time.monotonic()
                if total != last:
                    last, still_since = total, now
                elif open_runs == 0 and now - still_since >= STILL_SECONDS:
                    return True
                time.sleep(0.1)
    except Exception as exc:  # the server is gone or odd: exit as before, never hang
        logger.debug("could not wait for the temporary server: %s", exc)
    return False
