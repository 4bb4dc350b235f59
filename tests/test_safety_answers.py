"""Issue 22, an answer must be an answer: a 200 without text fails the call and is never cached."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fakeopenai import FakeOpenAI, Reply
from tests.map_helpers import read_jsonl, tag, write_corpus
from tests.test_map_cli import run_cli

pytestmark = pytest.mark.server

NOT_ANSWERS = {
    "tools": (Reply(null_content=True, tool_calls=("lookup",), finish_reason="tool_calls"),
              "empty answer: the model answered with tool calls (lookup)"),
    "filtered": (Reply(null_content=True, finish_reason="content_filter"), "content_filter"),
    "refused": (Reply(null_content=True, refusal="I can't help with that."), "refusal: "),
    "blank": (Reply(content="  "), "empty answer: the server answered with content '  '"),
    "null": (Reply(null_content=True), "empty answer: the server answered with content null"),
}  # fmt: skip


def test_answers_that_are_not_answers_fail_with_a_reason_and_are_asked_again(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": name, "text": f"{run} {name}."} for name in [*NOT_ANSWERS, "fine"]]
    source = write_corpus(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    for name, (reply, _) in NOT_ANSWERS.items():
        fake_openai.script(f"{run} {name}.", reply, reply)
    args = (str(source), "--agent", "default", "--partition", "count:1", "--output", str(out))

    first = run_cli(prefect_server, fake_openai, *args)
    assert first.returncode == 1, first.stderr[-2000:]
    summary = json.loads(first.stdout)
    assert summary["failed_ids"] == list(NOT_ANSWERS) and summary["completed"] == 1
    rows = {row["id"]: row for row in read_jsonl(out / "final.jsonl")}
    for name, (_, reason) in NOT_ANSWERS.items():
        assert rows[name]["status"] == "failed" and "output" not in rows[name]
        assert reason in rows[name]["error"], rows[name]
    assert fake_openai.count(f"{run} filtered.") == 1  # never retried

    second = run_cli(prefect_server, fake_openai, *args)
    assert second.returncode == 1
    assert json.loads(second.stdout)["cached"] == 1  # only the real answer was stored
    assert all(fake_openai.count(f"{run} {name}.") == 2 for name in NOT_ANSWERS)
