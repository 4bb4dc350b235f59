"""``fanout map`` as users run it: a subprocess against the fake OpenAI server, and usage errors."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefect_fanout.cli import main
from tests.fakeopenai import Error, FakeOpenAI
from tests.map_helpers import read_jsonl, tag, write_corpus

ROOT = Path(__file__).resolve().parent.parent


def run_cli(prefect_server: Any, fake: FakeOpenAI, *args: str) -> subprocess.CompletedProcess[str]:
    env = prefect_server.env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test")
    env.pop("FANOUT_MODEL", None)
    command = [sys.executable, "-m", "prefect_fanout.cli", "map", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)


@pytest.mark.server
def test_cli_prints_only_the_summary_and_exits_0(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(10)]
    source = write_corpus(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    done = run_cli(
        prefect_server,
        fake_openai,
        str(source),
        "--agent",
        "default",
        "--partition",
        "count:3",
        "--output",
        str(out),
        "--max-workers",
        "4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is the summary JSON and nothing else
    assert summary == json.loads((out / "summary.json").read_text())
    assert (summary["total"], summary["completed"], summary["failed"]) == (10, 10, 0)
    assert summary["max_workers"] == 4 and 1 <= summary["concurrency_reached"] <= 4
    assert summary["recording_wait_s"] == 0.0  # 10 calls: the brake never reads the server
    assert summary["partition_spec"] == "count:3" and len(summary["partitions"]) == 3
    assert summary["usage"]["map"]["calls"] == 10 and summary["cost_usd"] is None
    assert "| INFO" not in done.stderr  # Prefect's run lines only with --verbose
    assert [r["id"] for r in read_jsonl(out / "final.jsonl")] == [r["id"] for r in records]


@pytest.mark.server
def test_poisoned_item_is_recorded_failed_and_the_rest_completes(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} item-{n}."} for n in range(8)]
    fake_openai.script(f"{run} item-5.", Error(400, "this item is poison"))
    out = tmp_path / "out"
    done = run_cli(
        prefect_server,
        fake_openai,
        str(write_corpus(tmp_path / "in.jsonl", records)),
        "--agent",
        "default",
        "--partition",
        "count:2",
        "--output",
        str(out),
    )
    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["failed_ids"] == [f"{run}-5"]
    assert (summary["completed"], summary["failed"], summary["dead_letter"]) == (7, 1, 0)
    rows = {r["id"]: r for r in read_jsonl(out / "final.jsonl")}
    assert rows[f"{run}-5"]["status"] == "failed"
    assert "poison" in rows[f"{run}-5"]["error"] and "output" not in rows[f"{run}-5"]
    assert all(r["status"] == "completed" for i, r in rows.items() if i != f"{run}-5")
    partition = rows[f"{run}-5"]["partition"]
    in_file = read_jsonl(out / "partitions" / f"partition-{partition}.jsonl")
    assert [r["status"] for r in in_file].count("failed") == 1  # its partition was still written
    assert fake_openai.count(f"{run} item-5.") == 1  # a 400 is never retried
    assert {p["status"] for p in summary["partitions"]} == {"written"}


@pytest.mark.server
def test_partition_that_cannot_be_written_is_dead_lettered(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(9)]
    out = tmp_path / "out"
    (out / "partitions" / "partition-0001.jsonl").mkdir(parents=True)  # the write fails every time
    done = run_cli(
        prefect_server,
        fake_openai,
        str(write_corpus(tmp_path / "in.jsonl", records)),
        "--agent",
        "default",
        "--partition",
        "count:3",
        "--output",
        str(out),
        "--partition-retries",
        "2",
        "--retry-delay",
        "0.01",
        "--verbose",  # Prefect's run lines on stderr
        "--log-calls",  # and a line per successful call (by default none)
    )
    assert done.returncode == 1, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    dead_ids = [f"{run}-{n}" for n in (3, 4, 5)]
    assert summary["dead_letter_ids"] == dead_ids
    assert (summary["completed"], summary["failed"], summary["dead_letter"]) == (6, 0, 3)
    report = {p["key"]: p for p in summary["partitions"]}
    assert report["0001"]["status"] == "dead_letter" and report["0001"]["attempts"] == 3
    assert report["0001"]["file"] is None and "IsADirectoryError" in report["0001"]["error"]
    assert report["0000"]["status"] == report["0002"]["status"] == "written"
    dead = read_jsonl(out / "dead_letters.jsonl")
    assert [d["id"] for d in dead] == dead_ids
    assert all(d["partition"] == "0001" and "3 attempt" in d["reason"] for d in dead)
    rows = read_jsonl(out / "final.jsonl")
    assert [r["status"] for r in rows] == ["completed"] * 3 + ["dead_letter"] * 3 + [
        "completed"
    ] * 3
    assert len(read_jsonl(out / "partitions" / "partition-0000.jsonl")) == 3
    assert len(read_jsonl(out / "partitions" / "partition-0002.jsonl")) == 3
    assert done.stderr.count("partition:0001") >= 3  # each attempt is a retry of the task run


@pytest.mark.server
def test_tree_reduce_from_the_cli(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} fact {n}"} for n in range(6)]
    out = tmp_path / "out"
    done = run_cli(
        prefect_server,
        fake_openai,
        str(write_corpus(tmp_path / "in.jsonl", records)),
        "--agent",
        "default",
        "--partition",
        "count:2",
        "--output",
        str(out),
        "--reduce",
        "default",
        "--reduce-budget",
        "30",
        "--verbose",  # Prefect's run lines on stderr
        "--log-calls",  # and a line per successful call (by default none)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    result = json.loads((out / "reduce.json").read_text())
    assert summary["reduce"]["status"] == result["status"] == "completed"
    assert summary["reduce"]["levels"] == result["levels"] >= 2
    assert "reduce:L1-G1" in done.stderr  # reduce calls are task runs named by level and group
    assert re.search(r"'reduce:L1-G1' - \[default:L1-G1\] \S+ answered in", done.stderr)


def usage_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["map", *args])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.out == ""
    return captured.err


def test_usage_errors_exit_2_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "FANOUT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    good = write_corpus(tmp_path / "good.jsonl", [{"id": "a", "title": "x"}, {"id": "b"}])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", oops}\n', encoding="utf-8")
    out = str(tmp_path / "out")
    common = ["--agent", "default", "--output", out, "--model", "test"]

    err = usage_error(capsys, str(bad), "--partition", "count:2", *common)
    assert "bad.jsonl, line 3" in err and "invalid JSON" in err

    err = usage_error(capsys, str(good), "--partition", "count:zero", *common)
    assert "invalid partition spec 'count:zero'" in err and "valid forms" in err

    err = usage_error(capsys, str(good), "--partition", "count:1", *common, "--prompt", "{title}")
    assert "item 'b'" in err and "'title'" in err and "--prompt" in err

    err = usage_error(capsys, str(tmp_path / "missing.jsonl"), "--partition", "size", *common)
    assert "missing.jsonl: no such file or directory" in err

    err = usage_error(
        capsys, str(good), "--partition", "size", "--agent", "default", "--output", out
    )
    assert "no LLM endpoint is configured" in err  # found before the flow run starts

    agents = tmp_path / "agents.json"
    agents.write_text('{"x": {"temperature": "hot"}}', encoding="utf-8")
    err = usage_error(capsys, str(good), "--partition", "size", *common, "--agents", str(agents))
    assert "agents.json: agent 'x': invalid profile" in err

    err = usage_error(
        capsys,
        str(tmp_path),
        "--partition",
        "size",
        "--agent",
        "default",
        "--output",
        str(tmp_path / "inside"),
        "--model",
        "test",
    )
    assert "inside the input directory" in err

    with pytest.raises(SystemExit) as exit_info:
        main(["map", str(good), "--partition", "size", *common, "--max-workers", "0"])
    assert exit_info.value.code == 2
    assert "--max-workers" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing ran


@pytest.mark.server
def test_extract_insights_flow_runs_offline_and_reports(
    prefect_server: Any, tmp_path: Path
) -> None:
    env = prefect_server.env(FANOUT_MODEL="test")
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    out = tmp_path / "insights"
    command = [sys.executable, "flows/extract_insights.py", "--output", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stdout
    assert report.startswith("Extracted insights from 40 notes")
    assert "8 by month: 2024-01 (5)" in report and "40 completed, 0 failed" in report
    assert f"Outputs in {out}/" in report and "| INFO" not in report  # logs stay on stderr
    rows = read_jsonl(out / "final.jsonl")
    assert len(rows) == 40 and {r["partition"] for r in rows} == {f"2024-0{m}" for m in range(1, 9)}
    assert all(set(r["output"]) == {"topics", "summary", "sentiment", "action_items"} for r in rows)
    assert len(list((out / "partitions").iterdir())) == 8
    digest = json.loads((out / "reduce.json").read_text())
    assert digest["status"] == "completed" and digest["agent"] == "digest"
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert again.returncode == 0 and "40 from cache" in again.stdout


@pytest.mark.timeout(400)
@pytest.mark.server
def test_the_demos_first_run_on_prefects_temporary_server_shows_no_traceback(
    tmp_path: Path,
) -> None:
    # A new PREFECT_HOME and no PREFECT_API_URL: Prefect starts its temporary server, and
    # stops it at exit; its task-run recorder must not be stopped while it writes. The
    # server's own log lines stay off the console without --verbose (cli/tuning.py), so the
    # server's database is read too: every task run reached a final state before the stop.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "OPENAI_"))
    }
    env.update(
        PREFECT_HOME=str(tmp_path / "home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        FANOUT_MODEL="test",
    )
    command = [sys.executable, "flows/extract_insights.py", "--output", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=360, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Stopping temporary server" in done.stderr  # the temporary server ran, and stopped
    assert "Traceback" not in done.stderr, done.stderr[-5000:]
    assert "| ERROR" not in done.stderr, done.stderr[-5000:]
    with sqlite3.connect(tmp_path / "home" / "prefect.db") as db:
        states = dict(db.execute("SELECT state_type, count(*) FROM task_run GROUP BY state_type"))
    assert states.get("COMPLETED", 0) >= 40 and set(states) == {"COMPLETED"}, states
