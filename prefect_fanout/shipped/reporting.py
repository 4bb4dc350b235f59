"""Running a shipped flow from its caller: large parameters, and a bounded wait for its end.

- :func:`stash`: a parameter too large for the Prefect API travels as a file reference;
- :func:`reported_best_effort`: the flow runs on a worker thread; once its body has its
  outcome (:func:`keep_outcome`), the caller waits only so long for Prefect to record the
  run's end.
"""

from __future__ import annotations

import contextvars
import hashlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_fanout.errors import describe
from prefect_fanout.files import write_text_atomic

__all__ = [
    "INLINE_PARAMETER_BYTES",
    "REPORT_WAIT_SECONDS",
    "keep_outcome",
    "reported_best_effort",
    "stash",
]


#: Flow parameters above this many bytes of JSON travel as a file reference: Prefect's
#: API refuses flow-run parameters over 512 KB.
INLINE_PARAMETER_BYTES = 256 * 1024


def stash(text: str, suffix: str) -> str:
    """Write a large parameter to a content-addressed file beside result storage; its path.

    Flow runs started on this machine (or by workers sharing that storage) read it
    back; the file is never deleted by a run, so a rerun from the UI still works.
    """
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    folder = Path(str(PREFECT_LOCAL_STORAGE_PATH.value())).expanduser() / ".fanout-inputs"
    path = folder / f"{digest}{suffix}"
    if not path.exists():
        write_text_atomic(path, text)
    return str(path)


#: After a run's work is done (outputs written), the longest its caller waits for Prefect
#: to record the end of the flow run; a Prefect API that went away is retried for minutes.
REPORT_WAIT_SECONDS = 10.0

# Where a dispatch or map flow body leaves its outcome, so the caller has it even when
# the flow engine then fails to report the run's end to a Prefect API that went away.
_outcome_box: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar(
    "fanout_outcome_box", default=None
)


def keep_outcome(outcome: Any) -> Any:
    """Leave a flow body's outcome where :func:`reported_best_effort` finds it; return it."""
    box = _outcome_box.get()
    if box is not None:
        box.append(outcome)
    return outcome


def _warn_unreported(reason: str) -> None:
    print(
        "fanout: warning: the run finished and its outputs are written, but it could not be "
        f"reported to the Prefect API ({reason}); the UI may show it unfinished",
        file=sys.stderr,
    )


def reported_best_effort(run: Callable[[], Any]) -> Any:
    """Run a flow; once its work is done, wait a bounded time for Prefect to record it.

    The flow runs on a worker thread in the caller's context. When its body has
    returned its outcome, the caller waits at most :data:`REPORT_WAIT_SECONDS` more
    for the flow engine; if the engine fails or is still retrying a Prefect API that
    went away, the caller gets the outcome with a warning instead of an error.
    """
    box: list[Any] = []
    raised: list[BaseException] = []
    returned: list[Any] = []
    context = contextvars.copy_context()

    def work() -> None:
        _outcome_box.set(box)
        try:
            returned.append(run())
        except BaseException as exc:  # handed to the waiting caller
            raised.append(exc)

    worker = threading.Thread(target=context.run, args=(work,), name="fanout-flow", daemon=True)
    worker.start()
    done_at: float | None = None
    while worker.is_alive():
        worker.join(0.1)
        if box and done_at is None:
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() - done_at > REPORT_WAIT_SECONDS:
            _warn_unreported(f"no answer within {REPORT_WAIT_SECONDS:g} s")
            return box[0]
    if returned:
        return returned[0]
    if box:
        _warn_unreported(" ".join(describe(raised[0]).split())[:300])
        return box[0]
    raise raised[0]
