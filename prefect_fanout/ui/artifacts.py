"""The Prefect UI as the trace: summary, table, progress and link artifacts of a run.

Dispatch and map runs describe each call as a :class:`CallRecord`; this module
turns a list of them into the artifacts the UI shows on the flow run page:

- a markdown summary: status counts, usage, cost, cache hits, slowest calls,
  failures with their errors;
- a table: one row per call (id, agent, model, status, attempts, cached,
  tokens, cost, latency, error);
- a progress artifact updated as calls finish (:class:`ProgressReporter`);
- link artifacts to trace files when they are written.
"""

from __future__ import annotations

import contextvars
import re
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

from pydantic import BaseModel

from prefect_fanout.call.result import AgentResult

SLOWEST_SHOWN = 5
FAILURES_SHOWN = 20


class CallRecord(BaseModel):
    """One call as the run's artifacts and summaries see it."""

    id: str
    agent: str
    model: str | None = None
    status: str  # completed | failed | skipped | dead_letter
    attempts: int = 0
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # what this run paid: 0 for cache hits
    latency_s: float | None = None
    error: str | None = None
    partition: str | None = None

    @classmethod
    def from_result(
        cls, call_id: str, result: AgentResult, partition: str | None = None
    ) -> CallRecord:
        """A completed call's record from its result."""
        return cls(
            id=call_id,
            agent=result.agent,
            model=result.model,
            status="completed",
            attempts=0 if result.cached else result.attempts,
            cached=result.cached,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost_usd=result.run_cost_usd,
            latency_s=result.latency_s,
            partition=partition,
        )


def artifact_key(text: str) -> str:
    """A valid artifact key (lower-case letters, digits and dashes) from any text."""
    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)[:100] or "fanout"


