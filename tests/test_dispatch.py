"""Dispatching plans in-process: real fake-OpenAI server over HTTP, real Prefect server.

Every test uses its own uuid in prompts, because the cache and both servers
live for the whole session. Subprocess runs of the CLI are in
test_cli_dispatch.py; here the CLI is called in-process (``cli.main``).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_fanout import cli, dispatch_plan
from prefect_fanout.dispatch.result import TaskOutcome, overall_status
from prefect_fanout.dispatch.run import task_prompt
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.options import RunOptions
from prefect_fanout.plan.agents import load_dispatch_plan
from prefect_fanout.plan.model import Plan, PlanValidationError, TaskSpec
from prefect_fanout.ui.traces import trace_file_names
from tests.fakeopenai import Error, FakeOpenAI, Hang, Reply
from tests.map_helpers import uid

# ----------------------------------------------------------------------------- helpers


def task(task_id: str, description: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "description": description, "dependencies": list(deps), **fields}


def plan_of(*tasks: dict[str, Any], **top: Any) -> Plan:
    return Plan.model_validate({"tasks": list(tasks), **top})


def statuses(result: Any) -> dict[str, str]:
    return {outcome.task_id: outcome.status for outcome in result.tasks}


def flow_run_state(server: Any, flow_run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.api_url}/flow_runs/{flow_run_id}", timeout=10)
    response.raise_for_status()
    return response.json()["state"]


def poll(fetch: Any, ready: Any, timeout: float = 20.0) -> Any:
    """Read from the API until ``ready(value)``; the server records runs a little late."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


# ------------------------------------------------------------------------ pure parts


def test_task_prompt_is_description_then_input_data_as_sorted_json() -> None:
    spec = TaskSpec(task_id="t", description="Do it. ", input_data={"b": [1, 2], "a": "x"})
    assert task_prompt(spec) == (
        'Do it.\n\n## Input data\n{\n  "a": "x",\n  "b": [\n    1,\n    2\n  ]\n}'
    )
    assert task_prompt(TaskSpec(task_id="t", description="Only text")) == "Only text"
    assert (
        task_prompt(TaskSpec(task_id="t", input_data={"k": 1})) == '## Input data\n{\n  "k": 1\n}'
    )


def test_a_dispatch_builds_each_tasks_request_once() -> None:
    """The plan's checks build each task's request; the dispatcher sends that same one."""
    from prefect_fanout.dispatch.prompts import task_request
    from prefect_fanout.dispatch.run import check_plan

    plan = plan_of(task("a", "first"), task("b", "second", "a"))
    resolver = check_plan(plan, RunOptions(model="test", long_inputs="fail"))
    built = [task_request(resolver, t, t.agent) for t in plan.tasks]
    again = [task_request(resolver, t, t.agent) for t in plan.tasks]
    assert all(one is two for one, two in zip(built, again, strict=True))
    other = check_plan(plan, RunOptions(model="test"))  # a new run builds its own
    assert task_request(other, plan.tasks[0], plan.tasks[0].agent) is not built[0]


@pytest.mark.parametrize(
    ("found", "policy", "expected"),
    [
        (["completed", "completed"], "partial", "completed"),
        (["completed", "completed"], "all_or_nothing", "completed"),
        (["completed", "failed"], "partial", "partial"),
        (["completed", "skipped"], "partial", "partial"),
        (["failed", "skipped"], "partial", "failed"),
        (["completed", "failed"], "all_or_nothing", "failed"),
        (["completed", "skipped"], "all_or_nothing", "failed"),
    ],
)
def test_overall_status(found: list[str], policy: str, expected: str) -> None:
    outcomes = [TaskOutcome(task_id=str(i), agent="x", status=s) for i, s in enumerate(found)]
    assert overall_status(outcomes, policy) == expected


def test_trace_file_names_are_safe_and_unique() -> None:
    names = trace_file_names(["a", "x/y", "x_y", "../up", "dispatch-1", "A b"])
    assert names["a"] == "a.json"
    assert names["x_y"] == "x_y.json"  # a safe id keeps its name
    assert names["x/y"] == "x_y-2.json"
    assert names["../up"] == "_up.json"
    assert names["dispatch-1"] == "task-dispatch-1.json"
    assert names["A b"] == "A_b.json"
    assert len(set(names.values())) == len(names)


# ------------------------------------------------------------------- validation errors

