"""The Prefect UI as the trace: run names, tags, artifacts and logs of a dispatch run.

Read back through the same REST API the UI uses, then once through the UI itself in
headless Chromium (Debian's /usr/bin/chromium driven by Playwright).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_fanout import Plan, dispatch_plan
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.options import RunOptions
from tests.fakeopenai import Error
from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS, PrefectAPI, point_ui_at_api, poll

REPO = Path(__file__).resolve().parents[1]
PLAN = REPO / "examples" / "03_mixed_workflow.json"

pytestmark = pytest.mark.server


def _plan_tasks() -> list[dict[str, Any]]:
    return json.loads(PLAN.read_text())["tasks"]


@pytest.fixture(scope="module")
def api(prefect_server) -> PrefectAPI:
    with PrefectAPI(prefect_server.api_url) as reader:
        yield reader


@pytest.fixture(scope="module")
def traced_run(prefect_server, api, tmp_path_factory) -> dict[str, Any]:
    """One dispatch of the mixed-workflow plan with the offline model, read back from the API."""
    trace_dir = tmp_path_factory.mktemp("traces")
    result = dispatch_plan(
        PLAN,
        options=RunOptions(model="test", trace_dir=trace_dir, cache="off"),
    )
    assert result.status == "completed", result
    flow_run_id = str(result.flow_run_id)
    task_runs = api.finished_task_runs(flow_run_id, len(_plan_tasks()))
    return {"id": flow_run_id, "task_runs": task_runs, "trace_dir": trace_dir}


def test_task_runs_are_named_agent_item_without_unlimited_tags(traced_run) -> None:
    by_name = {run["name"]: run for run in traced_run["task_runs"]}
    expected = {f"{t['agent']}:{t['task_id']}": t for t in _plan_tasks()}
    assert set(by_name) == set(expected)
    for name in expected:
        run = by_name[name]
        assert run["state_type"] == "COMPLETED"
        # Tags ride along only when a concurrency limit uses them (each tag costs a slot
        # request per run); agent and model are in the name and the per-call table.
        assert run["tags"] == [], name


def test_dependencies_are_edges_of_the_run_graph(traced_run) -> None:
    # Upstream results reach a call as futures, so the API records them as task inputs
    # (the arrows of the UI's run graph).
    ids = {run["id"]: run["name"].split(":", 1)[1] for run in traced_run["task_runs"]}
    for run in traced_run["task_runs"]:
        task = next(t for t in _plan_tasks() if run["name"].endswith(f":{t['task_id']}"))
        upstream = {
            ids[ref["id"]]
            for refs in run["task_inputs"].values()
            for ref in refs
            if ref.get("input_type") == "task_run" and ref["id"] in ids
        }
        assert upstream == set(task["dependencies"]), run["name"]


def test_artifacts_of_a_dispatch_run(api, traced_run) -> None:
    def complete(found: list[dict]) -> bool:  # the progress bar's last update may come later
        progress = [a for a in found if a["type"] == "progress"]
        summary = any(a.get("key") == "fanout-dispatch-summary" for a in found)
        return summary and len(progress) == 1 and float(progress[0]["data"]) == 100.0

    artifacts = poll(
        lambda: api.artifacts(traced_run["id"]),
        complete,
        30,
        "the dispatch summary artifact and the progress bar at 100",
    )
    by_key = {a["key"]: a for a in artifacts if a.get("key")}
    summary = by_key["fanout-dispatch-summary"]
    assert summary["type"] == "markdown"
    assert summary["data"].startswith("# Fanout dispatch")
    assert "| completed | 4 |" in summary["data"]

    table = by_key["fanout-dispatch-calls"]
    assert table["type"] == "table"
    rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
    assert sorted(row["id"] for row in rows) == sorted(t["task_id"] for t in _plan_tasks())
    assert {row["status"] for row in rows} == {"completed"}

    progress = [a for a in artifacts if a["type"] == "progress"]
    assert len(progress) == 1 and float(progress[0]["data"]) == 100.0

    # One link per trace file, plus the index, pointing at the run's trace directory.
    links = {key: a for key, a in by_key.items() if key.startswith("fanout-dispatch-trace-")}
    assert len(links) == len(_plan_tasks()) + 1
    trace_uri = Path(traced_run["trace_dir"]).resolve().as_uri()
    assert all(trace_uri in a["data"] for a in links.values())


def _final_logs(api: PrefectAPI, flow_run_id: str) -> list[dict[str, Any]]:
    """The flow run's log lines once its own final line is in (logs arrive in batches)."""
    return poll(
        lambda: api.logs(flow_run_id),
        lambda lines: any(
            line["task_run_id"] is None and line["message"].startswith("Finished in state")
            for line in lines
        ),
        30,
        "the flow run's final log line",
    )


def test_logs_no_line_per_successful_call_by_default(api, traced_run) -> None:
    logs = _final_logs(api, traced_run["id"])
    task_run_ids = {run["id"] for run in traced_run["task_runs"]}
    call_lines = [line for line in logs if line["task_run_id"] in task_run_ids]
    assert not call_lines, [line["message"] for line in call_lines]  # no answered, no Finished
    assert not [line for line in logs if "answered in" in line["message"]]
    text = "\n".join(line["message"] for line in logs)
    assert "dispatching 4 task(s)" in text  # the run's own lines stay
    for task in _plan_tasks():
        assert task["description"] not in text


