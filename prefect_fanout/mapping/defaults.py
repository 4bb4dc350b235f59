"""Defaults of a map run, importable without Prefect (the CLI's help shows them)."""

from __future__ import annotations

__all__ = [
    "DEFAULT_ACTIVE_PARTITIONS",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_PARTITION_RETRIES",
    "DEFAULT_PARTITION_RETRY_DELAY",
    "DEFAULT_REDUCE_BUDGET",
]

#: Agent calls in flight at most.
DEFAULT_MAX_WORKERS = 8
#: Partitions mapped at once; the next opens when one has handed out all its items.
DEFAULT_ACTIVE_PARTITIONS = 2
#: Retries of a partition whose output cannot be written, before it is dead-lettered.
DEFAULT_PARTITION_RETRIES = 3
#: Seconds before the first partition retry; the delay doubles after each.
DEFAULT_PARTITION_RETRY_DELAY = 1.0
#: Estimated tokens (characters / 4) of inputs one reduce call may combine.
DEFAULT_REDUCE_BUDGET = 6000
