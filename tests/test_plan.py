"""Tests for prefect_fanout.plan.model: loading, validation, levels, critical path."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from prefect_fanout.plan.model import (
    Plan,
    PlanConfig,
    PlanProblem,
    PlanValidationError,
    TaskSpec,
    critical_path,
    dependency_levels,
    format_levels,
    load_plan,
    topological_order,
    validate_plan,
)


def task(task_id: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "dependencies": list(deps), **fields}


def plan_of(*tasks: dict[str, Any], **top: Any) -> Plan:
    return validate_plan({"tasks": list(tasks), **top})


def problems_of(raw: Any, **kwargs: Any) -> list[PlanProblem]:
    with pytest.raises(PlanValidationError) as info:
        validate_plan(raw, **kwargs)
    assert info.value.problems, "a PlanValidationError must carry problems"
    return info.value.problems


def only_problem(raw: Any, **kwargs: Any) -> PlanProblem:
    problems = problems_of(raw, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


DIAMOND = [task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")]


# --------------------------------------------------------------------------- models


def test_defaults_of_a_minimal_plan() -> None:
    plan = validate_plan({"tasks": [{"task_id": "a"}]})
    assert plan.task_ids == ["a"]
    spec = plan.task("a")
    assert spec == TaskSpec(task_id="a")
    assert (spec.agent, spec.description, spec.input_data, spec.dependencies) == (
        "default",
        "",
        {},
        [],
    )
    assert plan.config == PlanConfig()
    assert plan.config.max_workers == 4
    assert plan.config.timeout_seconds == 300
    assert plan.config.trace_dir is None
    assert plan.config.failure_policy == "partial"
    assert plan.config.endpoint is None
    assert plan.agents == {}


def test_full_plan_keeps_every_field() -> None:
    raw = {
        "tasks": [
            task("a", agent="writer", description="write", input_data={"n": 1}),
            task("b", "a", agent="coder"),
        ],
        "config": {
            "max_workers": 2,
            "timeout_seconds": 12.5,
            "trace_dir": "traces",
            "failure_policy": "all_or_nothing",
            "endpoint": "local-llm",
        },
        "agents": {"writer": {"system_prompt": "Write.", "temperature": 0.7}},
    }
    plan = validate_plan(raw, known_agents=["default", "coder"])
    assert plan.task("a").input_data == {"n": 1}
    assert plan.task("a").agent == "writer"
    assert plan.task("b").dependencies == ["a"]
    assert plan.config.max_workers == 2
    assert plan.config.timeout_seconds == 12.5
    assert plan.config.trace_dir == "traces"
    assert plan.config.failure_policy == "all_or_nothing"
    assert plan.config.endpoint == "local-llm"
    assert plan.agents == {"writer": {"system_prompt": "Write.", "temperature": 0.7}}


def test_null_optional_fields_mean_defaults() -> None:
    raw = {
        "tasks": [
            {"task_id": "a", "agent": None, "description": None, "input_data": None},
            {"task_id": "b", "dependencies": None},
        ],
        "config": None,
        "agents": None,
    }
    plan = validate_plan(raw)
    assert plan.task("a").agent == "default"
    assert plan.task("b").dependencies == []


def test_repeated_dependency_is_kept_once() -> None:
    plan = plan_of(task("a"), task("b", "a", "a"))
    assert plan.task("b").dependencies == ["a"]


def test_task_lookup_of_unknown_id_raises_key_error() -> None:
    plan = plan_of(task("a"))
    with pytest.raises(KeyError, match="'zzz'"):
        plan.task("zzz")
    with pytest.raises(KeyError):
        plan.dependants("zzz")
    with pytest.raises(KeyError):
        plan.upstream_closure("zzz")


def test_constructing_a_plan_directly_rejects_a_cycle() -> None:
    with pytest.raises(ValidationError, match=r"a -> b -> a"):
        Plan(
            tasks=[
                TaskSpec(task_id="a", dependencies=["b"]),
                TaskSpec(task_id="b", dependencies=["a"]),
            ]
        )
    with pytest.raises(ValidationError, match="duplicate task_id"):
        Plan(tasks=[TaskSpec(task_id="a"), TaskSpec(task_id="a")])


def test_dependants_and_upstream_closure() -> None:
    plan = plan_of(*DIAMOND, task("e"), task("f", "d", "e"))
    assert plan.dependants("a") == ["b", "c", "d", "f"]
    assert plan.dependants("a", transitive=False) == ["b", "c"]
    assert plan.dependants("f") == []
    assert plan.upstream_closure("d") == ["a", "b", "c"]
    assert plan.upstream_closure("f") == ["a", "b", "c", "d", "e"]
    assert plan.upstream_closure("a") == []


# --------------------------------------------------------------------------- single problems


@pytest.mark.parametrize(
    ("raw", "kind", "location", "message"),
    [
        ([1, 2], "field", "", "a plan must be an object with a 'tasks' list, got a list"),
        (None, "field", "", "the plan is empty; expected an object with a 'tasks' list"),
        ({}, "field", "tasks", "the plan has no 'tasks' list"),
        ({"tasks": {"a": 1}}, "field", "tasks", "'tasks' must be a list of tasks, got an object"),
        ({"tasks": []}, "field", "tasks", "'tasks' is empty: a plan needs at least one task"),
        (
            {"tasks": [task("a"), "b"]},
            "field",
            "tasks[1]",
            "tasks[1] must be an object, got a string",
        ),
        ({"tasks": [{"agent": "x"}]}, "field", "tasks[0].task_id", "tasks[0] has no task_id"),
        (
            {"tasks": [{"task_id": " "}]},
            "field",
            "tasks[0].task_id",
            "tasks[0]: task_id must not be empty",
        ),
        (
            {"tasks": [{"task_id": 7}]},
            "field",
            "tasks[0].task_id",
            "tasks[0]: task_id must be a string, got an integer",
        ),
        (
            {"tasks": [task("a", agent=3)]},
            "field",
            "tasks[0].agent",
            "task 'a': agent must be a non-empty string, got an integer",
        ),
        (
            {"tasks": [task("a", description=["x"])]},
            "field",
            "tasks[0].description",
            "task 'a': description must be a string, got a list",
        ),
        (
            {"tasks": [task("a", input_data="text")]},
            "field",
            "tasks[0].input_data",
            "task 'a': input_data must be an object, got a string",
        ),
        (
            {"tasks": [task("a", input_data={1: "x"})]},
            "field",
            "tasks[0].input_data",
            "task 'a': input_data keys must be strings, got 1",
        ),
        (
            {"tasks": [task("a"), {"task_id": "b", "dependencies": "a"}]},
            "field",
            "tasks[1].dependencies",
            "task 'b': dependencies must be a list of task ids, got a string",
        ),
        (
            {"tasks": [task("a"), {"task_id": "b", "dependencies": ["a", 3]}]},
            "field",
            "tasks[1].dependencies[1]",
            "task 'b': dependencies[1] must be a non-empty task id string, got an integer",
        ),
        (
            {"tasks": [{"task_id": "a", "depends_on": []}]},
            "field",
            "tasks[0].depends_on",
            "task 'a': unknown field 'depends_on' (did you mean 'dependencies'?)",
        ),
        (
            {"tasks": [task("a")], "task": []},
            "field",
            "task",
            "unknown top-level key 'task' (did you mean 'tasks'?); "
            "valid keys: tasks, config, agents, goal",
        ),
        (
            {"tasks": [task("x"), task("y"), task("z"), task("x")]},
            "duplicate_id",
            "tasks[3].task_id",
            "duplicate task_id 'x' (tasks[0] and tasks[3])",
        ),
        (
            {"tasks": [task("a"), task("b", "zzz")]},
            "unknown_dependency",
            "tasks[1].dependencies[0]",
            "task 'b' depends on unknown task 'zzz'",
        ),
        (
            {"tasks": [task("alpha"), task("b", "alpah")]},
            "unknown_dependency",
            "tasks[1].dependencies[0]",
            "task 'b' depends on unknown task 'alpah' (did you mean 'alpha'?)",
        ),
        (
            {"tasks": [task("a"), task("b", "a", "b")]},
            "self_dependency",
            "tasks[1].dependencies[1]",
            "task 'b' depends on itself",
        ),
        (
            {"tasks": [task("a", "c"), task("b", "a"), task("c", "b")]},
            "cycle",
            "tasks[0].dependencies[0]",
            "dependency cycle: a -> b -> c -> a",
        ),
    ],
)
def test_each_problem_has_message_and_location(
    raw: Any, kind: str, location: str, message: str
) -> None:
    problem = only_problem(raw)
    assert (problem.kind, problem.location, problem.message) == (kind, location, message)


def test_problem_names_its_task() -> None:
    problem = only_problem({"tasks": [task("a"), task("b", "zzz")]})
    assert problem.task_id == "b"
    assert str(problem) == "tasks[1].dependencies[0]: task 'b' depends on unknown task 'zzz'"


def test_unknown_dependency_of_a_task_without_id_names_its_index() -> None:
    problems = problems_of({"tasks": [task("a"), {"dependencies": ["nope"]}]})
    assert [p.kind for p in problems] == ["field", "unknown_dependency"]
    assert problems[1].message == "tasks[1] depends on unknown task 'nope'"
    assert problems[1].task_id is None


def test_cycle_is_reported_once_and_printed_from_its_first_task() -> None:
    raw = {"tasks": [task("x"), task("c", "b"), task("a", "c"), task("b", "a")]}
    problem = only_problem(raw)
    # c is first in plan order; b depends on a, so the flow is a -> b.
    assert problem.message == "dependency cycle: c -> a -> b -> c"
    assert problem.task_id == "c"
    assert problem.location == "tasks[1].dependencies[0]"


def test_two_distinct_cycles_are_both_reported() -> None:
    raw = {"tasks": [task("a", "b"), task("b", "a"), task("c", "d"), task("d", "c"), task("e")]}
    messages = [p.message for p in problems_of(raw)]
    assert messages == ["dependency cycle: a -> b -> a", "dependency cycle: c -> d -> c"]


@pytest.mark.parametrize(
    ("config", "location", "message"),
    [
        ({"max_workers": "4"}, "config.max_workers", "max_workers must be an integer, got '4'"),
        ({"max_workers": True}, "config.max_workers", "max_workers must be an integer, got True"),
        ({"max_workers": 2.5}, "config.max_workers", "max_workers must be an integer, got 2.5"),
        ({"max_workers": 0}, "config.max_workers", "max_workers must be at least 1, got 0"),
        (
            {"timeout_seconds": "300"},
            "config.timeout_seconds",
            "timeout_seconds must be a number, got '300'",
        ),
        (
            {"timeout_seconds": 0},
            "config.timeout_seconds",
            "timeout_seconds must be a positive number of seconds, got 0",
        ),
        (
            {"timeout_seconds": float("nan")},
            "config.timeout_seconds",
            "timeout_seconds must be a positive number of seconds, got nan",
        ),
        (
            {"trace_dir": 5},
            "config.trace_dir",
            "trace_dir must be a non-empty string or null, got 5",
        ),
        (
            {"endpoint": ""},
            "config.endpoint",
            "endpoint must be a non-empty string or null, got ''",
        ),
        (
            {"failure_policy": "best_effort"},
            "config.failure_policy",
            "unknown failure_policy 'best_effort'; valid policies: 'partial', 'all_or_nothing'",
        ),
        (
            {"max_worker": 3},
            "config.max_worker",
            "unknown config key 'max_worker' (did you mean 'max_workers'?); valid keys: "
            "max_workers, timeout_seconds, trace_dir, failure_policy, endpoint, synthesize, "
            "max_revisions, max_concurrency, requests_per_minute, tokens_per_minute, model, "
            "max_tokens, temperature, budget_tokens, budget_usd, budget_name",
        ),
        (
            {"budget_usd": 0},
            "config.budget_usd",
            "budget_usd must be a positive number of US dollars, got 0",
        ),
        (
            {"budget_tokens": 2.5},
            "config.budget_tokens",
            "budget_tokens must be a whole number of tokens above 0, got 2.5",
        ),
        (
            {"requests_per_minute": 0},
            "config.requests_per_minute",
            "requests_per_minute must be a whole number greater than 0, got 0; set a positive "
            "number or remove it (or set null) for no limit",
        ),
        (
            {"max_concurrency": -2},
            "config.max_concurrency",
            "max_concurrency must be a whole number greater than 0, got -2; set a positive "
            "number or remove it (or set null) for no limit",
        ),
        ([1], "config", "'config' must be an object, got a list"),
    ],
)
def test_config_problems(config: Any, location: str, message: str) -> None:
    problem = only_problem({"tasks": [task("a")], "config": config})
    assert (problem.kind, problem.location, problem.message) == ("config", location, message)


def test_config_accepts_integer_timeout_and_nulls() -> None:
    plan = plan_of(task("a"), config={"timeout_seconds": 5, "trace_dir": None, "endpoint": None})
    assert plan.config.timeout_seconds == 5.0


# --------------------------------------------------------------------------- agents


def test_unknown_agent_names_the_task() -> None:
    raw = {"tasks": [task("a"), task("b", agent="wrtier")], "agents": {"writer": {}}}
    problem = only_problem(raw, known_agents=["default", "coder"])
    assert problem.kind == "unknown_agent"
    assert problem.location == "tasks[1].agent"
    assert problem.task_id == "b"
    assert problem.message == (
        "task 'b' uses unknown agent 'wrtier' (did you mean 'writer'?); "
        "known agents: coder, default, writer"
    )


def test_agents_from_the_plan_and_built_ins_are_known() -> None:
    raw = {
        "tasks": [task("a", agent="writer"), task("b", agent="coder"), task("c")],
        "agents": {"writer": {"system_prompt": "Write."}},
    }
    plan = validate_plan(raw, known_agents=["default", "coder"])
    assert [t.agent for t in plan.tasks] == ["writer", "coder", "default"]


def test_agent_names_are_not_checked_without_known_agents() -> None:
    plan = plan_of(task("a", agent="anything"))
    assert plan.task("a").agent == "anything"


def test_check_agent_is_called_for_each_profile() -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    def check(name: str, profile: dict[str, Any]) -> list[str]:
        seen.append((name, profile))
        if "temperature" in profile and not 0 <= profile["temperature"] <= 2:
            return ["temperature must be between 0 and 2"]
        if name == "broken":
            raise ValueError("cannot build this profile")
        return []

    raw = {
        "tasks": [task("a")],
        "agents": {"ok": {"temperature": 1}, "hot": {"temperature": 9}, "broken": {}, "bad": 3},
    }
    problems = problems_of(raw, check_agent=check)
    assert [n for n, _ in seen] == ["ok", "hot", "broken"]
    assert [(p.kind, p.location, p.message) for p in problems] == [
        ("agent_profile", "agents.hot", "agent profile 'hot': temperature must be between 0 and 2"),
        ("agent_profile", "agents.broken", "agent profile 'broken': cannot build this profile"),
        ("agent_profile", "agents.bad", "agent profile 'bad' must be an object, got an integer"),
    ]


def test_agents_section_must_be_an_object() -> None:
    problem = only_problem({"tasks": [task("a")], "agents": ["writer"]})
    assert (problem.location, problem.message) == (
        "agents",
        "'agents' must be an object of profiles by name, got a list",
    )


# --------------------------------------------------------------------------- many problems


def test_all_problems_are_reported_at_once() -> None:
    raw = {
        "tasks": [
            task("a", "c"),
            task("b", "a", "zzz"),
            task("c", "b"),
            task("a"),
            task("d", agent=1),
        ],
        "config": {"max_workers": 0},
    }
    with pytest.raises(PlanValidationError) as info:
        validate_plan(raw, source="plan.json")
    err = info.value
    assert [(p.kind, p.location) for p in err.problems] == [
        ("field", "tasks[4].agent"),
        ("duplicate_id", "tasks[3].task_id"),
        ("unknown_dependency", "tasks[1].dependencies[1]"),
        ("cycle", "tasks[0].dependencies[0]"),
        ("config", "config.max_workers"),
    ]
    assert str(err).splitlines() == [
        "plan.json: tasks[4].agent: task 'd': agent must be a non-empty string, got an integer",
        "plan.json: tasks[3].task_id: duplicate task_id 'a' (tasks[0] and tasks[3])",
        "plan.json: tasks[1].dependencies[1]: task 'b' depends on unknown task 'zzz'",
        "plan.json: tasks[0].dependencies[0]: dependency cycle: a -> b -> c -> a",
        "plan.json: config.max_workers: max_workers must be at least 1, got 0",
    ]
    assert isinstance(err, ValueError)


def test_validation_error_pickles() -> None:
    with pytest.raises(PlanValidationError) as info:
        validate_plan({"tasks": []}, source="p.yaml")
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.problems == info.value.problems
    assert (
        str(copy)
        == str(info.value)
        == "p.yaml: tasks: 'tasks' is empty: a plan needs at least one task"
    )


# --------------------------------------------------------------------------- loading


def test_load_json_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"tasks": DIAMOND}), encoding="utf-8")
    plan = load_plan(path)
    assert plan.task_ids == ["a", "b", "c", "d"]
    assert load_plan(str(path)).task_ids == plan.task_ids


def test_malformed_json_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{\n  "tasks": [\n    {"task_id": "a",}\n  ]\n}\n', encoding="utf-8")
    with pytest.raises(PlanValidationError) as info:
        load_plan(path)
    (problem,) = info.value.problems
    assert problem.kind == "json"
    assert problem.location == "line 3, column 21"
    assert problem.message == "malformed JSON: Expecting property name enclosed in double quotes"
    assert str(info.value) == f"{path}: line 3, column 21: {problem.message}"


def test_yaml_plan(tmp_path: Path) -> None:
    text = """\