INVALID_PLANS: list[tuple[str, str, str]] = [
    # (id, plan text, a message that must be printed)
    ("json", '{"tasks": [', "malformed JSON"),
    ("yaml", "tasks: [a, b\n  c: d", "malformed YAML"),
    ("not-object", "[1, 2]", "a plan must be an object with a 'tasks' list, got a list"),
    ("no-tasks", "{}", "the plan has no 'tasks' list"),
    ("empty-tasks", '{"tasks": []}', "'tasks' is empty"),
    ("top-level", '{"tasks": [{"task_id": "a"}], "taks": 1}', "unknown top-level key 'taks'"),
    ("task-not-object", '{"tasks": ["a"]}', "tasks[0] must be an object, got a string"),
    ("no-task-id", '{"tasks": [{"description": "x"}]}', "tasks[0] has no task_id"),
    (
        "deps-type",
        '{"tasks": [{"task_id": "a", "dependencies": "b"}]}',
        "dependencies must be",
    ),
    (
        "duplicate",
        '{"tasks": [{"task_id": "a"}, {"task_id": "a"}]}',
        "duplicate task_id 'a'",
    ),
    (
        "unknown-dep",
        '{"tasks": [{"task_id": "a", "dependencies": ["zzz"]}]}',
        "task 'a' depends on unknown task 'zzz'",
    ),
    (
        "self-dep",
        '{"tasks": [{"task_id": "a", "dependencies": ["a"]}]}',
        "task 'a' depends on itself",
    ),
    (
        "cycle",
        '{"tasks": [{"task_id": "a", "dependencies": ["b"]}, '
        '{"task_id": "b", "dependencies": ["a"]}]}',
        "dependency cycle: a -> b -> a",
    ),
    (
        "max-workers",
        '{"tasks": [{"task_id": "a"}], "config": {"max_workers": 0}}',
        "config.max_workers: max_workers must be at least 1, got 0",
    ),
    (
        "timeout",
        '{"tasks": [{"task_id": "a"}], "config": {"timeout_seconds": -1}}',
        "timeout_seconds must be a positive number of seconds",
    ),
    (
        "policy",
        '{"tasks": [{"task_id": "a"}], "config": {"failure_policy": "yolo"}}',
        "unknown failure_policy 'yolo'",
    ),
    (
        "config-key",
        '{"tasks": [{"task_id": "a"}], "config": {"max_worker": 2}}',
        "unknown config key 'max_worker' (did you mean 'max_workers'?)",
    ),
    (
        "unknown-agent",
        '{"tasks": [{"task_id": "a", "agent": "coderr"}]}',
        "task 'a' uses unknown agent 'coderr' (did you mean 'coder'?)",
    ),
    (
        "profile-field",
        '{"tasks": [{"task_id": "a", "agent": "r"}], "agents": {"r": {"temprature": 1}}}',
        "agent profile 'r': unknown field 'temprature' (did you mean 'temperature'?)",
    ),
    (
        "profile-value",
        '{"tasks": [{"task_id": "a", "agent": "r"}], "agents": {"r": {"max_attempts": 0}}}',
        "agent profile 'r': max_attempts: Input should be greater than or equal to 1",
    ),
    (
        "output-schema",
        '{"tasks": [{"task_id": "a", "agent": "r"}], '
        '"agents": {"r": {"output_schema": {"type": "objekt"}}}}',
        "agent profile 'r': output_schema is not a valid JSON schema",
    ),
    (
        "fallback",
        '{"tasks": [{"task_id": "a", "agent": "r"}], "agents": {"r": {"fallbacks": ["nobody"]}}}',
        "agent profile 'r': fallbacks[0]: unknown agent 'nobody'",
    ),
]


@pytest.mark.server
@pytest.mark.parametrize(
    ("text", "message"), [p[1:] for p in INVALID_PLANS], ids=[p[0] for p in INVALID_PLANS]
)
def test_validate_reports_each_problem_with_exit_code_2(
    prefect_server: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    message: str,
) -> None:
    path = tmp_path / ("plan.yaml" if "YAML" in message else "plan.json")
    path.write_text(text)
    assert cli.main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert f"{path}: " in captured.err  # every problem names the file
    assert captured.out == ""


