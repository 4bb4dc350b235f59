"""Acceptance criteria (seed 002): a judge checks each answer, rejected answers are revised.

Plans run against the fake OpenAI server: a task's prompt is scripted under
``T-<key>`` (its revisions continue that conversation, so they consume the same
script), the judge's under ``## Task\\nT-<key>`` (only its prompt quotes the
task under that heading; the longer key wins).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_fanout import LLMEndpoint, cli, dispatch_plan
from prefect_fanout.errors import PlanValidationError
from prefect_fanout.options import RunOptions
from prefect_fanout.plan.agents import load_dispatch_plan
from tests.fakeopenai import Error, FakeOpenAI, Reply

pytestmark = pytest.mark.usefixtures("prefect_server")

CRITERIA = ["has three lines", "mentions rain"]


def verdict(passed: bool, unmet: list[str] | None = None, notes: str | None = None) -> Reply:
    body: dict[str, Any] = {"pass": passed, "unmet": unmet or []}
    if notes is not None:
        body["notes"] = notes
    return Reply(json.dumps(body))


def plan_for(
    key: str, tmp_path: Path, *, config: dict[str, Any] | None = None, **task: Any
) -> Path:
    plan = {
        "tasks": [
            {
                "task_id": "poem",
                "agent": "writer",
                "description": f"T-{key}",
                "acceptance": CRITERIA,
                "judge": "critic",
                **task,
            },
            {
                "task_id": "after",
                "agent": "writer",
                "description": f"N-{key}",
                "dependencies": ["poem"],
            },
        ],
        "agents": {"writer": {"model": "gpt-4o-mini"}, "critic": {"model": "gpt-4o"}},
        "config": {"trace_dir": str(tmp_path / "traces"), **(config or {})},
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def poll(fetch: Any, ready: Any, timeout: float = 20.0) -> Any:
    """Read from the API until ``ready(value)``; the server records runs a little late."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def judge_key(key: str) -> str:
    return f"## Task\nT-{key}"


@pytest.mark.server
def test_a_rejected_answer_is_revised_exactly_max_revisions_times_then_fails(
    fake_openai: FakeOpenAI, endpoint: LLMEndpoint, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:12]
    fake_openai.script(f"T-{key}", *(Reply(f"draft {n}") for n in range(5)))
    fake_openai.script(
        judge_key(key), *(verdict(False, ["mentions rain"], "dry") for _ in range(5))
    )
    result = dispatch_plan(
        plan_for(key, tmp_path),
        options=RunOptions(endpoint=endpoint),
    )  # config default: 2

    poem = result.task("poem")
    assert poem.status == "failed" and poem.output is None
    assert fake_openai.count(f"T-{key}") - fake_openai.count(judge_key(key)) == 3  # 1 + 2 re-asks
    assert fake_openai.count("## Revision 3") == 0
    assert fake_openai.count(judge_key(key)) == 3
    assert poem.error == "not accepted by judge 'critic' after 2 revision(s); unmet: mentions rain"
    record = poem.acceptance
    assert record is not None and not record.accepted
    assert (record.judge, record.criteria, record.max_revisions) == ("critic", CRITERIA, 2)
    assert record.revisions == 2
    assert [(v.revision, v.passed, v.unmet, v.notes) for v in record.verdicts] == [
        (n, False, ["mentions rain"], "dry") for n in range(3)
    ]
    assert poem.attempts == 6  # three answers, three verdicts: every request of the loop
    assert poem.usage.prompt_tokens > 0
    assert result.task("after").status == "skipped"
    assert result.status == "failed"

    data = json.loads(result.model_dump_json())
    assert data["tasks"][0]["acceptance"]["verdicts"][0] == {
        "revision": 0,
        "pass": False,
        "unmet": ["mentions rain"],
        "notes": "dry",
    }
    assert "acceptance" not in data["tasks"][1]  # tasks without criteria look as before

    trace = json.loads((tmp_path / "traces" / "poem.json").read_text())
    assert trace["acceptance"] == data["tasks"][0]["acceptance"]
    calls = [(c["call"], c["name"], c["revision"]) for c in trace["acceptance_calls"]]
    assert calls == [
        ("judge", "critic:poem#judge", 0),
        ("revise", "writer:poem#r1", 1),
        ("judge", "critic:poem#r1#judge", 1),
        ("revise", "writer:poem#r2", 2),
        ("judge", "critic:poem#r2#judge", 2),
    ]
    assert trace["output"] is None and trace["acceptance_calls"][-2]["output"] == "draft 2"
    index = json.loads(Path(result.trace_index or "").read_text())
    assert index["tasks"][0]["revisions"] == 2 and "revisions" not in index["tasks"][1]
    assert index["config"]["max_revisions"] == 2


