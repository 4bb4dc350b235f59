"""Waiting for a batch: the ``poll-batch`` Prefect task, retried with a growing delay.

Each attempt reads the batch once (``GET /v1/batches/{id}``), updates the batch's progress
artifact (its status and request counts) and, while the batch is in flight, fails with
:class:`BatchInFlight` so Prefect retries it after the next delay: the first is
``batch_poll_seconds`` (default 10 s), each next 1.5 times the last, up to
:data:`MAX_DELAY_SECONDS`. Enough retries are allowed to outlast the 24-hour window (plus
a margin), so a batch the provider never ends fails its task instead of hanging the run.
A failed read (the network, a 5xx) is retried the same way.
"""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_fanout.batch.api import IN_FLIGHT, BatchAPI
from prefect_fanout.llm.endpoints import LLMEndpoint

__all__ = [
    "DEFAULT_POLL_SECONDS",
    "BatchInFlight",
    "describe_batch",
    "poll_delays",
    "poll_task",
]

DEFAULT_POLL_SECONDS = 10.0
MAX_DELAY_SECONDS = 300.0
GROWTH = 1.5
WINDOW_SECONDS = 26 * 3600  # the 24-hour window, and room for finalizing


class BatchInFlight(Exception):
    """The batch has not ended yet (the poll task is retried)."""


def poll_delays(first: float) -> list[float]:
    """The delays between polls: ``first``, growing 1.5 times each, up to 300 s (or ``first``).

    Prefect repeats the last delay for the retries beyond the list (at most 50 entries).
    """
    cap = max(first, MAX_DELAY_SECONDS)
    delays: list[float] = []
    delay = first
    while len(delays) < 50:
        delays.append(round(min(delay, cap), 3))
        if delay >= cap:
            break
        delay *= GROWTH
    return delays


def poll_retries(delays: list[float]) -> int:
    """Retries enough for the polls to outlast the batch window."""
    spent = sum(delays)
    rest = max(0.0, WINDOW_SECONDS - spent)
    return len(delays) + math.ceil(rest / delays[-1])


def describe_batch(batch: dict[str, Any]) -> str:
    """One line: ``batch_x: in_progress, 120/200 done, 3 failed``."""
    counts = batch.get("request_counts") or {}
    return (
        f"{batch.get('id')}: {batch.get('status')}, {counts.get('completed', 0)}/"
        f"{counts.get('total', 0)} done, {counts.get('failed', 0)} failed"
    )


def _progress(batch: dict[str, Any]) -> float:
    counts = batch.get("request_counts") or {}
    total = counts.get("total") or 0
    if batch.get("status") not in IN_FLIGHT:
        return 100.0
    done = (counts.get("completed") or 0) + (counts.get("failed") or 0)
    return round(100.0 * done / total, 1) if total else 0.0


def _update_artifact(artifact_id: UUID | None, batch: dict[str, Any]) -> None:
    if artifact_id is None:
        return
    from prefect.artifacts import update_progress_artifact

    try:
        update_progress_artifact(artifact_id, _progress(batch), description=describe_batch(batch))
    except Exception:  # progress informs; it never fails a poll
        pass


def _poll_batch(
    batch_id: str, endpoint: LLMEndpoint, artifact_id: UUID | None = None
) -> dict[str, Any]:
    """Read the batch once; raise :class:`BatchInFlight` while it has not ended.

    Returns:
        The ended batch (its final status, request counts and file ids).
    """
    batch = BatchAPI(endpoint).retrieve(batch_id)
    _update_artifact(artifact_id, batch)
    if batch.get("status") in IN_FLIGHT:
        raise BatchInFlight(describe_batch(batch))
    return batch


def _worth_retrying(task_: Any, task_run: Any, state: Any) -> bool:
    """Retry while in flight or on a transient error; never for a batch that is gone."""
    import openai

    try:
        state.result()
    except (openai.NotFoundError, openai.AuthenticationError, openai.PermissionDeniedError):
        return False
    except Exception:
        return True
    return False


_poll_batch_task = task(
    _poll_batch,
    name="poll-batch",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=_worth_retrying,
)


def poll_task(batch_id: str, first_delay: float | None) -> Any:
    """The ``poll-batch`` task of one batch, with its retries and delays."""
    delays = poll_delays(first_delay or DEFAULT_POLL_SECONDS)
    return _poll_batch_task.with_options(
        task_run_name=f"batch:{batch_id}",
        retries=poll_retries(delays),
        retry_delay_seconds=delays,
    )
