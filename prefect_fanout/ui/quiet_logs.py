"""Logs that scale: a successful call writes no line to the run's logs unless asked.

At the default level a run's logs hold what a person reads at 100,000 calls: a line per
partition, the progress lines, and every failure, retry and warning with its item id. Two
lines a successful call would write are left out:

- ours, "[agent:item] MODEL answered in ...", which
  :func:`~prefect_fanout.llm.execute.execute_request` logs at DEBUG (at INFO with the
  request's ``log_call``);
- Prefect's, "Finished in state Completed()", which the task engine logs at INFO on the
  ``prefect.task_runs`` logger for every task run. :class:`QuietCallsFilter` drops it for
  ``agent-call`` task runs only, and only for a completed state: Failed and Crashed are
  logged at ERROR and pass, and so does every line of every other task (``write-partition``,
  ``map-chunk``, a user's own tasks) and of flow runs.

``RunOptions.log_calls`` (``--log-calls``) keeps both lines: the resolver sets each
request's ``log_call``, and the call is submitted under :func:`call_logging`, which tells
the filter (through a context variable the task runner copies into the call's thread)
to let its line through.

The filter is added to the ``prefect.task_runs`` logger when the first call of a process
is submitted (:func:`install_quiet_calls`, idempotent), never on import. It stays for the
life of the process; it only ever drops lines of ``agent-call`` task runs. A call sent on
its own to a Dask or Ray worker (a budgeted or batch run there) installs it in that worker;
there ``log_calls`` keeps our line but not Prefect's, as the context variable does not
travel to the worker.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator

__all__ = [
    "CALL_TASK_NAMES",
    "TASK_RUNS_LOGGER",
    "QuietCallsFilter",
    "call_logging",
    "install_quiet_calls",
    "is_quiet_record",
]

TASK_RUNS_LOGGER = "prefect.task_runs"
"""The logger Prefect's task engine logs a task run's lines on (its API handler sends them)."""

CALL_TASK_NAMES = frozenset({"agent-call"})
"""The tasks whose completed runs' "Finished in state" lines are dropped by default."""

_FINISHED = "Finished in state "

_kept: contextvars.ContextVar[bool] = contextvars.ContextVar("fanout_log_calls", default=False)


def is_quiet_record(record: logging.LogRecord, *, kept: bool = False) -> bool:
    """True when ``record`` is a completed agent call's "Finished in state" line to drop.

    Prefect's task engine logs that line at INFO for a completed state (``Completed()``,
    ``Cached(type=COMPLETED)``) and at ERROR for any other; its run logger adds the
    task's name to the record (``task_name``).

    Args:
        record: A record of the ``prefect.task_runs`` logger.
        kept: The call was submitted with ``log_call``: nothing is dropped.
    """
    if kept or record.levelno != logging.INFO or record.name != TASK_RUNS_LOGGER:
        return False
    if getattr(record, "task_name", None) not in CALL_TASK_NAMES:
        return False
    return record.getMessage().startswith(_FINISHED)


class QuietCallsFilter(logging.Filter):
    """Drops completed agent calls' "Finished in state" lines unless the call's are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a record :func:`is_quiet_record` names, True otherwise."""
        return not is_quiet_record(record, kept=_kept.get())


_FILTER = QuietCallsFilter()
_install_lock = threading.Lock()


def install_quiet_calls() -> None:
    """Add the filter to the ``prefect.task_runs`` logger, once per process."""
    logger = logging.getLogger(TASK_RUNS_LOGGER)
    if _FILTER in logger.filters:
        return
    with _install_lock:
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


@contextlib.contextmanager
def call_logging(log_call: bool) -> Iterator[None]:
    """Submit a call in this block: its Prefect "Finished" line is kept only with ``log_call``.

    Installs the filter (see :func:`install_quiet_calls`). Prefect's thread-pool task
    runner copies the submitting context into the task run, so the choice made here is
    the one the filter sees when the call's task run ends.
    """
    install_quiet_calls()
    token = _kept.set(log_call)
    try:
        yield
    finally:
        _kept.reset(token)
