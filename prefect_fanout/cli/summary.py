"""The end of every command: a one-line human summary on stderr, JSON on stdout when wanted.

The rule, the same on every command: stdout carries results only. ``fanout map`` and
``fanout dispatch`` print their JSON summary on stdout with ``--json``, or when stdout is
not a terminal (a pipe or a file, so ``| jq`` and scripts get it); ``fanout call`` prints the
answer, and its JSON with ``--json``. Every command ends with one line on stderr for a human:
what ran, how it went, and where to look (the flow run in the UI).
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["json_wanted", "run_place", "say"]


def json_wanted(as_json: bool, stdout: TextIO | None = None) -> bool:
    """True when the JSON summary goes to stdout: ``--json``, or stdout is not a terminal."""
    stream = sys.stdout if stdout is None else stdout
    return bool(as_json) or not stream.isatty()


def run_place(flow_run_id: object) -> str:
    """Where a flow run can be looked at: its UI link, or how to keep runs to look at.

    Args:
        flow_run_id: The flow run's id (None when unknown).

    Returns:
        ``flow run http://.../runs/flow-run/ID`` on a standing server; on the temporary
        server a command starts (no ``PREFECT_API_URL``), the command that keeps runs.
    """
    if not flow_run_id:
        return ""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if not settings.api.url:
        return (
            f"flow run {flow_run_id} (on a temporary server, now stopped: start "
            "`fanout server start` and export PREFECT_API_URL to keep runs)"
        )
    ui = settings.ui_url or settings.api.url.removesuffix("/api")
    return f"flow run {ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


def say(command: str, line: str) -> None:
    """Print ``fanout COMMAND: LINE`` on stderr."""
    print(f"fanout {command}: {line}", file=sys.stderr, flush=True)
