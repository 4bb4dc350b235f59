"""Print a dry run: a table on stdout, or ``--json``; the exit code is 0."""

from __future__ import annotations

import sys
from typing import Any

from prefect_fanout.errors import EXIT_OK

__all__ = ["print_dry_run"]


def _usd(low: float | None, high: float | None) -> str:
    if low is None or high is None:
        return "unknown (no price)"
    return f"${low:.6f} - ${high:.6f}"


def print_dry_run(report: Any, *, as_json: bool) -> int:
    """Print a :class:`~prefect_fanout.budget.dryrun.DryRun` and return exit code 0."""
    if as_json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
        return EXIT_OK
    lines = [
        f"dry run of {report.kind}: no request was made",
        f"calls: {report.calls} in all, {report.cached} cached, {report.to_ask} to ask",
        f"input tokens (estimated, {report.tokenizer}): {report.input_tokens}",
        f"output tokens: at most {report.output_tokens_max} (max_tokens per call)",
        f"cost: {_usd(report.usd_low, report.usd_high)} ({', '.join(report.models) or '-'})",
    ]
    if report.budget_tokens is not None:
        lines.append(f"budget: {report.budget_tokens} tokens")
    if report.budget_usd is not None:
        lines.append(f"budget: ${report.budget_usd:g}")
    lines.append("")
    lines.append(
        f"{report.level:<24} {'calls':>7} {'cached':>7} {'to ask':>7} {'in tokens':>10} "
        f"{'out max':>9}  cost"
    )
    for group in report.groups:
        template = f" ({group.from_template} from the template)" if group.from_template else ""
        lines.append(
            f"{group.key[:24]:<24} {group.calls:>7} {group.cached:>7} {group.to_ask:>7} "
            f"{group.input_tokens:>10} {group.output_tokens_max:>9}  "
            f"{_usd(group.usd_low, group.usd_high)}{template}"
        )
    lines.extend(f"note: {note}" for note in report.notes)
    sys.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK
