"""Plan-and-synthesise (seed 003): the subtasks form, per-type settings, the synthesis call."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from prefect_fanout import LLMEndpoint, cli, dispatch_plan
from prefect_fanout.errors import PlanValidationError
from prefect_fanout.options import RunOptions
from prefect_fanout.plan.agents import load_dispatch_plan
from tests.fakeopenai import Error, FakeOpenAI, Reply

pytestmark = pytest.mark.usefixtures("prefect_server")


def paper_plan(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "task": f"Analyse the paper {key}",
        "subtasks": [
            {"id": "methods", "type": "analysis", "content": f"M-{key}", "dependencies": []},
            {"id": "results", "type": "analysis", "content": f"R-{key}", "dependencies": []},
            {
                "id": "discussion",
                "type": "critique",
                "content": f"D-{key}",
                "dependencies": ["methods", "results"],
            },
        ],
        "types": {
            "analysis": {"model": "gpt-4o-mini", "temperature": 0.1},
            "critique": {"model": "gpt-4o", "temperature": 0.9, "max_tokens": 300},
            "writer": {"system_prompt": f"WRITER-{key}"},
        },
        "synthesize": "writer",
        **extra,
    }


def write(tmp_path: Path, plan: dict[str, Any]) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return path


@pytest.mark.server
def test_subtasks_get_their_type_settings_and_the_synthesis_gets_every_output(
    fake_openai: FakeOpenAI, endpoint: LLMEndpoint, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:12]
    for name in ("M", "R", "D"):
        fake_openai.script(f"{name}-{key}", Reply(f"{name.lower()}-out"))
    fake_openai.script(f"Analyse the paper {key}\n\n## Upstream", Reply("final answer"))
    result = dispatch_plan(
        write(tmp_path, paper_plan(key)),
        options=RunOptions(endpoint=endpoint),
    )

    assert result.status == "completed"
    assert [t.task_id for t in result.tasks] == ["methods", "results", "discussion"]
    assert result.synthesis is not None and result.synthesis.output == "final answer"
    (methods,) = fake_openai.requests(f"M-{key}")
    (discussion,) = fake_openai.requests(f"D-{key}")
    assert (methods.body["model"], methods.body["temperature"]) == ("gpt-4o-mini", 0.1)
    assert (discussion.body["model"], discussion.body["temperature"]) == ("gpt-4o", 0.9)
    assert discussion.body["max_tokens"] == 300
    assert methods.prompt.startswith(f"M-{key}\n\n## Input data\n")
    assert f'"task": "Analyse the paper {key}"' in methods.prompt
    (synthesis,) = [
        r for r in fake_openai.requests(f"Analyse the paper {key}") if r.prompt.startswith("Anal")
    ]
    assert synthesis.body["messages"][0]["content"] == f"WRITER-{key}"
    assert synthesis.prompt == (
        f"Analyse the paper {key}\n\n## Upstream results\n\n### methods\nm-out"
        "\n\n### results\nr-out\n\n### discussion\nd-out"
    )
    assert result.usage.prompt_tokens > sum(t.usage.prompt_tokens for t in result.tasks)


@pytest.mark.server
def test_synthesis_failure_makes_the_dispatch_partial_and_is_skipped_under_all_or_nothing(
    fake_openai: FakeOpenAI, endpoint: LLMEndpoint, tmp_path: Path
) -> None:
    key = uuid.uuid4().hex[:12]
    fake_openai.script(f"Analyse the paper {key}\n\n## Upstream", Error(400))
    result = dispatch_plan(
        write(tmp_path, paper_plan(key)),
        options=RunOptions(endpoint=endpoint),
    )
    assert result.status == "partial" and result.synthesis is not None
    assert result.synthesis.status == "failed" and result.summary.completed == 3

    key = uuid.uuid4().hex[:12]
    fake_openai.script(f"M-{key}", Error(400))
    plan = paper_plan(key, config={"failure_policy": "all_or_nothing"})
    result = dispatch_plan(
        write(tmp_path, plan),
        options=RunOptions(endpoint=endpoint),
    )
    assert result.status == "failed" and result.synthesis is not None
    assert result.synthesis.status == "skipped"
    assert fake_openai.count(f"Analyse the paper {key}\n\n## Upstream") == 0


def test_tasks_form_accepts_config_synthesize_and_goal(tmp_path: Path) -> None:
    plan = {
        "tasks": [{"task_id": "a", "description": "x"}],
        "config": {"synthesize": "default"},
        "goal": "Write it up",
    }
    loaded = load_dispatch_plan(write(tmp_path, plan))
    assert loaded.config.synthesize == "default" and loaded.goal == "Write it up"


def test_unknown_subtask_type_is_reported_at_its_place_and_the_cli_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = paper_plan("k")
    plan["subtasks"][2]["type"] = "critik"
    plan["synthesize"] = "nobody"
    path = write(tmp_path, plan)
    with pytest.raises(PlanValidationError) as caught:
        load_dispatch_plan(path)
    locations = [p.location for p in caught.value.problems]
    assert locations == ["subtasks[2].type", "config.synthesize"]
    assert "unknown type 'critik'" in str(caught.value)
    assert cli.main(["validate", str(path)]) == 2
    assert cli.main(["dispatch", str(path), "--model", "test"]) == 2
    assert "subtasks[2].type: unknown type 'critik'" in capsys.readouterr().err