@pytest.mark.server
def test_a_pass_on_revision_k_stops_the_loop_and_the_revision_names_the_unmet_criteria(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:12]
    fake_openai.script(f"T-{key}", Reply("draft 0"), Reply("draft 1"), Reply("draft 2"))
    fake_openai.script(
        judge_key(key),
        verdict(False, ["has three lines", "mentions rain"], "two lines, no rain"),
        verdict(False, ["mentions rain"]),
        verdict(True, notes="fine"),
    )
    fake_openai.script(f"N-{key}", Reply("next"))
    result = dispatch_plan(
        plan_for(key, tmp_path, max_revisions=5),
        options=RunOptions(endpoint=endpoint),
    )

    poem = result.task("poem")
    assert poem.status == "completed" and poem.output == "draft 2"
    assert poem.acceptance is not None and poem.acceptance.accepted
    assert (poem.acceptance.revisions, poem.acceptance.max_revisions) == (2, 5)
    assert [v.passed for v in poem.acceptance.verdicts] == [False, False, True]
    assert fake_openai.count("## Revision") == 2  # the pass on revision 2 stopped the loop
    assert result.status == "completed"

    first, second = (
        fake_openai.requests("## Revision 1")[0],
        fake_openai.requests("## Revision 2")[0],
    )
    assert first.prompt == (
        "## Revision 1 of at most 5\n"
        "A reviewer found that your answer does not meet these acceptance criteria:\n"
        "- has three lines\n- mentions rain\n"
        "Reviewer notes: two lines, no rain\n"
        "Answer the task again, in full, so that every acceptance criterion is met."
    )
    roles = [(m["role"], m["content"]) for m in second.body["messages"]][-4:]
    assert roles[0] == ("assistant", "draft 0") and roles[2] == ("assistant", "draft 1")
    assert "- mentions rain\n" in roles[3][1] and "- has three lines" not in roles[3][1]

    (original,) = [r for r in fake_openai.requests(f"T-{key}") if r.prompt.startswith("T-")]
    assert (
        original.prompt == f"T-{key}\n\n## Acceptance criteria\n- has three lines\n- mentions rain"
    )
    judged = fake_openai.requests(judge_key(key))
    assert "## Answer\ndraft 1\n" in judged[1].prompt
    assert judged[0].body["response_format"]["type"] == "json_schema"
    (after,) = fake_openai.requests(f"N-{key}")
    assert "### poem\ndraft 2" in after.prompt  # dependants get the accepted answer

    api = prefect_server.api_url
    flow_filter = {"flow_runs": {"id": {"any_": [result.flow_run_id]}}, "limit": 50}

    def task_runs() -> list[dict[str, Any]]:
        return httpx.post(f"{api}/task_runs/filter", json=flow_filter).json()

    names = {run["name"] for run in poll(task_runs, lambda found: len(found) == 7)}
    assert names == {
        "writer:poem",
        "critic:poem#judge",
        "writer:poem#r1",
        "critic:poem#r1#judge",
        "writer:poem#r2",
        "critic:poem#r2#judge",
        "writer:after",
    }

    def summary() -> list[dict[str, Any]]:
        body = {"artifacts": {"flow_run_id": {"any_": [result.flow_run_id]}}, "limit": 50}
        found = httpx.post(f"{api}/artifacts/filter", json=body).json()
        return [a for a in found if a["key"] == "fanout-dispatch-summary"]

    (artifact,) = poll(summary, lambda found: len(found) == 1)
    assert "- **Revisions:** 2\n- **Judged tasks:** 1 (1 accepted)" in artifact["data"]


