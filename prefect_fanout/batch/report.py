"""What batch mode reports: the ``batch`` section of a map's ``summary.json``."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["BatchReport", "BatchRow"]


class BatchRow(BaseModel):
    """One batch as the summary lists it.

    Attributes:
        batch_id: The provider's id (None while only queued or uploaded).
        input_file: The input file, relative to the output directory.
        status: Its last known status (``queued``, ``uploaded``, or the provider's).
        requests: Lines in it.
        completed: Lines the provider answered (its ``request_counts.completed``).
        failed: Lines the provider failed (its ``request_counts.failed``).
        resumed: True when an earlier run created it and this run waited for it.
    """

    batch_id: str | None
    input_file: str
    status: str
    requests: int
    completed: int = 0
    failed: int = 0
    resumed: bool = False


class BatchReport(BaseModel):
    """Batch mode's figures for one run.

    Attributes:
        wait: Whether the run waited for its batches (``batch_wait``).
        batches: Every batch this run created or waited for.
        created: Batches this run created (re-submissions included).
        resumed: Batches of earlier runs this run waited for instead of creating new ones.
        sent: Calls sent in the batches this run created.
        answered: Calls answered by a batch (validated and stored).
        online: Calls sent online after their batch line failed, expired or was cancelled.
        failed: Calls whose batch answer failed validation for good.
        pending: Calls still waiting in batches in flight (with ``batch_wait`` false).
        cost_usd: What the batch answers cost (the batch price); None when a price is unknown.
        online_cost_usd: What the same answers would have cost online.
        resubmitted: Batches re-sent after the provider rejected them (enqueued-token limit).
    """

    wait: bool = True
    batches: list[BatchRow] = Field(default_factory=list)
    created: int = 0
    resumed: int = 0
    sent: int = 0
    answered: int = 0
    online: int = 0
    failed: int = 0
    pending: int = 0
    cost_usd: float | None = 0.0
    online_cost_usd: float | None = 0.0
    resubmitted: int = 0
