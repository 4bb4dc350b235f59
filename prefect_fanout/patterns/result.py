"""What every pattern returns: its output, one record per call, and the run's metrics.

The metrics are computed from the call records (:class:`~prefect_fanout.usage.CallRecord`)
and the run's wall time, never measured separately, so they always agree with the
per-call table the UI shows:

- ``wall_s``: seconds from the pattern's start to its end;
- ``sequential_s``: the sum of the call latencies, what the same calls would have
  taken one after another;
- ``speedup``: ``sequential_s / wall_s``;
- ``parallelism_factor``: calls per worker (seed 001's ``tasks / agents``);
- ``success_rate``: completed calls / calls;
- ``prompt_tokens``, ``completion_tokens``, ``cost_usd``: what this run spent, from
  the one usage ledger (cache hits cost $0; ``None`` when a price is unknown);
- ``cost_multiplier``: HTTP requests this run sent per call, i.e. the cost of the
  parallel run against a sequential run that asks each call once (retries after
  429s, failures and re-asks raise it; cache hits lower it);
- ``worth_parallel``: seed 001's break-even rule, ``speedup > cost_multiplier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from prefect_fanout.usage import CallRecord, Ledger

PatternStatus = Literal["completed", "partial", "failed"]


class PatternMetrics(BaseModel):
    """The run metrics of a pattern (see the module docstring for each definition).

    Attributes:
        calls: Agent calls (completed, failed and skipped).
        completed: Calls that completed.
        failed: Calls that failed.
        skipped: Calls never made (``all_or_nothing`` stopped the run, or their input failed).
        cached: Calls answered from the cache.
        workers: The most calls allowed in flight (``max_workers``).
        peak_in_flight: The most calls that were in flight at once.
        wall_s: Seconds from the pattern's start to its end.
        sequential_s: Sum of the call latencies.
        speedup: ``sequential_s / wall_s`` (None when ``wall_s`` is 0).
        parallelism_factor: ``calls / workers``.
        success_rate: ``completed / calls`` (1.0 when there were no calls).
        prompt_tokens: Prompt tokens this run spent.
        completion_tokens: Completion tokens this run spent.
        cost_usd: What this run paid; cache hits at $0; None when a price is unknown.
        requests: HTTP requests this run sent (retries included, cache hits 0).
        cost_multiplier: ``requests / calls``: parallel cost against one request per call.
        worth_parallel: ``speedup > cost_multiplier`` (seed 001's break-even rule).
    """

    calls: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0
    workers: int = 1
    peak_in_flight: int = 0
    wall_s: float = 0.0
    sequential_s: float = 0.0
    speedup: float | None = None
    parallelism_factor: float = 0.0
    success_rate: float = 1.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    requests: int = 0
    cost_multiplier: float | None = None
    worth_parallel: bool = False

    def summary_lines(self) -> dict[str, Any]:
        """The metrics as labelled lines for the run's summary artifact."""
        speedup = "n/a" if self.speedup is None else f"{self.speedup:.2f}x"
        multiplier = "n/a" if self.cost_multiplier is None else f"{self.cost_multiplier:.2f}x"
        return {
            "Wall time": f"{self.wall_s:.3f} s",
            "Sequential time (sum of call latencies)": f"{self.sequential_s:.3f} s",
            "Speedup": speedup,
            "Parallelism factor (calls / workers)": f"{self.parallelism_factor:.2f}",
            "Workers / peak in flight": f"{self.workers} / {self.peak_in_flight}",
            "Success rate": f"{self.success_rate:.1%}",
            "Cost multiplier (requests / calls)": multiplier,
            "Worth parallel (speedup > cost multiplier)": "yes" if self.worth_parallel else "no",
        }


def compute_metrics(
    records: Sequence[CallRecord], *, wall_s: float, workers: int, peak_in_flight: int = 0
) -> PatternMetrics:
    """The metrics of a run from its call records and its wall time.

    Args:
        records: Every call of the run (skipped ones included).
        wall_s: Seconds the run took.
        workers: The most calls allowed in flight.
        peak_in_flight: The most calls that were in flight at once.

    Returns:
        The metrics.
    """
    ledger = Ledger.of_records(r for r in records if r.status != "skipped")
    calls = len(records)
    completed = sum(1 for r in records if r.status == "completed")
    skipped = sum(1 for r in records if r.status == "skipped")
    sequential = round(sum(r.latency_s or 0.0 for r in records if r.status == "completed"), 6)
    wall = round(max(wall_s, 0.0), 6)
    speedup = round(sequential / wall, 4) if wall > 0 else None
    requests = sum(r.attempts for r in records)
    made = calls - skipped
    multiplier = round(requests / made, 4) if made else None
    worth = speedup is not None and multiplier is not None and speedup > multiplier
    return PatternMetrics(
        calls=calls,
        completed=completed,
        failed=calls - completed - skipped,
        skipped=skipped,
        cached=ledger.cached,
        workers=workers,
        peak_in_flight=peak_in_flight,
        wall_s=wall,
        sequential_s=sequential,
        speedup=speedup,
        parallelism_factor=round(calls / workers, 4) if workers else 0.0,
        success_rate=round(completed / calls, 4) if calls else 1.0,
        prompt_tokens=ledger.prompt_tokens,
        completion_tokens=ledger.completion_tokens,
        cost_usd=ledger.cost_usd,
        requests=requests,
        cost_multiplier=multiplier,
        worth_parallel=worth,
    )


class PatternResult(BaseModel):
    """What a pattern (``fan_out``, ``fan_in``, ``pipeline``, ``tree``) returns.

    Attributes:
        pattern: Which pattern ran (``fan-out``, ``fan-in``, ``pipeline``, ``tree``).
        status: ``completed`` (every call completed), ``partial`` (some failed,
            an output was still produced) or ``failed``.
        output: The pattern's output: a list in item order for ``fan_out`` (None
            for a failed item), the aggregator's output for ``fan_in``, the last
            stage's output(s) for ``pipeline``, the root's combined output for ``tree``.
        calls: One record per agent call, in the order they finished (skipped last).
        metrics: The run's metrics, computed from ``calls``.
        flow_run_id: The pattern's flow run.
        details: Pattern-specific extras (e.g. every stage's outputs, the tree's shape).
    """

    pattern: str
    status: PatternStatus
    output: Any = None
    calls: list[CallRecord] = Field(default_factory=list)
    metrics: PatternMetrics = Field(default_factory=PatternMetrics)
    flow_run_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every call completed."""
        return self.status == "completed"

    def call(self, call_id: str) -> CallRecord:
        """The record of one call by id.

        Raises:
            KeyError: No call has that id.
        """
        for record in self.calls:
            if record.id == call_id:
                return record
        raise KeyError(f"no call {call_id!r} in the result")
