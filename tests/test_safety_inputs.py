"""Issue 22, text that cannot be sent, empty prompts, links out of a corpus and long ids."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from prefect_fanout.cli import main
from tests.fakeopenai import FakeOpenAI
from tests.map_helpers import read_jsonl, tag
from tests.test_cli_dispatch import env_for, fanout
from tests.test_map_cli import run_cli

SURROGATE_LINE = '{"id": "bad", "text": "half \\ud800 a pair"}\n'


def _corpus(path: Path, run: str) -> Path:
    lines = [json.dumps({"id": f"ok-{n}", "text": f"{run} fine {n}"}) + "\n" for n in range(2)]
    path.write_text(lines[0] + lines[1] + SURROGATE_LINE, encoding="utf-8")
    return path


@pytest.mark.server
def test_unencodable_jsonl_text_is_exit_2_naming_file_and_line_before_any_call(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = _corpus(tmp_path / "in.jsonl", run)
    out = tmp_path / "out"
    args = (str(source), "--agent", "default", "--partition", "count:1", "--output", str(out))
    refused = run_cli(prefect_server, fake_openai, *args)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"{source}, line 3: field text: text that cannot be encoded as UTF-8" in refused.stderr
    assert "--errors replace" in refused.stderr
    assert fake_openai.count(run) == 0 and not out.exists()

    replaced = run_cli(prefect_server, fake_openai, *args, "--errors", "replace")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    rows = {row["id"]: row for row in read_jsonl(out / "final.jsonl")}
    assert rows["bad"]["output"] == "echo: half \ufffd a pair"
    assert rows["ok-1"]["status"] == "completed"


def test_validate_catches_unencodable_text_in_a_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text('{"tasks": [{"task_id": "a", "description": "x\\udc80y"}]}', encoding="utf-8")
    assert main(["validate", str(plan)]) == 2
    err = capsys.readouterr().err
    assert "tasks[0].description: text that cannot be encoded as UTF-8" in err


def test_call_with_an_empty_prompt_is_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    assert main(["call", "-", "--model", "test"]) == 2
    assert "the prompt is empty" in capsys.readouterr().err


@pytest.mark.server
def test_a_directory_corpus_does_not_follow_links_out_of_it(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "note.md").write_text(f"{run} inside")
    secret = tmp_path / "elsewhere.txt"
    secret.write_text(f"{run} outside: private")
    (corpus / "link.md").symlink_to(secret)
    out = tmp_path / "out"
    args = (str(corpus), "--agent", "default", "--partition", "count:1", "--output", str(out))

    refused = run_cli(prefect_server, fake_openai, *args)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"{corpus / 'link.md'}: a symbolic link to {secret}" in refused.stderr
    assert "--follow-symlinks" in refused.stderr
    assert fake_openai.count(run) == 0

    followed = run_cli(prefect_server, fake_openai, *args, "--follow-symlinks")
    assert followed.returncode == 0, followed.stderr[-2000:]
    assert fake_openai.count(f"{run} outside") == 1


@pytest.mark.server
def test_a_300_character_task_id_keeps_its_trace(prefect_server: Any, tmp_path: Path) -> None:
    long_a, long_b = "a" * 299 + "1", "a" * 299 + "2"
    plan = {"tasks": [{"task_id": i, "description": f"task {i[-1]}"} for i in (long_a, long_b)]}
    traces = tmp_path / "traces"
    done = fanout(
        "dispatch", "-", "--model", "test", "--trace-dir", str(traces),
        env=env_for(prefect_server, None), stdin=json.dumps(plan),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    index = json.loads(Path(json.loads(done.stdout)["trace_index"]).read_text())
    names = [task["trace"] for task in index["tasks"]]
    assert all(name is not None and len(Path(name).name) <= 255 for name in names), names
    assert len(set(names)) == 2 and all(Path(name).is_file() for name in names)