def test_validate_missing_file_is_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "/nonexistent/plan.json"]) == 2
    assert "plan file not found: /nonexistent/plan.json" in capsys.readouterr().err


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(
            {
                "tasks": [
                    {"task_id": "a", "dependencies": ["zzz"]},
                    {"task_id": "a"},
                    {"task_id": "b", "dependencies": ["b"]},
                ],
                "config": {"max_workers": 0, "failure_policy": "nope"},
            }
        )
    )
    with pytest.raises(PlanValidationError) as info:
        load_dispatch_plan(path)
    kinds = sorted(problem.kind for problem in info.value.problems)
    assert kinds == ["config", "config", "duplicate_id", "self_dependency", "unknown_dependency"]
    assert len(str(info.value).splitlines()) == 5


@pytest.mark.server
def test_invalid_plan_dispatches_nothing(
    prefect_server: Any,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(
            {
                "tasks": [
                    {"task_id": "a", "agent": "ghost", "description": "x"},
                    {"task_id": "b", "dependencies": ["c"]},
                ]
            }
        )
    )
    assert cli.main(["dispatch", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown agent 'ghost'" in err and "unknown task 'c'" in err
    assert "2 problem(s); nothing was run" in err
    assert fake_openai.total == 0


def test_missing_endpoint_fails_before_the_flow_starts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    plan = plan_of(task("a", "hello"))
    with pytest.raises(ConfigurationError, match="no LLM endpoint is configured"):
        dispatch_plan(plan)
    path = tmp_path / "plan.json"
    path.write_text(plan.model_dump_json())
    assert cli.main(["dispatch", str(path), "--max-workers", "2"]) == 2
    captured = capsys.readouterr()
    assert "no LLM endpoint is configured" in captured.err
    assert captured.out == ""


# ------------------------------------------------------------------------- execution

# Replies that must still be in flight when a sibling task's request arrives. Before its
# HTTP request, every tagged task run asks the Prefect server for tag concurrency slots;
# on a busy SQLite server that answer now and then takes ~2 s, so 0.5 s would be flaky.
MIDDLE_LATENCY = 2.5


@pytest.mark.server
def test_diamond_runs_middle_tasks_together_and_feeds_upstream_outputs(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    fake_openai.script(f"A-{key}", Reply(f"alpha-out-{key}"))
    fake_openai.script(f"B-{key}", Reply(f"beta-out-{key}", latency=MIDDLE_LATENCY))
    fake_openai.script(f"C-{key}", Reply(f"gamma-out-{key}", latency=MIDDLE_LATENCY))
    fake_openai.script(f"D-{key}", Reply(f"delta-out-{key}"))
    plan = plan_of(
        task("a", f"A-{key}"),
        task("b", f"B-{key}", "a", agent="coder"),
        task("c", f"C-{key}", "a", agent="debug", input_data={"n": 1}),
        task("d", f"D-{key}", "b", "c"),
    )
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint),
    )

    assert result.status == "completed"
    assert [t.task_id for t in result.tasks] == ["a", "b", "c", "d"]
    assert result.task("d").output == f"delta-out-{key}"
    assert result.summary.model_dump() == {
        "total": 4,
        "completed": 4,
        "failed": 0,
        "skipped": 0,
        "cached": 0,
    }
    assert result.usage.prompt_tokens > 0 and result.usage.cost_usd is None  # not OpenAI
    assert result.exit_code == 0

    (b,), (c,) = fake_openai.requests(f"B-{key}"), fake_openai.requests(f"C-{key}")
    assert b.arrived < c.finished and c.arrived < b.finished, "b and c did not overlap"
    (d,) = fake_openai.requests(f"D-{key}")
    assert d.arrived >= max(b.finished, c.finished)
    assert d.prompt == (
        f"D-{key}\n\n## Upstream results\n\n### b\nbeta-out-{key}\n\n### c\ngamma-out-{key}"
    )
    assert f"### a\nalpha-out-{key}" in b.prompt
    assert c.prompt.startswith(f'C-{key}\n\n## Input data\n{{\n  "n": 1\n}}\n\n## Upstream')

    # The run graph's edges: d's context inputs are the task runs of b and c.
    def task_runs() -> list[dict[str, Any]]:
        body = {"flow_runs": {"id": {"any_": [result.flow_run_id]}}, "limit": 20}
        return httpx.post(f"{prefect_server.api_url}/task_runs/filter", json=body).json()

    runs = poll(task_runs, lambda found: len(found) == 4)
    by_name = {run["name"]: run for run in runs}
    assert set(by_name) == {"default:a", "coder:b", "debug:c", "default:d"}
    upstream = {item["id"] for item in by_name["default:d"]["task_inputs"]["context"]}
    assert upstream == {by_name["coder:b"]["id"], by_name["debug:c"]["id"]}
    assert flow_run_state(prefect_server, result.flow_run_id)["type"] == "COMPLETED"

    def artifacts() -> list[dict[str, Any]]:
        body = {"artifacts": {"flow_run_id": {"any_": [result.flow_run_id]}}, "limit": 50}
        return httpx.post(f"{prefect_server.api_url}/artifacts/filter", json=body).json()

    keys = {a["key"] for a in poll(artifacts, lambda found: len(found) >= 3)}
    assert {"fanout-dispatch-summary", "fanout-dispatch-calls"} <= keys


@pytest.mark.server
def test_partial_policy_skips_only_dependants_of_a_failure(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    fake_openai.script(f"A-{key}", Error(400, message="bad request for a"))
    plan = plan_of(
        task("a", f"A-{key}"),
        task("b", f"B-{key}", "a"),
        task("c", f"C-{key}", "b"),
        task("d", f"D-{key}"),
        task("e", f"E-{key}", "d"),
    )
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint),
    )

    assert statuses(result) == {
        "a": "failed",
        "b": "skipped",
        "c": "skipped",
        "d": "completed",
        "e": "completed",
    }
    assert result.status == "partial" and result.exit_code == 1
    assert "NonRetryableAPIError" in result.task("a").error
    assert "bad request for a" in result.task("a").error
    assert result.task("a").attempts == 1
    assert result.task("b").error == "skipped: upstream task 'a' failed"
    assert result.task("c").error == "skipped: upstream task 'a' failed"
    assert result.task("b").duration_s is None and result.task("b").attempts == 0
    assert fake_openai.count(f"B-{key}") == 0 and fake_openai.count(f"C-{key}") == 0
    assert result.summary.model_dump() == {
        "total": 5,
        "completed": 2,
        "failed": 1,
        "skipped": 2,
        "cached": 0,
    }
    state = flow_run_state(prefect_server, result.flow_run_id)
    assert (state["type"], state["name"]) == ("COMPLETED", "Partial")


