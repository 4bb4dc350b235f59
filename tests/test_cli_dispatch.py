"""`fanout validate` and `fanout dispatch` as real subprocesses (a handful: each starts Prefect).

In-process CLI tests, which are much faster, are in test_dispatch.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.fakeopenai import Error, FakeOpenAI, Reply

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 180


def fanout(
    *args: str, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_fanout.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=TIMEOUT,
    )


def env_for(server: Any, fake: FakeOpenAI | None) -> dict[str, str]:
    extra = {"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "sk-test"} if fake else {}
    env = server.env(**extra)
    env.pop("FANOUT_MODEL", None)
    if fake is None:
        env.pop("OPENAI_BASE_URL", None)
        env.pop("OPENAI_API_KEY", None)
    return env


@pytest.mark.server
def test_dispatch_plan_from_stdin_prints_only_the_result_json(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:12]
    fake_openai.script(f"A-{key}", Reply(f"a-out-{key}"))
    plan = {
        "tasks": [
            {"task_id": "a", "agent": "debug", "description": f"A-{key}"},
            {"task_id": "b", "agent": "coder", "description": f"B-{key}", "dependencies": ["a"]},
        ]
    }
    done = fanout(
        "dispatch",
        "-",
        "--trace-dir",
        str(tmp_path),
        env=env_for(prefect_server, fake_openai),
        stdin=json.dumps(plan),
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # stdout is the JSON document and nothing else
    assert result["status"] == "completed"
    assert [(t["task_id"], t["agent"], t["status"]) for t in result["tasks"]] == [
        ("a", "debug", "completed"),
        ("b", "coder", "completed"),
    ]
    assert result["summary"] == {
        "total": 2,
        "completed": 2,
        "failed": 0,
        "skipped": 0,
        "cached": 0,
    }
    assert f"### a\na-out-{key}" in fake_openai.requests(f"B-{key}")[0].prompt
    assert Path(result["trace_index"]).is_file() and (tmp_path / "b.json").is_file()
    assert "fanout dispatch: completed: 2 of 2 completed" in done.stderr


@pytest.mark.server
def test_dispatch_with_a_failed_task_exits_1(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:12]
    fake_openai.script(f"A-{key}", Error(400, message="refused"))
    path = tmp_path / "plan.json"
    path.write_text(
        json.dumps(
            {
                "tasks": [
                    {"task_id": "a", "description": f"A-{key}"},
                    {"task_id": "b", "description": f"B-{key}", "dependencies": ["a"]},
                    {"task_id": "c", "description": f"C-{key}"},
                ]
            }
        )
    )
    done = fanout("dispatch", str(path), env=env_for(prefect_server, fake_openai))
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "partial"
    assert [t["status"] for t in result["tasks"]] == ["failed", "skipped", "completed"]
    assert "refused" in result["tasks"][0]["error"]
    assert result["tasks"][1]["error"] == "skipped: upstream task 'a' failed"


@pytest.mark.server
def test_validate_lists_every_problem_on_stderr_with_exit_code_2(
    prefect_server: Any, tmp_path: Path
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {
                "tasks": [
                    {"task_id": "a", "agent": "codr", "dependencies": ["b"]},
                    {"task_id": "b", "dependencies": ["a"]},
                    {"task_id": "b"},
                ],
                "config": {"max_workers": 0},
            }
        )
    )
    done = fanout("validate", str(path), env=env_for(prefect_server, None))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert f"{path}: tasks[2].task_id: duplicate task_id 'b' (tasks[1] and tasks[2])" in lines
    assert any("dependency cycle: a -> b -> a" in line for line in lines)
    assert any(
        "config.max_workers: max_workers must be at least 1, got 0" in line for line in lines
    )
    assert any("unknown agent 'codr' (did you mean 'coder'?)" in line for line in lines)
    assert lines[-1] == "fanout validate: 4 problem(s); nothing was run"


@pytest.mark.server
def test_dispatch_without_an_endpoint_exits_2_before_running(
    prefect_server: Any, tmp_path: Path
) -> None:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"tasks": [{"task_id": "a", "description": "hello"}]}))
    done = fanout("dispatch", str(path), env=env_for(prefect_server, None))
    assert done.returncode == 2
    assert done.stdout == ""
    assert "no LLM endpoint is configured" in done.stderr
    assert "Beginning flow run" not in done.stderr


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    for options in (["--max-workers", "0"], ["--failure-policy", "sometimes"]):
        done = fanout("dispatch", "plan.json", *options, env=env)
        assert done.returncode == 2, options
        assert "error:" in done.stderr and done.stdout == ""


@pytest.mark.server
def test_flow_file_runs_an_example_offline(prefect_server: Any, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "flows/dispatch_plan.py",
            "examples/02_debug_then_fix.json",
            "--model",
            "test",
            "--trace-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env_for(prefect_server, None),
        cwd=ROOT,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [(t["task_id"], t["status"]) for t in result["tasks"]] == [
        ("debug-auth", "completed"),
        ("gen-fix", "completed"),
    ]
    fix = json.loads((tmp_path / "gen-fix.json").read_text())
    assert "## Upstream results\n\n### debug-auth\n[test:debug]" in fix["prompt"]
