"""A command's heap, frozen as each run of its calls starts, so full collections skip it.

Before its first call a ``fanout`` command has imported Prefect, pydantic and ``openai``,
started its flow run and prepared its job: objects that live as long as the command (more
than 10,000 in a small map; ``frozen_objects`` counts them). CPython's full (generation 2)
collection walks every tracked object, and a map's calls trigger one every few seconds;
each holds the GIL, so every call thread and the thread submitting calls stand still while
it walks. In B1 (1,000 calls of 0.5 s, 50 in flight) six full collections took 0.55 s,
the longest 0.2 s, and the process spent 0.5-1.1 s more CPU than with the heap frozen
(A/B runs on a noisy two-core machine).

:func:`freeze_when_calls_start` moves every object alive at that moment into the
permanent generation (``gc.freeze``); later collections walk only what the calls make.
A run of many calls keeps what they made (outcomes, records) until it ends, so the walk
grows again: each run of calls (a partition, each child run of ``calls_per_run`` calls)
freezes again as it starts. In B4 (10,000 calls in two child runs) full collections took
9.2 s in all before, up to 0.65 s each.

It acts only inside :func:`heap_frozen_while_calls_run`, the block a ``fanout`` command
runs in: a flow called from a user's own process leaves that process's collector alone.
When the block ends, the objects are unfrozen (``gc.unfreeze``), so a process that runs
commands in-process (a test, a notebook) gets back a collector that sees everything, and
nothing that became garbage meanwhile is kept.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["freeze_when_calls_start", "frozen_objects", "heap_frozen_while_calls_run"]

_lock = threading.Lock()
_block_open = False
_frozen_objects = 0  # what the block's last freeze left frozen; 0: it froze nothing


def frozen_objects() -> int:
    """How many objects the last block had frozen at its last freeze (0: it froze none)."""
    return _frozen_objects


@contextmanager
def heap_frozen_while_calls_run() -> Iterator[None]:
    """The block inside which runs of calls freeze the heap; it is unfrozen at its end."""
    global _block_open, _frozen_objects
    with _lock:
        _block_open, _frozen_objects = True, 0
    try:
        yield
    finally:
        with _lock:
            _block_open = False
            froze = _frozen_objects > 0
        if froze:
            gc.unfreeze()


def freeze_when_calls_start() -> bool:
    """Freeze the heap as a run of calls starts, inside the block (see the module).

    Returns:
        True when this call froze it; False outside the block.
    """
    global _frozen_objects
    with _lock:
        if not _block_open:
            return False
        gc.freeze()
        _frozen_objects = gc.get_freeze_count()
    return True
