"""The process is stopping (SIGINT/SIGTERM): no new HTTP request may start.

The command line's signal handler calls :func:`request_stop`; every HTTP attempt
calls :func:`hold_if_stopping` before it is sent, which then parks the calling
thread until the process exits (within the signal's grace, see
:mod:`prefect_fanout.cli.lifecycle`) instead of starting a request. Parking
rather than raising keeps worker threads from failing their task runs (and
logging tracebacks) while the process winds down; requests already in flight
are left alone.
"""

from __future__ import annotations

import threading

_stop = threading.Event()


def request_stop() -> None:
    """Start no new request from now on (the process is ending)."""
    _stop.set()


def stopping() -> bool:
    """True once :func:`request_stop` was called."""
    return _stop.is_set()


def hold_if_stopping() -> None:
    """Return at once, unless the process is stopping: then never return."""
    if _stop.is_set():
        threading.Event().wait()


def reset_for_tests() -> None:
    """Forget a stop (a test in the same process)."""
    _stop.clear()