tasks:
  - task_id: research
    agent: writer
    description: Find sources
    input_data: {topic: dags}
  - task_id: summary
    dependencies: [research]
config:
  max_workers: 2
  failure_policy: all_or_nothing
agents:
  writer:
    system_prompt: Write.
"""
    for name in ("plan.yaml", "plan.yml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        plan = load_plan(path, known_agents=["default"])
        assert plan.task_ids == ["research", "summary"]
        assert plan.task("research").input_data == {"topic": "dags"}
        assert plan.task("summary").dependencies == ["research"]
        assert plan.config.failure_policy == "all_or_nothing"
        assert plan.agents == {"writer": {"system_prompt": "Write."}}


def test_malformed_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("tasks:\n  - task_id: a\n   bad: [\n", encoding="utf-8")
    with pytest.raises(PlanValidationError) as info:
        load_plan(path)
    (problem,) = info.value.problems
    assert problem.kind == "yaml"
    assert problem.message.startswith("malformed YAML: ")
    assert problem.location.startswith("line 3, column ")


def test_yaml_problems_are_validated_like_json(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("tasks:\n  - task_id: a\n    dependencies: [b]\n", encoding="utf-8")
    with pytest.raises(PlanValidationError) as info:
        load_plan(path)
    assert str(info.value) == (
        f"{path}: tasks[0].dependencies[0]: task 'a' depends on unknown task 'b'"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    with pytest.raises(PlanValidationError) as info:
        load_plan(path)
    (problem,) = info.value.problems
    assert problem.kind == "file"
    assert str(info.value) == f"{path}: plan file not found: {path}"


def test_directory_is_not_a_plan(tmp_path: Path) -> None:
    with pytest.raises(PlanValidationError) as info:
        load_plan(tmp_path)
    assert info.value.problems[0].kind == "file"


def test_text_overrides_the_file_and_suffix_picks_the_format() -> None:
    plan = load_plan("virtual.yaml", text="tasks:\n  - task_id: a\n")
    assert plan.task_ids == ["a"]
    with pytest.raises(PlanValidationError) as info:
        load_plan("virtual.json", text="tasks:\n  - task_id: a\n")
    assert info.value.problems[0].kind == "json"


def test_stdin_json_via_text() -> None:
    plan = load_plan("-", text=json.dumps({"tasks": [task("a")]}))
    assert plan.task_ids == ["a"]


def test_stdin_yaml_via_text() -> None:
    plan = load_plan("-", text="tasks:\n  - task_id: a\n  - task_id: b\n    dependencies: [a]\n")
    assert plan.task_ids == ["a", "b"]


def test_stdin_broken_json_object_is_a_json_problem() -> None:
    with pytest.raises(PlanValidationError) as info:
        load_plan("-", text='{"tasks": [}')
    (problem,) = info.value.problems
    assert (problem.kind, problem.location) == ("json", "line 1, column 12")
    assert str(info.value).startswith("<stdin>: line 1, column 12: malformed JSON")


def test_stdin_broken_yaml_is_a_yaml_problem() -> None:
    with pytest.raises(PlanValidationError) as info:
        load_plan("-", text="tasks: [a\n")
    assert info.value.problems[0].kind == "yaml"
    assert str(info.value).startswith("<stdin>: line 2, column 1: malformed YAML")


def test_stdin_problems_are_prefixed_with_stdin() -> None:
    with pytest.raises(PlanValidationError) as info:
        load_plan("-", text='{"tasks": []}')
    assert str(info.value) == "<stdin>: tasks: 'tasks' is empty: a plan needs at least one task"


def test_stdin_is_read_when_no_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"tasks": [{"task_id": "from-stdin"}]}'))
    assert load_plan("-").task_ids == ["from-stdin"]


def test_known_agents_and_check_agent_pass_through_load_plan() -> None:
    text = json.dumps({"tasks": [task("a", agent="x")], "agents": {"y": {}}})
    with pytest.raises(PlanValidationError) as info:
        load_plan("-", text=text, known_agents=["default"], check_agent=lambda n, p: ["empty"])
    assert [p.kind for p in info.value.problems] == ["agent_profile", "unknown_agent"]


# --------------------------------------------------------------------------- graph


def test_diamond_levels_and_critical_path() -> None:
    plan = plan_of(*DIAMOND)
    assert dependency_levels(plan) == [["a"], ["b", "c"], ["d"]]
    assert topological_order(plan) == ["a", "b", "c", "d"]
    assert critical_path(plan) == (["a", "b", "d"], 3.0)
    assert critical_path(plan, {"a": 1, "b": 2, "c": 5, "d": 1}) == (["a", "c", "d"], 7.0)
    assert format_levels(plan) == (
        "level 0: a\nlevel 1: b, c\nlevel 2: d\ncritical path: a -> b -> d (3 tasks)"
    )
    assert format_levels(plan, {"a": 1, "b": 2, "c": 5, "d": 1.5}).endswith(
        "critical path: a -> c -> d (3 tasks, 7.5 s)"
    )


def test_chain_levels_and_critical_path() -> None:
    # Listed backwards: levels and order must follow the dependencies, not the listing.
    plan = plan_of(task("c", "b"), task("b", "a"), task("a"))
    assert dependency_levels(plan) == [["a"], ["b"], ["c"]]
    assert topological_order(plan) == ["a", "b", "c"]
    assert critical_path(plan) == (["a", "b", "c"], 3.0)


def test_wide_plan() -> None:
    ids = [f"t{i:02d}" for i in range(20)]
    plan = plan_of(*(task(i) for i in ids), task("merge", *ids))
    assert dependency_levels(plan) == [ids, ["merge"]]
    assert critical_path(plan) == (["t00", "merge"], 2.0)
    assert format_levels(plan).splitlines()[-1] == "critical path: t00 -> merge (2 tasks)"


def test_single_task_format() -> None:
    assert format_levels(plan_of(task("only"))) == "level 0: only\ncritical path: only (1 task)"


def test_level_is_one_past_the_deepest_dependency() -> None:
    plan = plan_of(task("a"), task("b", "a"), task("c", "b"), task("d", "a", "c"), task("e"))
    assert dependency_levels(plan) == [["a", "e"], ["b"], ["c"], ["d"]]


def test_topological_order_is_stable() -> None:
    plan = plan_of(task("z"), task("y", "x"), task("x"), task("w"))
    assert topological_order(plan) == ["z", "x", "y", "w"]


def test_critical_path_ties_go_to_plan_order() -> None:
    plan = plan_of(task("p"), task("q"), task("r", "q"), task("s", "p"))
    assert critical_path(plan) == (["p", "s"], 2.0)
    assert critical_path(plan, {"q": 2, "r": 1, "p": 1, "s": 2}) == (["p", "s"], 3.0)


def test_critical_path_durations() -> None:
    plan = plan_of(*DIAMOND)
    # Missing durations weigh 0; the chain still runs through to a last task.
    assert critical_path(plan, {}) == (["a", "b", "d"], 0.0)
    assert critical_path(plan, {"c": 0.5}) == (["a", "c", "d"], 0.5)
    assert critical_path(plan, {"d": 4}) == (["a", "b", "d"], 4.0)
    with pytest.raises(ValueError, match="'b'"):
        critical_path(plan, {"b": -1})


# --------------------------------------------------------------------------- properties


@st.composite
def random_dags(draw: st.DrawFn) -> dict[str, Any]:
    """A plan whose edges go from earlier to later tasks, listed in a shuffled order."""
    size = draw(st.integers(min_value=1, max_value=12))
    ids = [f"t{i}" for i in range(size)]
    deps = {
        ids[j]: sorted(draw(st.sets(st.sampled_from(ids[:j]))) if j else set()) for j in range(size)
    }
    listing = draw(st.permutations(ids))
    return {"tasks": [task(i, *deps[i]) for i in listing]}


@settings(max_examples=150, deadline=None)
@given(raw=random_dags())
def test_levels_cover_every_task_once_after_their_dependencies(raw: dict[str, Any]) -> None:
    plan = validate_plan(raw)
    levels = dependency_levels(plan)
    flat = [t for level in levels for t in level]
    assert sorted(flat) == sorted(plan.task_ids)
    assert len(flat) == len(set(flat))
    level_of = {t: number for number, level in enumerate(levels) for t in level}
    order = {t: i for i, t in enumerate(plan.task_ids)}
    for number, level in enumerate(levels):
        assert level, "no level is empty"
        assert level == sorted(level, key=order.__getitem__)
        for t in level:
            deps = plan.task(t).dependencies
            assert all(level_of[d] < number for d in deps)
            if number:
                assert any(level_of[d] == number - 1 for d in deps)
    topo = topological_order(plan)
    position = {t: i for i, t in enumerate(topo)}
    assert all(position[d] < position[t] for t in topo for d in plan.task(t).dependencies)
    path, total = critical_path(plan)
    assert total == len(path) == len(levels)
    assert all(a in plan.task(b).dependencies for a, b in zip(path, path[1:], strict=False))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(raw=random_dags(), data=st.data())
def test_back_edge_produces_a_printed_cycle(raw: dict[str, Any], data: st.DataObject) -> None:
    plan = validate_plan(raw)
    pairs = [(t, d) for t in plan.task_ids for d in plan.dependants(t)]
    assume(pairs)
    upstream, downstream = data.draw(st.sampled_from(pairs))
    for entry in raw["tasks"]:
        if entry["task_id"] == upstream:
            entry["dependencies"].append(downstream)  # the back edge
    edges = {(d, e["task_id"]) for e in raw["tasks"] for d in e["dependencies"]}

    problems = problems_of(raw)
    assert problems
    assert all(p.kind == "cycle" for p in problems)
    for problem in problems:
        prefix = "dependency cycle: "
        assert problem.message.startswith(prefix)
        path = problem.message.removeprefix(prefix).split(" -> ")
        assert len(path) >= 3
        assert path[0] == path[-1] == problem.task_id
        assert len(set(path[:-1])) == len(path) - 1
        for a, b in zip(path, path[1:], strict=False):
            assert (a, b) in edges, f"{a} -> {b} is not a dependency edge"
        assert (downstream, upstream) in set(zip(path, path[1:], strict=False))