@pytest.mark.server
def test_zero_revisions_fails_on_the_first_rejection_and_a_failed_judge_fails_the_task(
    fake_openai: FakeOpenAI, endpoint: LLMEndpoint, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:12]
    fake_openai.script(judge_key(key), verdict(False, ["mentions rain"]))
    result = dispatch_plan(
        plan_for(key, tmp_path, config={"max_revisions": 0}),
        options=RunOptions(endpoint=endpoint),
    )
    poem = result.task("poem")
    assert poem.status == "failed" and fake_openai.count("## Revision") == 0
    assert poem.acceptance is not None and poem.acceptance.max_revisions == 0
    assert "after 0 revision(s)" in (poem.error or "")

    key = uuid.uuid4().hex[:12]
    fake_openai.script(judge_key(key), Error(400, "bad judge"))
    result = dispatch_plan(
        plan_for(key, tmp_path),
        options=RunOptions(endpoint=endpoint),
    )
    poem = result.task("poem")
    assert poem.status == "failed" and poem.error and poem.error.startswith("judge 'critic' failed")
    assert poem.acceptance is not None and poem.acceptance.verdicts == []


@pytest.mark.server
def test_the_offline_test_model_passes_every_judge(tmp_path: Path) -> None:
    key = uuid.uuid4().hex[:12]
    result = dispatch_plan(
        plan_for(key, tmp_path),
        options=RunOptions(model="test"),
    )
    assert result.status == "completed"
    record = result.task("poem").acceptance
    assert record is not None and record.accepted and record.revisions == 0


def test_bad_acceptance_input_is_reported_with_locations_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = {
        "tasks": [
            {"task_id": "a"},
            {"task_id": "b", "acceptance": [], "judge": "critic"},
            {"task_id": "c", "acceptance": ["ok", " "], "judge": "nobody"},
            {"task_id": "d", "acceptance": ["ok"], "judge": "critic", "max_revisions": -1},
            {"task_id": "e", "acceptance": ["ok"]},
            {"task_id": "f", "judge": "critic"},
        ],
        "agents": {"critic": {}},
        "config": {"max_revisions": "two"},
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(PlanValidationError) as caught:
        load_dispatch_plan(path)
    assert [p.location for p in caught.value.problems] == [
        "tasks[1].acceptance",
        "tasks[2].acceptance[1]",
        "tasks[3].max_revisions",
        "tasks[4].judge",
        "tasks[5].judge",
        "config.max_revisions",
        "tasks[2].judge",
    ]
    assert "unknown judge agent 'nobody'" in str(caught.value)
    assert cli.main(["validate", str(path)]) == 2
    assert cli.main(["dispatch", str(path), "--model", "test"]) == 2
    err = capsys.readouterr().err
    assert "tasks[1].acceptance: task 'b': acceptance must be a non-empty list" in err
    assert "tasks[3].max_revisions: task 'd': max_revisions must be 0 or more, got -1" in err


def test_a_valid_plan_keeps_the_acceptance_fields_and_tasks_without_them_dump_as_before(
    tmp_path: Path,
) -> None:
    path = tmp_path / "plan.json"
    task = {"task_id": "a", "acceptance": ["x"], "judge": "default", "max_revisions": 1}
    path.write_text(json.dumps({"tasks": [task, {"task_id": "b"}]}))
    plan = load_dispatch_plan(path)
    first, second = plan.tasks
    assert (first.acceptance, first.judge, first.revision_limit(plan.config)) == (
        ["x"],
        "default",
        1,
    )
    assert second.revision_limit(plan.config) == 2
    assert set(second.model_dump()) == {
        "task_id",
        "agent",
        "description",
        "input_data",
        "dependencies",
    }


def test_subtasks_form_carries_acceptance_and_reports_it_at_its_place(tmp_path: Path) -> None:
    plan = {
        "task": "Analyse",
        "subtasks": [
            {
                "id": "m",
                "type": "analysis",
                "content": "x",
                "acceptance": ["cites"],
                "judge": "rev",
            },
            {"id": "r", "type": "analysis", "content": "y", "acceptance": []},
        ],
        "types": {"analysis": {}, "rev": {}},
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(PlanValidationError) as caught:
        load_dispatch_plan(path)
    assert [p.location for p in caught.value.problems] == [
        "subtasks[1].acceptance",
        "subtasks[1].judge",
    ]
    del plan["subtasks"][1]["acceptance"]
    path.write_text(json.dumps(plan))
    first = load_dispatch_plan(path).tasks[0]
    assert (first.acceptance, first.judge) == (["cites"], "rev")