def test_log_calls_logs_one_info_line_per_call_and_no_prompts(api) -> None:
    result = dispatch_plan(PLAN, options=RunOptions(model="test", cache="off", log_calls=True))
    assert result.status == "completed", result
    flow_run_id = str(result.flow_run_id)
    task_runs = api.finished_task_runs(flow_run_id, len(_plan_tasks()))
    logs = poll(
        lambda: _final_logs(api, flow_run_id),
        lambda lines: sum("answered in" in line["message"] for line in lines) >= 4,
        30,
        "the calls' log lines",
    )
    task_run_ids = {run["id"] for run in task_runs}
    call_lines = [line for line in logs if line["task_run_id"] in task_run_ids]
    for run in task_runs:
        own = [line["message"] for line in call_lines if line["task_run_id"] == run["id"]]
        answered = [message for message in own if not message.startswith("Finished in")]
        assert len(answered) == 1, own
        assert run["name"] in answered[0] and "test answered in" in answered[0], answered[0]
        assert "Finished in state Completed()" in own  # Prefect's line is kept too
    assert {line["level"] for line in call_lines} == {20}  # INFO only: prompts are DEBUG
    text = "\n".join(line["message"] for line in logs)
    for task in _plan_tasks():
        assert task["description"] not in text


def test_a_failed_call_is_logged_at_the_default_level(api, fake_openai, monkeypatch) -> None:
    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr("sk-test"))
    key = uuid.uuid4().hex[:10]
    plan = {
        "tasks": [
            {"task_id": f"good-{key}", "agent": "default", "description": f"fine {key}"},
            {"task_id": f"bad-{key}", "agent": "default", "description": f"refused {key}"},
        ]
    }
    fake_openai.script(f"refused {key}", Error(400, message="no such thing"))
    result = dispatch_plan(
        Plan.model_validate(plan), options=RunOptions(endpoint=endpoint, cache="off")
    )
    assert result.status != "completed", result
    flow_run_id = str(result.flow_run_id)
    task_runs = api.finished_task_runs(flow_run_id, 2)
    logs = _final_logs(api, flow_run_id)
    by_name = {run["name"]: run["id"] for run in task_runs}
    bad = [line for line in logs if line["task_run_id"] == by_name[f"default:bad-{key}"]]
    assert any(
        line["message"].startswith("Finished in state Failed") and line["level"] == 40
        for line in bad
    ), bad
    flow_lines = [line for line in logs if line["task_run_id"] is None]
    assert any(f"bad-{key}" in line["message"] and line["level"] >= 30 for line in flow_lines)
    good = [line for line in logs if line["task_run_id"] == by_name[f"default:good-{key}"]]
    assert not good, good  # the successful call wrote nothing


def test_api_key_is_never_readable_through_the_api(api, fake_openai, monkeypatch) -> None:
    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    key = f"sk-secret-{uuid.uuid4().hex}"
    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr(key))
    plan = REPO / "examples" / "01_parallel_generation.json"
    result = dispatch_plan(  # log_calls: the calls' own lines are searched for the key too
        plan,
        options=RunOptions(model="fake-model", endpoint=endpoint, cache="off", log_calls=True),
    )
    assert result.status == "completed", result
    assert fake_openai.total == 3
    assert {r.headers.get("authorization") for r in fake_openai.requests()} == {f"Bearer {key}"}

    flow_run_id = str(result.flow_run_id)
    api.finished_task_runs(flow_run_id, 3)
    poll(
        lambda: api.events(flow_run_id),
        lambda events: sum(e["event"] == "prefect.task-run.Completed" for e in events) >= 3,
        30,
        "the task runs' Completed events",
    )
    poll(  # logs reach the API in batches, a moment after the calls
        lambda: api.logs(flow_run_id),
        lambda lines: sum("fake-model answered in" in line["message"] for line in lines) == 3,
        30,
        "one log line per call",
    )

    everything = api.everything(flow_run_id)
    assert key not in everything
    assert key.removeprefix("sk-") not in everything
    # The endpoint object is in the flow run's options parameter: the API shows it masked.
    shown = api.flow_run(flow_run_id)["parameters"]["options"]["endpoint"]
    assert shown["base_url"] == fake_openai.base_url
    assert shown["api_key"] == "**********"
    # ... and the agent-call task runs record only references to their inputs.
    for run in api.task_runs(flow_run_id):
        assert run["task_inputs"]["transport"] == []  # the transport holds the endpoint


@pytest.mark.browser
def test_browser_shows_task_runs_and_summary_artifact(
    prefect_server, traced_run, tmp_path_factory
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    from playwright.sync_api import expect

    shots = tmp_path_factory.mktemp("screenshots")
    names = [run["name"] for run in traced_run["task_runs"]]
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            point_ui_at_api(page, prefect_server.api_url)
            page.goto(
                f"{prefect_server.ui_url}/runs/flow-run/{traced_run['id']}",
                wait_until="networkidle",
                timeout=60_000,
            )
            expect(page.get_by_text("fanout-dispatch").first).to_be_visible(timeout=30_000)

            page.get_by_text("Task Runs", exact=True).first.click()
            for name in names:
                expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=30_000)

            page.get_by_text("Artifacts", exact=True).first.click()
            summary = page.get_by_text("fanout-dispatch-summary", exact=True).first
            expect(summary).to_be_visible(timeout=30_000)
            expect(page.get_by_text("fanout-dispatch-calls", exact=True).first).to_be_visible()
            page.screenshot(path=str(shots / "flow-run-artifacts.png"))

            summary.click()
            expect(page.get_by_role("heading", name="Fanout dispatch").first).to_be_visible(
                timeout=30_000
            )
            page.screenshot(path=str(shots / "summary-artifact.png"), full_page=True)
        finally:
            browser.close()
    print(f"screenshots in {shots}")
