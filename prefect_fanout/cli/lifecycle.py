"""A ``fanout`` process always ends, and soon: signals and teardown with bounded waits.

- SIGINT or SIGTERM at any point interrupts the command (a KeyboardInterrupt in the
  main thread, so Prefect marks the flow run Crashed when its API answers) and the
  process exits within :data:`SIGNAL_GRACE_SECONDS` with 130 (SIGINT) or 143 (SIGTERM),
  whatever is still running; a second signal exits at once. From the signal on, no new
  HTTP request starts (:mod:`prefect_fanout.stopping`: worker threads that would start
  one are parked), and once the command has printed that it was interrupted the process
  ends at once (``os._exit``), without the interpreter's teardown, whose joins of busy
  worker threads printed tracebacks. Every answer that finished before the signal is in
  the cache, so rerunning the command resumes.
- After the command has written its outputs and printed its result, Prefect's
  background workers (events, logs) and the embedded server get
  :data:`EXIT_GRACE_SECONDS` to finish; a process whose Prefect API went away would
  otherwise spend minutes retrying queued events at exit.
- Once those exit handlers have run (Prefect's events and logs sent, its temporary
  server stopped, Dask and Ray shut down) the console script ends the process
  (``os._exit`` with the command's code, after flushing the logging handlers and the
  console) instead of letting the interpreter tear itself down: at 1,000 calls that
  teardown (a last full garbage collection, then every module torn down) took
  0.5 s and wrote nothing. :func:`end_once_exit_handlers_ran` registers
  this first, so every other exit handler runs before it; a process that still has
  ``multiprocessing`` children, or that ends by an uncaught error rather than through
  :func:`bounded_exit`, is left to the interpreter's own teardown.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
from types import FrameType

from prefect_fanout.stopping import request_stop

SIGNAL_GRACE_SECONDS = 5.0
EXIT_GRACE_SECONDS = 5.0


_signalled: list[int] = []
_exit_code: list[int] = []  # the code bounded_exit was given: the process ends with it


def end_once_exit_handlers_ran() -> None:
    """Register the console script's end: after every later-registered exit handler.

    Call it before Prefect is imported (exit handlers run last-registered first), so
    Prefect's, Dask's and Ray's handlers all run before it (see the module).
    """
    atexit.register(_end_without_teardown)


def _end_without_teardown() -> None:
    if not _exit_code:  # not ended through bounded_exit: the interpreter's usual teardown
        return
    processes = sys.modules.get("multiprocessing")
    if processes is not None and processes.active_children():
        return  # children: the interpreter's teardown joins them
    try:
        logging.shutdown()  # registered before this handler, so it would run after it
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(_exit_code[-1])


def _hard_exit_after(seconds: float, code: int) -> None:
    def stop() -> None:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()


class Interrupted(KeyboardInterrupt):
    """The command was stopped by SIGINT or SIGTERM.

    Attributes:
        exit_code: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


def install_signal_handlers() -> None:
    """Make SIGINT and SIGTERM interrupt the command, and bound how long it may take to end."""
    received = _signalled

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if received:
            os._exit(128 + signum)  # a second signal: now
        received.append(signum)
        request_stop()
        _hard_exit_after(SIGNAL_GRACE_SECONDS, 128 + signum)
        raise Interrupted(signum)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)


def bounded_exit(code: int) -> int:
    """Give Prefect's teardown :data:`EXIT_GRACE_SECONDS`, then end the process with ``code``."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _signalled:  # interrupted: what is done is cached; nothing else is worth waiting for
        os._exit(code)
    _exit_code.append(code)
    _hard_exit_after(EXIT_GRACE_SECONDS, code)
    return code
