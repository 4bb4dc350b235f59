"""Task-run tags that cost nothing: an agent call carries only the tags a concurrency limit uses.

Prefect 3.8 asks the server for concurrency slots on every task run that has
tags, one write transaction per run, even when no limit exists for any of them
(``prefect.concurrency.sync.concurrency`` skips the request only for an empty
list). At 1,000 calls that request was the largest single cost of a call: every
worker thread waited in ``acquire_concurrency_slots_with_lease``.

So each call's descriptive tags (``agent:NAME``, ``model:MODEL``,
``partition:KEY``, ``fanout:STAGE``) stay on its request, and the task run gets
only those that a tag concurrency limit names (``prefect concurrency-limit
create model:gpt-4o 8`` still bounds every call of that model). The names of the
limits are read from the API once and kept for :data:`REFRESH_SECONDS`; every
dispatch and map run reads them again when it starts, so a limit created before
a run always applies to it. Without an API to ask, every tag is kept (exactly
Prefect's behaviour). The agent, model and partition of every call stay visible
in its run name (``agent:item``) and in the run's per-call table artifact.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

REFRESH_SECONDS = 5.0
_PAGE = 200


class LimitNames:
    """The tag names that have a concurrency limit, kept fresh without blocking calls.

    The first read waits for the API; after that a read older than
    :data:`REFRESH_SECONDS` is refreshed on a background thread while calls go on
    with the names already known. A failed read keeps the names already known: a
    Prefect API that went away mid-run must not stall the loop that submits calls.
    """

    def __init__(self) -> None:
        self._names: frozenset[str] | None = None
        self._read_at = float("-inf")
        self._ever_read = False
        self._refreshing = False
        self._lock = threading.Lock()

    def get(self) -> frozenset[str] | None:
        """The limited tag names (without ``tag:``), or None when they could never be read."""
        with self._lock:
            if not self._ever_read:
                self._ever_read = True
                self._store(_read_limited_tags())
            elif time.monotonic() - self._read_at >= REFRESH_SECONDS and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="fanout-limits", daemon=True).start()
            return self._names

    def refresh(self) -> None:
        """Read the names now (a run calls this when it starts, so new limits apply to it)."""
        names = _read_limited_tags()
        with self._lock:
            self._ever_read = True
            self._store(names)

    def _refresh(self) -> None:
        names = _read_limited_tags()
        with self._lock:
            self._store(names)
            self._refreshing = False

    def _store(self, names: frozenset[str] | None) -> None:
        self._read_at = time.monotonic()
        if names is not None:
            self._names = names


def _read_limited_tags() -> frozenset[str] | None:
    from prefect.client.orchestration import get_client

    try:
        names: set[str] = set()
        with get_client(sync_client=True) as client:
            offset = 0
            while True:
                page = client.read_global_concurrency_limits(limit=_PAGE, offset=offset)
                names.update(limit.name.removeprefix("tag:") for limit in page)
                if len(page) < _PAGE:
                    return frozenset(names)
                offset += _PAGE
    except Exception:  # no API to ask: keep every tag, as Prefect would
        return None


LIMITED_TAGS = LimitNames()


def run_tags(tags: Iterable[str], limited: LimitNames | None = None) -> set[str]:
    """The tags a call's task run carries: those a concurrency limit names.

    Args:
        tags: The call's descriptive tags.
        limited: Where the limit names come from (the process's list by default).

    Returns:
        The tags with a limit; all of them when the limits cannot be read.
    """
    tags = set(tags)
    names = (limited or LIMITED_TAGS).get()
    if names is None:
        return tags
    return {tag for tag in tags if tag in names}
