"""The Prefect UI as the trace: summary, table, progress and link artifacts of a run.

Dispatch and map runs describe each call as a :class:`CallRecord`; this module
turns a list of them into the artifacts the UI shows on the flow run page:

- a markdown summary: status counts, usage, cost, cache hits, the time spent
  waiting for capacity per endpoint (:mod:`prefect_fanout.limits`), slowest calls,
  failures with their errors;
- a table: one row per call (id, agent, model, status, attempts, cached,
  tokens, cost, latency, error);
- a progress artifact updated as calls finish (:mod:`prefect_fanout.ui.progress`);
- link artifacts to trace files when they are written.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect_fanout.bounded import call_within
from prefect_fanout.redact import redact, redact_value
from prefect_fanout.usage import CallRecord, Ledger, limit_wait_by_endpoint

SLOWEST_SHOWN = 5
FAILURES_SHOWN = 20


def artifact_key(text: str) -> str:
    """A valid artifact key (lower-case letters, digits and dashes) from any text."""
    key = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)[:100] or "fanout"


def _money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def summary_markdown(
    title: str, records: Sequence[CallRecord], extra: dict[str, Any] | None = None
) -> str:
    """The run's summary as markdown."""
    ledger = Ledger.of_records(records)
    counts = Counter(record.status for record in records)
    lines = [f"# {title}", "", "| status | calls |", "|---|---|"]
    for status, count in sorted(counts.items()):
        lines.append(f"| {status} | {count} |")
    lines.append(f"| **total** | {len(records)} |")
    lines += [
        "",
        f"- **Cache hits:** {ledger.cached} of {len(records)}",
        f"- **Tokens:** {ledger.prompt_tokens} prompt + {ledger.completion_tokens} completion",
        f"- **Cost of this run:** {_money(ledger.cost_usd)}",
    ]
    for name, value in (extra or {}).items():
        lines.append(f"- **{name}:** {value}")
    lines += limit_wait_lines(records)
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


def limit_wait_lines(records: Sequence[CallRecord]) -> list[str]:
    """The summary's "Waiting for capacity" section (empty when no call went to an endpoint)."""
    totals = limit_wait_by_endpoint(records)
    if not totals:
        return []
    lines = [
        "",
        "## Waiting for capacity",
        "",
        "| endpoint | calls | wait (s) |",
        "|---|---|---|",
    ]
    for name, (calls, waited) in sorted(totals.items()):
        lines.append(f"| {name} | {calls} | {waited:.3f} |")
    return lines


TABLE_ROWS = 5000
"""Most rows in the per-call table artifact (a run's failures first): a table of 100,000
rows is a 30 MB artifact no page draws; every call is in the run's outputs and task runs."""


def shown_in_table(records: Sequence[CallRecord], most: int = TABLE_ROWS) -> list[CallRecord]:
    """The records the table shows: all of them, or the first ``most`` with failures first."""
    if len(records) <= most:
        return list(records)
    first = [r for r in records if r.status != "completed"][:most]
    rest = (r for r in records if r.status == "completed")
    return first + [r for _, r in zip(range(most - len(first)), rest, strict=False)]


def table_rows(records: Sequence[CallRecord]) -> list[dict[str, Any]]:
    """One row per call for the table artifact."""
    return [
        {
            "id": r.id,
            "agent": r.agent,
            "model": r.model or "",
            "status": r.status,
            "finish_reason": r.finish_reason or "",
            "attempts": r.attempts,
            "cached": r.cached,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "cost_usd": r.cost_usd,
            "latency_s": None if r.latency_s is None else round(r.latency_s, 4),
            "limit_wait_s": round(r.limit_wait_s, 4),
            "error": (r.error or "")[:300],
            **({"partition": r.partition} if r.partition is not None else {}),
            **({"batch_id": r.batch_id} if r.batch_id is not None else {}),
        }
        for r in records
    ]


#: The longest a run waits for the Prefect API to take its artifacts.
PUBLISH_WAIT_SECONDS = 10.0


def publish_run_artifacts(
    name: str,
    title: str,
    records: Sequence[CallRecord],
    extra: dict[str, Any] | None = None,
    links: dict[str, Path] | None = None,
    wait: float = PUBLISH_WAIT_SECONDS,
) -> None:
    """Create the summary, table and link artifacts of the current flow run, best effort.

    The requests run on a daemon thread (in the caller's run context) and the
    caller waits at most ``wait`` seconds: a Prefect API that went away delays a
    finished run by that much, not by the client's retries of every request.

    Args:
        name: A short name for artifact keys (e.g. ``dispatch`` or ``map``).
        title: The summary's heading.
        records: Every call of the run.
        extra: More summary lines (label -> value).
        links: Trace files to link (label -> path).
        wait: Seconds to wait for the API.

    Raises:
        TimeoutError: The API did not take the artifacts in time.
        Exception: The API refused them (the client's error).
    """
    call_within(wait, "the run's artifacts", _create_artifacts, name, title, records, extra, links)


def _create_artifacts(
    name: str,
    title: str,
    records: Sequence[CallRecord],
    extra: dict[str, Any] | None,
    links: dict[str, Path] | None,
) -> None:
    from prefect.artifacts import (
        create_link_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    key = artifact_key(f"fanout-{name}")
    create_markdown_artifact(
        markdown=redact(summary_markdown(title, records, extra)),
        key=f"{key}-summary",
        description=f"{title}: status counts, usage, cost, cache hits, slowest calls, failures",
    )
    shown = shown_in_table(records)
    more = (
        "" if len(shown) == len(records) else f" ({len(shown)} of {len(records)}, failures first)"
    )
    create_table_artifact(
        table=redact_value(table_rows(shown)),
        key=f"{key}-calls",
        description=f"{title}: one row per agent call{more}",
    )
    for label, path in (links or {}).items():
        create_link_artifact(
            link=Path(path).resolve().as_uri(),
            link_text=label,
            key=artifact_key(f"{key}-trace-{label}"),
            description=f"Trace file {label}",
        )