@pytest.mark.server
def test_all_or_nothing_stops_what_has_not_started(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    fake_openai.script(f"A-{key}", Error(400))
    fake_openai.script(f"B-{key}", Reply(f"b-out-{key}", latency=MIDDLE_LATENCY))
    plan = plan_of(
        task("a", f"A-{key}"),
        task("b", f"B-{key}"),
        task("c", f"C-{key}"),  # independent, but waits for a free worker
        task("d", f"D-{key}", "b"),
        config={"max_workers": 2, "failure_policy": "all_or_nothing"},
    )
    # Rates given: the endpoint's first request does not go alone to learn them (a would
    # wait for b's answer, and c could take b's worker before a failed).
    known = {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000}
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint, **known),
    )

    assert statuses(result) == {"a": "failed", "b": "completed", "c": "skipped", "d": "skipped"}
    assert result.status == "failed" and result.exit_code == 1
    reason = "not started: task 'a' failed (failure_policy all_or_nothing)"
    assert result.task("c").error == reason and result.task("d").error == reason
    assert fake_openai.count(f"C-{key}") == 0 and fake_openai.count(f"D-{key}") == 0
    assert flow_run_state(prefect_server, result.flow_run_id)["type"] == "FAILED"


@pytest.mark.server
def test_fallback_agent_answers_when_the_primary_fails(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    fake_openai.script(
        f"PRIMARY-{key}",
        Error(400, message="primary refuses"),
        Error(400, message="primary refuses"),
    )
    fake_openai.script(f"BACKUP-{key}", Reply(f"backup-out-{key}"))
    fake_openai.script(f"LAST-{key}", Error(400, message="last refuses"))
    agents = {
        "primary": {"prompt_template": f"PRIMARY-{key}\n{{input}}", "fallbacks": ["backup"]},
        "backup": {"prompt_template": f"BACKUP-{key}\n{{input}}"},
        "doomed": {"prompt_template": f"PRIMARY-{key}\n{{input}}", "fallbacks": ["last"]},
        "last": {"prompt_template": f"LAST-{key}\n{{input}}"},
    }
    plan = plan_of(
        task("a", f"task a {key}", agent="primary"),
        task("b", f"task b {key}", "a"),
        task("z", f"task z {key}", agent="doomed"),
        agents=agents,
    )
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint),
    )

    a = result.task("a")
    assert (a.status, a.agent, a.output, a.error) == (
        "completed",
        "backup",
        f"backup-out-{key}",
        None,
    )
    assert a.attempts == 2  # one request to the primary, one to the fallback
    assert fake_openai.count(f"PRIMARY-{key}") == 2  # a's primary and z's primary
    assert f"### a\nbackup-out-{key}" in fake_openai.requests(f"task b {key}")[0].prompt
    assert result.task("b").status == "completed"
    z = result.task("z")
    assert (z.status, z.agent) == ("failed", "last")
    assert "agent 'doomed'" in z.error and "primary refuses" in z.error
    assert "agent 'last'" in z.error and "last refuses" in z.error
    assert result.status == "partial"


