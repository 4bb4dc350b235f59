"""Logs that scale (issue 29): at the default level a successful call writes no log row.

A map of a few hundred instant calls is run against the fake OpenAI server and the real
Prefect server; its flow run's logs (its task runs' included) are counted through the REST
API, as the UI reads them. The filter's rule is also checked on bare log records.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_fanout import RunOptions, map_corpus
from prefect_fanout.ui.quiet_logs import (
    TASK_RUNS_LOGGER,
    QuietCallsFilter,
    call_logging,
    install_quiet_calls,
    is_quiet_record,
)
from tests.fakeopenai import Error, FakeOpenAI
from tests.map_helpers import endpoint_for, tag, write_corpus
from tests.ui_helpers import PrefectAPI, poll

ITEMS = 300
ROWS_PER_CALL = 0.2  # the target: <= 2,000 rows for 10,000 calls


def record(
    message: str,
    level: int = logging.INFO,
    task_name: str | None = "agent-call",
    name: str = TASK_RUNS_LOGGER,
) -> logging.LogRecord:
    """A record as Prefect's task-run logger makes it (its adapter adds ``task_name``)."""
    made = logging.LogRecord(name, level, __file__, 1, message, None, None)
    if task_name is not None:
        made.task_name = task_name
        made.task_run_name = "default:item-1"
    return made


# ------------------------------------------------------------------ the rule, on records


@pytest.mark.unit
@pytest.mark.parametrize(
    "message", ["Finished in state Completed()", "Finished in state Cached(type=COMPLETED)"]
)
def test_a_completed_calls_finished_line_is_dropped(message: str) -> None:
    assert is_quiet_record(record(message))
    assert not is_quiet_record(record(message), kept=True)  # log_calls keeps it


@pytest.mark.unit
@pytest.mark.parametrize(
    "kept",
    [
        record("Finished in state Failed('Task run encountered an exception ...')", logging.ERROR),
        record("Finished in state Crashed('Execution was interrupted')", logging.ERROR),
        record("[default:item-1] transient error, retrying in 1.0s", logging.WARNING),
        record("Finished in state Completed()", task_name="write-partition"),
        record("Finished in state Completed()", task_name="map-chunk"),
        record("Finished in state Completed()", task_name="my-own-task"),
        record("Finished in state Completed()", task_name=None),
        record("Finished in state Completed()", name="prefect.flow_runs"),
        record("[default:item-1] test answered in 0.01s, 1 attempt(s)"),
    ],
    ids=lambda r: f"{r.levelname}-{getattr(r, 'task_name', None)}-{r.name}-{r.msg[:20]}",
)
def test_every_other_line_passes(kept: logging.LogRecord) -> None:
    assert not is_quiet_record(kept)


@pytest.mark.unit
def test_the_filter_is_installed_once_and_follows_the_submission() -> None:
    logger = logging.getLogger(TASK_RUNS_LOGGER)
    install_quiet_calls()
    install_quiet_calls()
    filters = [f for f in logger.filters if isinstance(f, QuietCallsFilter)]
    assert len(filters) == 1
    finished = record("Finished in state Completed()")
    assert not filters[0].filter(finished)
    with call_logging(True):
        assert filters[0].filter(finished)
    with call_logging(False):
        assert not filters[0].filter(finished)


# ------------------------------------------------------------- a map, counted on the server


def _settled_logs(api: PrefectAPI, flow_run_id: str) -> list[dict[str, Any]]:
    """The flow run's log rows, once its final line is in and the count stops growing."""
    logs = poll(
        lambda: api.logs(flow_run_id),
        lambda rows: any(
            row["task_run_id"] is None and row["message"].startswith("Finished in state")
            for row in rows
        ),
        60,
        "the flow run's final log line",
    )
    for _ in range(10):  # logs reach the API in batches (every 2 s by default)
        time.sleep(2.5)
        again = api.logs(flow_run_id)
        if len(again) == len(logs):
            return again
        logs = again
    return logs


@pytest.mark.server
@pytest.mark.timeout(600)
def test_a_map_writes_a_fifth_of_a_row_per_call_and_every_failure(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n:04d}", "text": f"{run} item {n}."} for n in range(ITEMS)]
    bad = records[7]["id"]
    fake_openai.script(f"{run} item 7.", Error(400, message="refused"))
    summary = map_corpus(
        write_corpus(tmp_path / "items.jsonl", records),
        agent="default",
        partition="count:4",
        output_dir=tmp_path / "out",
        options=RunOptions(endpoint=endpoint_for(fake_openai), max_workers=16, cache="off"),
    )
    assert (summary.total, summary.failed) == (ITEMS, 1)

    with PrefectAPI(prefect_server.api_url) as api:
        rows = _settled_logs(api, str(summary.flow_run_id))

        def call_runs() -> set[str]:
            runs = api.task_runs(str(summary.flow_run_id))
            return {r["id"] for r in runs if r["name"].startswith("default:")}

        poll(  # task runs reach the server as events, a moment after the run
            lambda: len(call_runs()), lambda count: count == ITEMS, 120, "the calls' task runs"
        )
        calls = call_runs()
    assert len(rows) <= ROWS_PER_CALL * ITEMS, "\n".join(r["message"][:120] for r in rows)
    assert not [r for r in rows if "answered in" in r["message"]]
    completed = [r for r in rows if r["task_run_id"] in calls and "Completed()" in r["message"]]
    assert not completed
    # the failure: the map's warning names the item, the call's task run says Failed
    failures = [r for r in rows if bad in r["message"] and r["level"] >= logging.WARNING]
    assert any("failed" in r["message"] and r["task_run_id"] is None for r in failures), failures
    assert any(
        r["task_run_id"] in calls and r["message"].startswith("Finished in state Failed")
        for r in rows
    )
    # a line per partition and the progress lines are still there
    text = "\n".join(r["message"] for r in rows)
    assert "items done" in text
