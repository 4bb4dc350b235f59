"""Calls to the Prefect API that a run waits for only so long.

Prefect's client retries a server that went away for about a minute; best-effort
work (artifacts, the recording brake's count) must not hold a run that long.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["call_within"]

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
