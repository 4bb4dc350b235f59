"""One command line: --version, a bad flag shows that command's usage, every command ends with a
one-line summary on stderr, and the JSON summary goes to stdout with --json or to a non-terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path

import pytest

FANOUT = [sys.executable, "-m", "prefect_fanout.cli"]


def test_version():
    done = subprocess.run([*FANOUT, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"fanout {version('prefect-fanout')}"


@pytest.mark.parametrize(
    "command, arguments",
    [
        ("call", ["x"]),
        ("map", ["x", "--agent", "a", "--partition", "count:1", "--output", "o"]),
        ("dispatch", ["x"]),
        ("validate", ["x"]),
    ],
)
def test_an_unknown_flag_prints_that_commands_usage_and_exits_2(command, arguments):
    done = subprocess.run(
        [*FANOUT, command, *arguments, "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"usage: fanout {command} "), done.stderr
    assert "unrecognized arguments: --no-such-flag" in done.stderr


def test_help_lists_every_exit_code():
    done = subprocess.run([*FANOUT, "--help"], capture_output=True, text=True, timeout=60)
    for code in ("0 success", "1 a call", "2 bad usage", "3 the run's budget", "130/143"):
        assert code in done.stdout.replace("\n", " ").replace("  ", " ")


@pytest.mark.server
def test_call_ends_with_one_summary_line_with_the_run_link(prefect_server):
    done = subprocess.run(
        [*FANOUT, "call", "summary line please", "--model", "test"],
        env=prefect_server.env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[test:default] ")
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("fanout call: done: agent default, model test, ")
    assert f"flow run {prefect_server.ui_url}/runs/flow-run/" in lines[0]


def _map_on_a_terminal(tmp_path: Path, env: dict[str, str], *extra: str) -> str:
    """Run `fanout map` with stdout on a pseudo-terminal; return what it wrote there."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "one", "text": "hello"}\n')
    out = tmp_path / f"out{len(extra)}"
    command = [*FANOUT, "map", str(source), "--agent", "default", "--partition", "count:1"]
    command += ["--output", str(out), "--model", "test", *extra]
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            command, env=env, stdout=follower, stderr=subprocess.PIPE, text=True, timeout=180
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal is closed and drained
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert done.returncode == 0, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("fanout map: 1 of 1 items completed, 0 failed")
    ), done.stderr
    return b"".join(chunks).decode()


@pytest.mark.server
def test_map_prints_json_on_a_terminal_only_with_json(prefect_server, tmp_path):
    env = prefect_server.env()
    assert _map_on_a_terminal(tmp_path, env).strip() == ""
    shown = _map_on_a_terminal(tmp_path, env, "--json")
    assert json.loads(shown)["total"] == 1


@pytest.mark.server
@pytest.mark.parametrize("command", ["map", "dispatch"])
def test_no_cache_asks_again_on_map_and_dispatch(command, prefect_server, fake_openai, tmp_path):
    run = uuid.uuid4().hex[:8]
    env = prefect_server.env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test")
    env.pop("FANOUT_MODEL", None)
    if command == "map":
        source = tmp_path / "in.jsonl"
        source.write_text(f'{{"id": "one", "text": "{run} one"}}\n')
        args = ["map", str(source), "--agent", "default", "--partition", "count:1"]
        args += ["--output", str(tmp_path / "out"), "--force"]
    else:
        plan = {"tasks": [{"task_id": "one", "agent": "default", "description": f"{run} one"}]}
        (tmp_path / "plan.json").write_text(json.dumps(plan))
        args = ["dispatch", str(tmp_path / "plan.json")]
    for _ in range(2):
        done = subprocess.run(
            [*FANOUT, *args, "--model", "gpt-4o-mini", "--no-cache"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr
    assert fake_openai.count(run) == 2  # neither run read an answer from the cache