@pytest.mark.server
def test_traces_record_every_task_and_the_run(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint, tmp_path: Path
) -> None:
    key = uid()
    fake_openai.script(f"A-{key}", Reply(f"a-out-{key}", prompt_tokens=10, completion_tokens=4))
    fake_openai.script(f"F-{key}", Error(400, message="nope"))
    plan = plan_of(
        task("a", f"A-{key}", input_data={"lang": "py"}, agent="coder"),
        task("x/b", f"B-{key}", "a"),
        task("f", f"F-{key}"),
        task("g", f"G-{key}", "f"),
    )
    trace_dir = tmp_path / "traces"
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint, trace_dir=trace_dir),
    )

    files = sorted(p.name for p in trace_dir.iterdir())
    (index_name,) = [name for name in files if name.startswith("dispatch-")]
    assert sorted(set(files) - {index_name}) == ["a.json", "f.json", "g.json", "x_b.json"]
    assert index_name.endswith("Z.json") and Path(result.trace_index).name == index_name
    assert not list(trace_dir.glob(".*"))  # no temporary files left behind

    a = json.loads((trace_dir / "a.json").read_text())
    (request,) = fake_openai.requests(f"A-{key}")
    assert a["task_id"] == "a" and a["status"] == "completed"
    assert a["flow_run_id"] == result.flow_run_id
    assert (a["agent"], a["requested_agent"], a["model"]) == ("coder", "coder", "gpt-4o-mini")
    assert a["input"] == {
        "description": f"A-{key}",
        "input_data": {"lang": "py"},
        "dependencies": [],
    }
    assert a["prompt"] == request.prompt
    assert a["messages"] == request.body["messages"]
    assert a["output"] == f"a-out-{key}" and a["error"] is None and a["cached"] is False
    assert a["usage"]["prompt_tokens"] == 10 and a["usage"]["completion_tokens"] == 4
    assert a["usage"]["cost_usd"] is None  # the fake is not OpenAI: no price from the table
    assert a["finish_reason"] == "stop"
    assert a["timing"]["duration_s"] > 0 and a["timing"]["started_at"] <= a["timing"]["finished_at"]
    assert [(t["agent"], t["status"], t["requests"]) for t in a["attempts"]] == [
        ("coder", "completed", 1)
    ]

    b = json.loads((trace_dir / "x_b.json").read_text())
    assert b["task_id"] == "x/b" and f"### a\na-out-{key}" in b["prompt"]
    f = json.loads((trace_dir / "f.json").read_text())
    assert f["status"] == "failed" and "nope" in f["error"] and f["output"] is None
    g = json.loads((trace_dir / "g.json").read_text())
    assert g["status"] == "skipped" and g["error"] == "skipped: upstream task 'f' failed"
    assert g["prompt"] is None and g["attempts"] == []

    index_path = Path(result.trace_index)
    assert index_path.parent == trace_dir
    index = json.loads(index_path.read_text())
    assert index["correlation_id"] == result.flow_run_id
    assert index["status"] == "partial"
    assert index["summary"] == result.summary.model_dump()
    assert [t["task_id"] for t in index["tasks"]] == ["a", "x/b", "f", "g"]
    assert index["tasks"][0]["input_data"] == {"lang": "py"}
    assert index["tasks"][1]["dependencies"] == ["a"]
    assert index["traces"] == [
        str(trace_dir / n) for n in ("a.json", "x_b.json", "f.json", "g.json")
    ]
    assert all(Path(p).is_file() for p in index["traces"])


