"""Issue 22, the UI says what happened: a map with failures ends "Partial"; failures readable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakeopenai import Error, FakeOpenAI
from tests.map_helpers import tag, write_corpus
from tests.test_map_cli import run_cli
from tests.ui_helpers import PrefectAPI, poll

pytestmark = pytest.mark.server


def test_a_map_with_failed_items_ends_partial_with_a_readable_failures_artifact(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} item {n} please"} for n in range(4)]
    fake_openai.script(f"{run} item 2 please", Error(400, "this item is poison"))
    out = tmp_path / "out"
    source = write_corpus(tmp_path / "in.jsonl", records)
    done = run_cli(
        prefect_server, fake_openai, str(source), "--agent", "default",
        "--partition", "count:2", "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    flow_run_id = json.loads(done.stdout)["flow_run_id"]
    with PrefectAPI(prefect_server.api_url) as api:
        flow_run = api.flow_run(flow_run_id)
        assert (flow_run["state_type"], flow_run["state_name"]) == ("COMPLETED", "Partial")
        assert flow_run["state"]["message"].startswith("1 of 4 items failed")
        artifacts = poll(
            lambda: api.artifacts(flow_run_id),
            lambda found: any(a["key"] == "fanout-map-failures" for a in found),
            30,
            "the failures artifact",
        )
    failures = next(a for a in artifacts if a["key"] == "fanout-map-failures")["data"]
    assert f"default:{run}-2" in failures and "this item is poison" in failures
    assert f"{run} item 2 please" in failures  # the prompt excerpt
    assert f"{run}-1" not in failures  # only failed calls are listed

    rerun_ok = run_cli(
        prefect_server, fake_openai, str(source), "--agent", "default",
        "--partition", "count:2", "--output", str(out),
    )  # fmt: skip
    assert rerun_ok.returncode == 0, rerun_ok.stderr[-2000:]
    with PrefectAPI(prefect_server.api_url) as api:
        flow_run = api.flow_run(json.loads(rerun_ok.stdout)["flow_run_id"])
    assert flow_run["state_name"] == "Completed"
    assert flow_run["state"]["message"] == "4 of 4 items completed, 3 cached"