def totals(records: Iterable[CallRecord]) -> dict[str, Any]:
    """Counts, tokens and cost of a set of calls.

    ``cost_usd`` is None when any paid call has an unknown price (never a made-up 0).
    """
    counts: dict[str, int] = {}
    prompt = completion = cached = 0
    cost: float | None = 0.0
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
        prompt += record.prompt_tokens
        completion += record.completion_tokens
        cached += int(record.cached)
        if record.status == "completed" and not record.cached:
            cost = None if cost is None or record.cost_usd is None else cost + record.cost_usd
    return {
        "counts": counts,
        "cached": cached,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cost_usd": None if cost is None else round(cost, 10),
    }


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def summary_markdown(
    title: str, records: Sequence[CallRecord], extra: dict[str, Any] | None = None
) -> str:
    """The run's summary as markdown."""
    figures = totals(records)
    lines = [f"# {title}", "", "| status | calls |", "|---|---|"]
    for status, count in sorted(figures["counts"].items()):
        lines.append(f"| {status} | {count} |")
    lines.append(f"| **total** | {len(records)} |")
    lines += [
        "",
        f"- **Cache hits:** {figures['cached']} of {len(records)}",
        f"- **Tokens:** {figures['prompt_tokens']} prompt"
        f" + {figures['completion_tokens']} completion",
        f"- **Cost of this run:** {_money(figures['cost_usd'])}",
    ]
    for name, value in (extra or {}).items():
        lines.append(f"- **{name}:** {value}")
    timed = [r for r in records if r.latency_s is not None and not r.cached]
    if timed:
        lines += ["", "## Slowest calls", "", "| id | agent | latency (s) |", "|---|---|---|"]
        for record in sorted(timed, key=lambda r: r.latency_s or 0.0, reverse=True)[:SLOWEST_SHOWN]:
            lines.append(f"| {record.id} | {record.agent} | {record.latency_s:.3f} |")
    failures = [r for r in records if r.status != "completed"]
    if failures:
        lines += ["", "## Failures", "", "| id | agent | status | error |", "|---|---|---|---|"]
        for record in failures[:FAILURES_SHOWN]:
            error = (record.error or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {record.id} | {record.agent} | {record.status} | {error} |")
        if len(failures) > FAILURES_SHOWN:
            lines.append(f"\n... and {len(failures) - FAILURES_SHOWN} more")
    return "\n".join(lines) + "\n"


def table_rows(records: Sequence[CallRecord]) -> list[dict[str, Any]]:
    """One row per call for the table artifact."""
    return [
        {
            "id": r.id,
            "agent": r.agent,
            "model": r.model or "",
            "status": r.status,
            "attempts": r.attempts,
            "cached": r.cached,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cost_usd": r.cost_usd,
            "latency_s": None if r.latency_s is None else round(r.latency_s, 4),
            "error": (r.error or "")[:300],
            **({"partition": r.partition} if r.partition is not None else {}),
        }
        for r in records
    ]


def publish_run_artifacts(
    name: str,
    title: str,
    records: Sequence[CallRecord],
    extra: dict[str, Any] | None = None,
    links: dict[str, Path] | None = None,
) -> None:
    """Create the summary, table and link artifacts of the current flow run.

    Args:
        name: A short name for artifact keys (e.g. ``dispatch`` or ``map``).
        title: The summary's heading.
        records: Every call of the run.
        extra: More summary lines (label -> value).
        links: Trace files to link (label -> path).
    """
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    key = artifact_key(f"fanout-{name}")
    create_markdown_artifact(
        markdown=summary_markdown(title, records, extra),
        key=f"{key}-summary",
        description=f"{title}: status counts, usage, cost, cache hits, slowest calls, failures",
    )
    create_table_artifact(
        table=table_rows(records),
        key=f"{key}-calls",
        description=f"{title}: one row per agent call",
    )
    for label, path in (links or {}).items():
        create_link_artifact(
            link=Path(path).resolve().as_uri(),
            link_text=label,
            key=artifact_key(f"{key}-trace-{label}"),
            description=f"Trace file {label}",
        )


class ProgressReporter:
    """Progress of a long run: a Prefect progress artifact and a bar on stderr.

    Counting and the stderr bar happen at once in the caller's thread; the
    artifact's API requests run in order on one helper thread (inside the
    caller's run context), so a slow server never holds up the loop that
    submits calls. The artifact is updated at most every ``interval`` seconds
    (and at the end), so a 5,000-call run does not make 5,000 API requests for
    it. The stderr bar is drawn only when stderr is a terminal.
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        interval: float = 1.0,
        stream: TextIO | None = None,
        artifact: bool = True,
    ) -> None:
        self.total = max(total, 0)
        self.done = 0
        self.failed = 0
        self.description = description
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        self._lock = threading.Lock()
        self._last_publish = 0.0
        self._artifact_id: UUID | None = None
        self._executor: ThreadPoolExecutor | None = None
        if artifact:
            # The artifact belongs to the current flow run: carry its context over.
            self._context = contextvars.copy_context()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fanout-progress")
            self._executor.submit(self._context.run, self._create, self._percent())
        self._draw()

    def _percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 1)

    def _create(self, progress: float) -> None:
        from prefect.artifacts import create_progress_artifact

        try:
            self._artifact_id = create_progress_artifact(  # type: ignore[assignment]
                progress=progress, description=self.description
            )
        except Exception:  # no flow run context or API: progress stays on stderr
            self._artifact_id = None

    def advance(self, n: int = 1, failed: bool = False) -> None:
        """Count ``n`` finished units (``failed`` ones are also counted as failed)."""
        with self._lock:
            self.done = min(self.total, self.done + n)
            self.failed += n if failed else 0
            now = time.monotonic()
            publish = now - self._last_publish >= self.interval or self.done >= self.total
            if publish:
                self._last_publish = now
            progress = self._percent()
        self._draw()
        if publish:
            self._publish(progress)

    def _publish(self, progress: float) -> None:
        if self._executor is not None:
            self._executor.submit(self._context.run, self._update, progress)

    def _update(self, progress: float) -> None:
        if self._artifact_id is None:
            return
        from prefect.artifacts import update_progress_artifact

        try:
            update_progress_artifact(artifact_id=self._artifact_id, progress=progress)
        except Exception:  # progress is informative; never fail the run for it
            pass

    def _draw(self) -> None:
        if not getattr(self.stream, "isatty", lambda: False)():
            return
        width = 30
        filled = 0 if self.total == 0 else int(width * self.done / self.total)
        bar = "#" * filled + "-" * (width - filled)
        failed = f" ({self.failed} failed)" if self.failed else ""
        self.stream.write(f"\r{self.description} [{bar}] {self.done}/{self.total}{failed}")
        if self.done >= self.total:
            self.stream.write("\n")
        self.stream.flush()

    def finish(self) -> None:
        """Publish the final figure and wait for every pending artifact update."""
        self._publish(self._percent())
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
