"""Keep task-run tags cheap: skip concurrency-slot requests for tags that have no limit.

Prefect 3.8 asks the server for concurrency slots on every task run that has
tags, one write transaction per run, even when no limit exists for any of the
tags. On a SQLite-backed server (the default, and the embedded one) those
transactions serialise with every other write, and an agent-call run spends
most of its time waiting for them: 40 offline calls took 14.0 s with tags and
1.4 s without on the same machine.

Agent calls carry tags in three namespaces of ours (``agent:``, ``model:``,
``partition:``). This module narrows the names Prefect's task engine asks for
to those that really have a limit (``prefect concurrency-limit create
model:gpt-4o 8`` still works), using a per-process list of limit names that is
refreshed every :data:`REFRESH_SECONDS`. Tags outside our namespaces, and every
other task, keep Prefect's behaviour untouched. If the list cannot be read, the
names are left as they are.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import prefect.task_engine as task_engine

OUR_PREFIXES = ("tag:agent:", "tag:model:", "tag:partition:")
REFRESH_SECONDS = 10.0


class LimitNames:
    """The names of the server's concurrency limits, read at most every REFRESH_SECONDS."""

    def __init__(self) -> None:
        self._names: frozenset[str] | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def get(self) -> frozenset[str] | None:
        """The names, read again when older than REFRESH_SECONDS; None without an API."""
        with self._lock:
            if self._names is not None and time.monotonic() - self._read_at < REFRESH_SECONDS:
                return self._names
            self._names = _read_limit_names()
            self._read_at = time.monotonic()
            return self._names


def _read_limit_names() -> frozenset[str] | None:
    from prefect.client.orchestration import get_client

    try:
        names: set[str] = set()
        with get_client(sync_client=True) as client:
            offset = 0
            while True:
                page = client.read_global_concurrency_limits(limit=200, offset=offset)
                names.update(limit.name for limit in page)
                if len(page) < 200:
                    return frozenset(names)
                offset += 200
    except Exception:  # no API: behave exactly like Prefect
        return None


LIMIT_NAMES = LimitNames()
_original: Callable[..., Any] | None = None


def narrow(names: list[str], limits: LimitNames | None = None) -> list[str]:
    """The slot names worth asking for: ours only when a limit of that name exists.

    Args:
        names: The ``tag:...`` slot names Prefect would ask for.
        limits: Where the limit names come from (the process's list by default).
    """
    if not any(name.startswith(OUR_PREFIXES) for name in names):
        return names
    existing = (limits or LIMIT_NAMES).get()
    if existing is None:
        return names
    return [n for n in names if not n.startswith(OUR_PREFIXES) or n in existing]


def _narrowed_concurrency(names: str | list[str], *args: Any, **kwargs: Any) -> Any:
    assert _original is not None
    listed = [names] if isinstance(names, str) else list(names)
    return _original(narrow(listed), *args, **kwargs)


def install() -> None:
    """Route the task engine's slot requests through :func:`narrow` (idempotent, opt-in).

    Nothing calls this on import. The ``fanout`` CLI and the shipped flows
    (:mod:`prefect_fanout.flows`) call it when they start; your own flows may
    call it too. It replaces ``prefect.task_engine._concurrency`` for the whole
    process: Prefect 3.8 has no public hook to skip the per-run slot request
    for tags without a limit, so this reaches into that private name
    (``tests/test_tag_limits.py`` fails when Prefect renames or reshapes it).
    """
    global _original
    current = getattr(task_engine, "_concurrency", None)
    if current is None or current is _narrowed_concurrency:
        return
    _original = current
    task_engine._concurrency = _narrowed_concurrency
