"""Faults, injected into real processes: a Prefect server that dies, signals, bad input, big input.

Every test runs the real ``fanout`` command in a subprocess against the fake OpenAI server
and a real Prefect server. docs/reliability.md lists each fault with the test that proves it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import start_prefect_server, stop_process_group, wait_healthy
from tests.fakeopenai import FakeOpenAI

pytestmark = pytest.mark.faults

FANOUT = [sys.executable, "-m", "prefect_fanout.cli"]


def corpus(path: Path, n: int, tag: str) -> Path:
    path.write_text("".join(json.dumps({"id": f"{tag}-{i}", "text": f"{tag} {i}"}) + "\n"
                            for i in range(n)))  # fmt: skip
    return path


def env_for(api_url: str, storage: Path, fake: FakeOpenAI | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FANOUT_"))}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(storage.parent / "client-home"),
        PREFECT_LOCAL_STORAGE_PATH=str(storage),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    if fake is not None:
        env.update(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-faults")
    env.update(extra)
    return env


def start_map(source: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    command = [*FANOUT, "map", str(source), "--agent", "default", "--partition", "count:2",
               "--output", str(out), *extra]  # fmt: skip
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(condition: Any, deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling interval; the deadline bounds the wait


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_prefect_server_killed_mid_map_loses_no_answer_and_the_process_ends(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    server = start_prefect_server(tmp_path / "prefect")
    port = int(server.api_url.rsplit(":", 1)[1].split("/")[0])
    try:
        wait_healthy(server)
        tag = uuid.uuid4().hex[:8]
        fake_openai.default_latency = 0.2
        source, out = corpus(tmp_path / "c.jsonl", 100, tag), tmp_path / "out"
        env = env_for(server.api_url, server.storage_path, fake_openai)
        process = start_map(source, out, env, "--max-workers", "8", "--model", "gpt-4o-mini")
        wait_for(lambda: fake_openai.count(tag) >= 50, 120, "50 answered calls")
        stop_process_group(server.process, grace=0)  # SIGTERM, then SIGKILL: the API is gone
        killed = time.monotonic()
        stdout, stderr = process.communicate(timeout=240)
        ended = time.monotonic() - killed
        assert process.returncode == 0, stderr[-3000:]  # every call succeeded (documented)
        assert "could not be reported to the Prefect API" in stderr
        final = rows(out / "final.jsonl")
        assert len(final) == 100 and all(r["status"] == "completed" for r in final)
        assert json.loads(stdout)["completed"] == 100
        assert fake_openai.count(tag) == 100
        print(f"\n[server killed] the process ended {ended:.1f} s after the kill")

        server = start_prefect_server(tmp_path / "prefect", port=port)  # the same database
        wait_healthy(server)
        again = start_map(source, out, env, "--max-workers", "8", "--model", "gpt-4o-mini")
        stdout, stderr = again.communicate(timeout=240)
        assert again.returncode == 0, stderr[-3000:]
        assert fake_openai.count(tag) == 100  # the rerun asked nothing
        assert json.loads(stdout)["cached"] == 100
    finally:
        stop_process_group(server.process)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_map_ends_the_process_within_seconds_and_the_rerun_resumes(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path, signum: int
) -> None:
    tag = uuid.uuid4().hex[:8]
    fake_openai.default_latency = 0.5
    source, out = corpus(tmp_path / "c.jsonl", 40, tag), tmp_path / "out"
    env = env_for(prefect_server.api_url, prefect_server.storage_path, fake_openai)
    process = start_map(source, out, env, "--max-workers", "4", "--model", "gpt-4o-mini")
    wait_for(lambda: fake_openai.count(tag) >= 8, 120, "8 answered calls")
    os.kill(process.pid, signum)
    _, stderr = process.communicate(timeout=10)  # the bound: 5 s grace, and some slack
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert "interrupted" in stderr
    asked = fake_openai.count(tag)
    rerun = start_map(source, out, env, "--max-workers", "4", "--model", "gpt-4o-mini")
    _, stderr = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, stderr[-2000:]
    # Only the missing calls, plus at most the 4 that were in flight, were asked again.
    assert 40 <= fake_openai.count(tag) <= 40 + 4 + (asked - 40 if asked > 40 else 0)
    assert len(rows(out / "final.jsonl")) == 40


def test_a_signal_at_start_ends_the_process_within_seconds(
    prefect_server: Any, tmp_path: Path
) -> None:
    source = corpus(tmp_path / "c.jsonl", 5, uuid.uuid4().hex[:8])
    env = env_for(prefect_server.api_url, prefect_server.storage_path, None, FANOUT_MODEL="test")
    process = start_map(source, tmp_path / "out", env)
    time.sleep(0.3)  # not synchronisation: the signal should land during start-up, anywhere
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=10)
    assert process.returncode in (143, -signal.SIGTERM)


def test_an_empty_corpus_over_a_finished_run_exits_2_and_touches_nothing(
    prefect_server: Any, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    out = tmp_path / "out"
    env = env_for(prefect_server.api_url, prefect_server.storage_path, None, FANOUT_MODEL="test")
    done = start_map(corpus(tmp_path / "c.jsonl", 20, tag), out, env)
    _, stderr = done.communicate(timeout=240)
    assert done.returncode == 0, stderr[-2000:]
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    empty_dir, hidden_only = tmp_path / "empty", tmp_path / "hidden"
    empty_dir.mkdir()
    hidden_only.mkdir()
    (hidden_only / ".notes").write_text("hidden")
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n   \n")
    for source in (tmp_path / "none.jsonl", blank, empty_dir, hidden_only):
        if source.name == "none.jsonl":
            source.write_text("")
        process = start_map(source, out, env)
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (source, stderr[-2000:])
        assert "nothing to map" in stderr and len(stderr.strip().splitlines()) == 1
        after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert after == before, source


def test_an_unwritable_output_exits_2_with_one_line_before_anything_runs(
    prefect_server: Any, tmp_path: Path
) -> None:
    source = corpus(tmp_path / "c.jsonl", 3, uuid.uuid4().hex[:8])
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    env = env_for(prefect_server.api_url, prefect_server.storage_path, None, FANOUT_MODEL="test")
    for out in (a_file / "out", Path("/proc/fanout-out")):
        process = start_map(source, out, env)
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, stderr[-2000:]
        assert stdout == ""
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and f"--output {out}" in lines[0], stderr


def test_non_utf8_files_are_refused_by_default_and_decoded_when_asked(
    prefect_server: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "good.md").write_text("fine")
    (folder / "bad.md").write_bytes(b"caf\xe9 au lait")
    env = env_for(prefect_server.api_url, prefect_server.storage_path, None, FANOUT_MODEL="test")
    process = start_map(folder, tmp_path / "out", env)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "bad.md" in stderr and "byte 3" in stderr and "--errors" in stderr
    process = start_map(folder, tmp_path / "out", env, "--errors", "replace")
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr[-2000:]


def test_a_plan_and_a_prompt_over_the_parameter_limit_run_end_to_end(
    prefect_server: Any, tmp_path: Path
) -> None:
    env = env_for(prefect_server.api_url, prefect_server.storage_path, None, FANOUT_MODEL="test")
    tag = uuid.uuid4().hex[:8]
    width, levels = 40, 50  # 2,000 tasks; each depends on the one above it
    padding = " and say why" * 24  # the plan over 512 KB with a fifth of the tasks to run
    tasks = [
        {
            "task_id": f"t{lv}-{i}",
            "description": f"{tag} step {lv} of chain {i}{padding}",
            "dependencies": [f"t{lv - 1}-{i}"] if lv else [],
        }  # fmt: skip
        for lv in range(levels)
        for i in range(width)
    ]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tasks": tasks, "config": {"max_workers": 32}}))
    assert plan.stat().st_size > 512 * 1024
    check = subprocess.run([*FANOUT, "validate", str(plan)], env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    started = time.monotonic()
    done = subprocess.run([*FANOUT, "dispatch", str(plan)], env=env, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stderr) < 20_000  # never the plan on stderr
    result = json.loads(done.stdout)
    assert result["summary"]["completed"] == width * levels
    print(f"\n[{width * levels}-task plan] dispatched in {time.monotonic() - started:.0f} s")

    prompt = f"{tag} " + "x" * (1024 * 1024)
    call = subprocess.run([*FANOUT, "call", "-", "--json"], input=prompt, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert call.returncode == 0, call.stderr[-2000:]
    assert json.loads(call.stdout)["prompt_tokens"] >= 2
    assert len(call.stderr) < 20_000
