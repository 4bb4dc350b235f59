"""What a command shows on the console: one line per failure, tracebacks only with --verbose
and in the run's logs, names printed literally (never read as emoji codes or markup)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.ui_helpers import PrefectAPI, poll

pytestmark = pytest.mark.usefixtures("prefect_server")


def fanout(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_fanout.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _error_logs(api: PrefectAPI) -> list[dict]:
    return api._post(  # the test helper's POST: logs at ERROR and above, newest first
        "/logs/filter",
        {"logs": {"level": {"ge_": 40}}, "sort": "TIMESTAMP_DESC", "limit": 200},
    )


def test_a_refused_connection_is_one_line_and_the_traceback_goes_to_the_run_logs(prefect_server):
    dead = free_port()  # nothing listens here
    env = prefect_server.env(
        OPENAI_BASE_URL=f"http://127.0.0.1:{dead}/v1", OPENAI_API_KEY="sk-console"
    )
    done = fanout(["call", "hello", "--model", "gpt-4o-mini"], env)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("fanout call: failed: default:")  # what failed and which item
    assert "Connection refused" in line  # why
    assert f"Nothing answered at http://127.0.0.1:{dead}/v1" in line  # what to do
    assert "Traceback" not in done.stderr

    with PrefectAPI(prefect_server.api_url) as api:  # the UI's logs keep the traceback
        logs = poll(
            lambda: [
                log["message"]
                for log in _error_logs(api)
                if f"127.0.0.1:{dead}" in log["message"] and "Traceback" in log["message"]
            ],
            bool,
            60,
            "the failed call's traceback in the run's logs",
        )
    assert any("RetriesExhaustedError" in message for message in logs)


def test_verbose_shows_the_retries_and_tracebacks(prefect_server):
    dead = free_port()
    env = prefect_server.env(
        OPENAI_BASE_URL=f"http://127.0.0.1:{dead}/v1", OPENAI_API_KEY="sk-console"
    )
    done = fanout(["call", "hello", "--model", "gpt-4o-mini", "--verbose"], env)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "retrying in" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("fanout call: failed:")


@pytest.mark.parametrize("task_id", ["a:", "smile:"])
def test_ids_that_are_emoji_codes_print_literally(prefect_server, tmp_path, task_id):
    plan = tmp_path / "plan.json"
    description = "say hi"
    plan.write_text(
        json.dumps(
            {"tasks": [{"task_id": task_id, "agent": "default", "description": description}]}
        )
    )
    done = fanout(
        ["dispatch", str(plan), "--model", "test", "--refresh", "--verbose", "--log-calls"],
        prefect_server.env(),
    )
    assert done.returncode == 0, done.stderr
    # Rich would print 'default🅰' / 'default😄' for the task run 'default:a:' / 'default:smile:'
    assert f"Task run 'default:{task_id}'" in done.stderr, done.stderr
    assert "🅰" not in done.stderr and "😄" not in done.stderr


def test_a_map_whose_endpoint_is_down_says_one_line_per_item(prefect_server, tmp_path):
    dead = free_port()
    env = prefect_server.env(
        OPENAI_BASE_URL=f"http://127.0.0.1:{dead}/v1", OPENAI_API_KEY="sk-console"
    )
    source = tmp_path / "in.jsonl"
    source.write_text("".join(f'{{"id": "{n}", "text": "t {n}"}}\n' for n in "abcd"))
    command = ["map", str(source), "--agent", "default", "--partition", "count:1"]
    done = fanout([*command, "--output", str(tmp_path / "out"), "--model", "gpt-4o-mini"], env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    items = [line for line in lines if "failed after 4 attempt(s)" in line]
    assert len(items) == 4 and len(lines) == 6, done.stderr  # one per item, a summary, a problem
    for name in "abcd":
        assert any(f"item {name} (partition 0000) failed: default:{name}:" in x for x in items)
    assert lines[-2].startswith("fanout map: 0 of 4 items completed, 4 failed")
