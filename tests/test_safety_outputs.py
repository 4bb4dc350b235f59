"""Issue 22, outputs are owned: a run never destroys its input or files it did not write.

Each test runs ``fanout map`` as users do (a subprocess against the fake OpenAI
server and the session's Prefect server).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakeopenai import FakeOpenAI, Hang
from tests.map_helpers import read_jsonl, tag, write_corpus
from tests.test_map_cli import ROOT, run_cli

pytestmark = pytest.mark.server


def _records(run: str, n: int = 4) -> list[dict[str, Any]]:
    return [{"id": f"{run}-{i}", "text": f"{run} item {i}"} for i in range(n)]


def _map(server: Any, fake: FakeOpenAI, source: Path, out: Path, *extra: str) -> Any:
    return run_cli(
        server, fake, str(source), "--agent", "default", "--partition", "count:2",
        "--output", str(out), *extra,
    )  # fmt: skip


def test_input_inside_the_output_is_refused_even_with_force(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    out = tmp_path / "d"
    out.mkdir()
    for name in ("final.jsonl", "summary.json"):
        source = write_corpus(out / name, _records(run))
        before = source.read_bytes()
        for extra in ((), ("--force",)):
            done = _map(prefect_server, fake_openai, source, out, *extra)
            assert done.returncode == 2, done.stderr[-2000:]
            assert f"--output {out} contains the input {source}" in done.stderr
            assert source.read_bytes() == before  # the source is only ever read
        source.unlink()
    assert fake_openai.count(run) == 0  # refused before any call


def test_files_fanout_did_not_write_are_refused_then_forced_only_over_its_names(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(tmp_path / "in.jsonl", _records(run))
    out = tmp_path / "theirs"
    out.mkdir()
    theirs = {
        "final.jsonl": '{"mine": 1}\n',
        "summary.json": '{"mine": 2}\n',
        "dead_letters.jsonl": '{"mine": 3}\n',
        "reduce.json": '{"mine": 4}\n',
        "notes.txt": "keep me\n",
    }
    for name, text in theirs.items():
        (out / name).write_text(text)

    refused = _map(prefect_server, fake_openai, source, out)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"--output {out} holds 5 file(s) fanout did not write" in refused.stderr
    assert "--force" in refused.stderr
    assert {n: (out / n).read_text() for n in theirs} == theirs  # nothing touched
    assert fake_openai.count(run) == 0

    forced = _map(prefect_server, fake_openai, source, out, "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    summary = json.loads(forced.stdout)
    assert summary["replaced"] == ["dead_letters.jsonl", "final.jsonl", "summary.json"]
    assert (out / "reduce.json").read_text() == theirs["reduce.json"]  # not fanout's: kept
    assert (out / "notes.txt").read_text() == theirs["notes.txt"]
    assert [r["id"] for r in read_jsonl(out / "final.jsonl")] == [f"{run}-{i}" for i in range(4)]

    again = _map(prefect_server, fake_openai, source, out, "--reduce", "default")
    assert again.returncode == 2  # notes.txt and reduce.json are still not fanout's
    assert "notes.txt" in again.stderr and "reduce.json" in again.stderr


def test_rerun_replaces_and_removes_only_its_own_files(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(tmp_path / "in.jsonl", _records(run))
    out = tmp_path / "out"
    first = _map(prefect_server, fake_openai, source, out, "--reduce", "default")
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = json.loads((out / ".fanout-manifest.json").read_text())
    flow_run_id = json.loads(first.stdout)["flow_run_id"]
    assert manifest["files"]["final.jsonl"] == flow_run_id
    assert "reduce.json" in manifest["files"]

    second = _map(prefect_server, fake_openai, source, out)  # no --reduce: its reduce.json goes
    assert second.returncode == 0, second.stderr[-2000:]
    assert not (out / "reduce.json").exists()
    assert "reduce.json" not in json.loads((out / ".fanout-manifest.json").read_text())["files"]


def test_a_second_run_into_a_directory_in_use_exits_2_naming_the_first(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(tmp_path / "in.jsonl", _records(run, 2))
    out = tmp_path / "shared"
    fake_openai.script(f"{run} item 0", Hang(120))
    env = prefect_server.env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test")
    env.pop("FANOUT_MODEL", None)
    command = [
        sys.executable, "-m", "prefect_fanout.cli", "map", str(source), "--agent", "default",
        "--partition", "count:1", "--output", str(out), "--max-workers", "1",
    ]  # fmt: skip
    first = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while fake_openai.count(f"{run} item 0") == 0:  # the first run is mid-call, holding
            assert first.poll() is None and time.monotonic() < deadline, "first run never asked"
            time.sleep(0.05)
        second = run_cli(
            prefect_server, fake_openai, str(source), "--agent", "coder", "--partition",
            "count:1", "--output", str(out),
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"--output {out} is being written by another fanout run: flow run" in second.stderr
    finally:
        fake_openai.reset()  # the hung call ends (504), is retried and answered
    stdout, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr[-2000:]
    assert json.loads(stdout)["flow_run_id"] in second.stderr
