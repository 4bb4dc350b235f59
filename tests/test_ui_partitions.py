"""The trace past the server's graph limit: partitions are child flow runs whose graphs draw.

A Prefect server draws at most ``PREFECT_SERVER_FLOW_RUN_GRAPH_MAX_NODES`` nodes
(10,000 by default) in one flow run's graph. This test starts a server whose limit is
12 and runs a map of 30 calls with ``--calls-per-run 5``: one flow run holding every
call could not be drawn, while the map's flow run (its partitions and the reduce) and
each partition's run (its calls and the write of its file) are all under the limit.
Checked through the API the UI reads (``/flow_runs/{id}/graph-v2``) and in headless
Chromium: every graph draws, the partitions are listed with their states, and the
map's artifacts are there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PrefectServer, start_prefect_server, stop_process_group, wait_healthy
from tests.map_helpers import tag, write_corpus
from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, PrefectAPI, point_ui_at_api

pytestmark = pytest.mark.server

GRAPH_NODES = 12
ITEMS = 30


@pytest.fixture(scope="module")
def small_graph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server that draws at most GRAPH_NODES nodes in one flow run's graph."""
    server = start_prefect_server(
        tmp_path_factory.mktemp("small-graph"),
        settings={"PREFECT_SERVER_FLOW_RUN_GRAPH_MAX_NODES": str(GRAPH_NODES)},
    )
    try:
        wait_healthy(server)
        yield server
    finally:
        stop_process_group(server.process)


@pytest.fixture(scope="module")
def mapped(small_graph_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A map of ITEMS calls in 3 partitions, at most 5 calls a run, with a reduce."""
    work = tmp_path_factory.mktemp("map")
    run = tag()
    records = [{"id": f"{run}-{n:02d}", "text": f"{run} item {n}"} for n in range(ITEMS)]
    source = write_corpus(work / "items.jsonl", records)
    command = [sys.executable, "-m", "prefect_fanout.cli", "map", str(source)]
    command += ["--output", str(work / "out"), "--model", "test", "--agent", "default"]
    command += ["--partition", "count:3", "--calls-per-run", "5", "--reduce", "default"]
    done = subprocess.run(
        command,
        env=small_graph_server.env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["completed"] == ITEMS, summary
    return summary


def _graph(api_url: str, flow_run_id: str) -> httpx.Response:
    return httpx.get(f"{api_url}/flow_runs/{flow_run_id}/graph-v2", timeout=30)


def test_every_graph_is_under_the_limit_and_the_calls_are_not(
    small_graph_server: PrefectServer, mapped: dict
) -> None:
    api_url = small_graph_server.api_url
    with PrefectAPI(api_url) as api:
        children = api.child_runs(mapped["flow_run_id"])
        names = sorted(child["name"] for child in children)
        assert names == [f"partition {p} ({n}/2)" for p in ("0000", "0001", "0002") for n in (1, 2)]
        assert {child["state_type"] for child in children} == {"COMPLETED"}
        runs = api.task_runs(mapped["flow_run_id"])
        calls = [run for run in runs if run["name"].startswith("default:")]
        assert len(calls) > GRAPH_NODES  # one flow run holding them all could not be drawn

    parent = _graph(api_url, mapped["flow_run_id"])
    assert parent.status_code == 200, parent.text
    assert len(parent.json()["nodes"]) <= GRAPH_NODES
    kinds = {node["kind"] for _id, node in parent.json()["nodes"]}
    assert "flow-run" in kinds  # the partitions are drawn as subflow runs
    for child in children:
        graph = _graph(api_url, child["id"])
        assert graph.status_code == 200, (child["name"], graph.text)
        nodes = [node for _id, node in graph.json()["nodes"]]
        labels = {node["label"] for node in nodes}
        assert len([label for label in labels if label.startswith("default:")]) == 5, labels
        if child["name"].endswith("(2/2)"):  # the last run of a partition writes its file
            assert any(label.startswith("partition:") for label in labels), labels


@pytest.mark.browser
def test_the_browser_draws_the_map_and_each_partition(
    small_graph_server: PrefectServer, mapped: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from playwright.sync_api import expect

    shots = tmp_path_factory.mktemp("partition-screenshots")
    with PrefectAPI(small_graph_server.api_url) as api:
        children = api.child_runs(mapped["flow_run_id"])

    def open_run(page: Any, flow_run_id: str) -> None:
        page.goto(
            f"{small_graph_server.ui_url}/runs/flow-run/{flow_run_id}",
            wait_until="networkidle",
            timeout=60_000,
        )
        graph = page.locator(".flow-run-graph canvas, .run-graph canvas, canvas").first
        expect(graph).to_be_visible(timeout=30_000)
        expect(page.get_by_text("Failed to load graph")).to_have_count(0)
        expect(page.get_by_text("more than", exact=False)).to_have_count(0)

    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            point_ui_at_api(page, small_graph_server.api_url)
            open_run(page, mapped["flow_run_id"])
            page.screenshot(path=str(shots / "map-run.png"))

            page.get_by_text("Subflow Runs", exact=True).first.click()
            for child in children:
                expect(page.get_by_text(child["name"], exact=True).first).to_be_visible(
                    timeout=30_000
                )
            expect(page.get_by_text("Completed").first).to_be_visible()
            page.screenshot(path=str(shots / "map-partitions.png"))

            page.get_by_text("Artifacts", exact=True).first.click()
            expect(page.get_by_text("fanout-map-summary", exact=True).first).to_be_visible(
                timeout=30_000
            )

            for child in children:
                open_run(page, child["id"])
            page.screenshot(path=str(shots / "partition-run.png"))
        finally:
            browser.close()
    print(f"screenshots in {shots}")