@pytest.mark.server
def test_second_identical_dispatch_is_served_from_cache(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    plan = plan_of(task("a", f"A-{key}"), task("b", f"B-{key}", "a"), task("c", f"C-{key}"))
    first = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint),
    )
    assert first.status == "completed" and first.summary.cached == 0
    sent = fake_openai.total
    assert sent == 3

    second = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint),
    )
    assert fake_openai.total == sent, "the second dispatch sent requests"
    assert second.status == "completed"
    assert second.summary.cached == second.summary.total == 3
    assert second.usage.cost_usd == 0.0
    assert all(t.cached and t.attempts == 0 and t.usage.cost_usd == 0.0 for t in second.tasks)
    assert [t.output for t in second.tasks] == [t.output for t in first.tasks]

    third = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint, cache="refresh"),
    )
    assert fake_openai.total == sent + 3 and third.summary.cached == 0


@pytest.mark.server
def test_max_workers_bounds_requests_in_flight(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    fake_openai.default_latency = 0.2
    plan = plan_of(*(task(name, f"{name.upper()}-{key}") for name in "abc"))
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint, max_workers=1),
    )
    assert result.status == "completed"
    assert fake_openai.total == 3
    assert fake_openai.max_in_flight == 1


@pytest.mark.server
def test_timeout_seconds_bounds_each_request(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    fake_openai.script(f"H-{key}", Hang(30))
    plan = plan_of(
        task("h", f"H-{key}", agent="once"),
        agents={"once": {"max_attempts": 1}},
        config={"timeout_seconds": 0.5},
    )
    started = time.monotonic()
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint),
    )
    assert time.monotonic() - started < 20
    assert result.task("h").status == "failed"
    assert "CallTimeoutError" in result.task("h").error
    assert result.status == "failed"


@pytest.mark.server
def test_cli_dispatch_in_process_prints_only_json(
    prefect_server: Any,
    fake_openai: FakeOpenAI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    key = uid()
    fake_openai.script(f"B-{key}", Error(400))
    path = tmp_path / "plan.yaml"
    path.write_text(
        f"tasks:\n  - task_id: a\n    description: A-{key}\n"
        f"  - task_id: b\n    description: B-{key}\n    dependencies: [a]\n"
    )
    assert cli.main(["dispatch", str(path), "--failure-policy", "all_or_nothing"]) == 1
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["status"] == "failed"
    assert [(t["task_id"], t["status"]) for t in result["tasks"]] == [
        ("a", "completed"),
        ("b", "failed"),
    ]
    assert set(result) >= {"status", "flow_run_id", "summary", "usage", "tasks"}
    assert set(result["tasks"][0]) >= {
        "task_id",
        "agent",
        "status",
        "output",
        "error",
        "cached",
        "attempts",
        "usage",
        "duration_s",
    }
    assert "fanout dispatch: failed: 1 of 2 completed" in captured.err


def test_validate_levels_of_a_plan_on_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (Path(__file__).parent.parent / "examples" / "03_mixed_workflow.json").read_text()
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    assert cli.main(["validate", "-", "--levels"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "<stdin>: valid plan: 4 task(s) in 3 level(s)",
        "level 0: debug-slow-report, gen-cache-layer",
        "level 1: gen-report-fix",
        "level 2: validate-changes",
        "critical path: debug-slow-report -> gen-report-fix -> validate-changes (3 tasks)",
    ]


@pytest.mark.parametrize(
    "name", ["01_parallel_generation", "02_debug_then_fix", "03_mixed_workflow"]
)
def test_examples_are_valid_plans(name: str) -> None:
    plan = load_dispatch_plan(Path(__file__).parent.parent / "examples" / f"{name}.json")
    assert plan.tasks


@pytest.mark.server
def test_agents_resolve_to_saved_agent_profile_blocks(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint, tmp_path: Path
) -> None:
    from prefect_fanout.agents.profiles import AgentProfile

    key = uid()
    block = f"saved-agent-{key}"
    AgentProfile(name="saved", prompt_template=f"SAVED-{key}\n{{input}}").save(block)
    fake_openai.script(f"PRIMARY-{key}", Error(400))
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(
            {
                "tasks": [
                    {"task_id": "a", "agent": block, "description": "one"},
                    {"task_id": "b", "agent": "primary", "description": "two"},
                ],
                "agents": {
                    "primary": {
                        "prompt_template": f"PRIMARY-{key}\n{{input}}",
                        "fallbacks": [block],
                    }
                },
            }
        )
    )
    plan = load_dispatch_plan(path)  # neither the task agent nor the fallback is unknown
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint),
    )
    assert statuses(result) == {"a": "completed", "b": "completed"}
    assert (result.task("a").agent, result.task("b").agent) == (block, block)
    assert fake_openai.count(f"SAVED-{key}") == 2
