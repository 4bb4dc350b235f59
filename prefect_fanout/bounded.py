"""Calls to the Prefect API that a run waits for only so long, or not at all.

Prefect's client retries a server that went away for about a minute; best-effort
work (artifacts, the recording brake's count) must not hold a run that long.

Within :func:`best_effort_work_joined_at_end` (the ``fanout`` command's block), best-effort
work handed to :func:`now_or_by_the_end` (a run's artifacts) waits until the command's flow
run has its final state (the flow's state hooks call :func:`start_work_left`), then runs on
a thread, and the block's end joins it. A flow run's end waits for its heartbeat thread,
which sleeps in whole seconds (``prefect.flow_engine``); the artifacts are created during
that wait instead of before the state is set. Outside the block (a flow called from
Python, a deployment's run) the work runs at once: the caller finds the artifacts there
when the flow returns.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = [
    "KeptClient",
    "best_effort_work_joined_at_end",
    "call_within",
    "now_or_by_the_end",
    "on_final_state",
    "start_work_left",
]

T = TypeVar("T")


def call_within(seconds: float, what: str, function: Callable[..., T], *args: Any) -> T:
    """Run ``function(*args)`` in a daemon thread and wait at most ``seconds`` for it.

    The thread runs in a copy of the caller's context (its Prefect settings and run
    context); being a daemon, one that hangs never holds up the interpreter's exit.

    Args:
        seconds: How long to wait.
        what: What the call hands the API, for the timeout's message.
        function: What to call.
        *args: Its arguments.

    Returns:
        What ``function`` returned.

    Raises:
        TimeoutError: ``function`` did not return in time.
        Exception: What ``function`` raised.
    """
    outcome: list[tuple[bool, Any]] = []
    context = contextvars.copy_context()

    def call() -> None:
        try:
            outcome.append((True, context.run(function, *args)))
        except BaseException as exc:  # handed to the waiting caller
            outcome.append((False, exc))

    thread = threading.Thread(target=call, name="fanout-bounded-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if not outcome:
        raise TimeoutError(f"the Prefect API did not take {what} within {seconds:g} s")
    returned, value = outcome[0]
    if not returned:
        raise value
    return value


class KeptClient:
    """A sync Prefect client opened on first use and kept open for the process's life.

    ``prefect.get_client()`` builds a new client each time, and its TLS context alone costs
    about 18 ms of CPU, on the GIL a run's calls share; code that talks to the API again and
    again (limits, budgets, the recording brake) keeps one. Its pool closes at exit.
    """

    def __init__(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The client (a ``SyncPrefectClient``), opened the first time."""
        with self._lock:
            if self._client is None:
                from prefect.client.orchestration import get_client

                client = get_client(sync_client=True)
                client.__enter__()
                self._client = client
            return self._client


#: The longest the end of :func:`best_effort_work_joined_at_end` waits for the work left to it
#: (each piece bounds its own calls to the API; this bounds them all).
AT_END_WAIT_SECONDS = 15.0


class _WorkLeft:
    """Best-effort work left to a block's end: waiting to start, then started."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: list[tuple[contextvars.Context, Callable[..., object], tuple[Any, ...]]] = []
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        """Start every piece still waiting, each on its own daemon thread."""
        with self.lock:
            waiting, self.waiting = self.waiting, []
        for context, function, args in waiting:
            thread = threading.Thread(
                target=_best_effort,
                args=(context, function, args),
                name="fanout-by-the-end",
                daemon=True,
            )
            with self.lock:
                self.threads.append(thread)
            thread.start()


def _best_effort(context: contextvars.Context, function: Callable[..., object], args: Any) -> None:
    try:
        context.run(function, *args)
    except Exception:  # best effort: the run's result is what counts
        logging.getLogger("prefect_fanout").warning("best-effort work failed", exc_info=True)


_left: contextvars.ContextVar[_WorkLeft | None] = contextvars.ContextVar(
    "fanout_work_left_to_the_end", default=None
)


@contextmanager
def best_effort_work_joined_at_end(seconds: float = AT_END_WAIT_SECONDS) -> Iterator[None]:
    """Within: :func:`now_or_by_the_end` leaves its work to the run's end (see the module).

    The work starts when a flow's state hook calls :func:`start_work_left` (its final state
    is set), or else at the block's end; the block's end waits for it.

    Args:
        seconds: The longest the block's end waits for that work, in all.
    """
    left = _WorkLeft()
    token = _left.set(left)
    try:
        yield
    finally:
        _left.reset(token)
        left.start()
        deadline = time.monotonic() + seconds
        for thread in left.threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def now_or_by_the_end(function: Callable[..., object], *args: Any) -> None:
    """Run best-effort ``function(*args)`` now, or within the block once the run's state is set.

    The work runs in a copy of the caller's context (its Prefect settings and run context).
    ``function`` reports its own failures; one that still raises is logged, never raised.

    Args:
        function: What to run.
        *args: Its arguments.
    """
    left = _left.get()
    if left is None:
        function(*args)
        return
    with left.lock:
        left.waiting.append((contextvars.copy_context(), function, args))


def on_final_state(hook: Callable[..., object]) -> dict[str, list[Callable[..., object]]]:
    """Prefect ``@flow`` keyword arguments that call ``hook`` at any final state of the run."""
    names = ("on_completion", "on_failure", "on_cancellation", "on_crashed")
    return {name: [hook] for name in names}


def start_work_left(*_: object) -> None:
    """A flow state hook: start the work left to the block's end now (the state is set)."""
    left = _left.get()
    if left is not None:
        left.start()
