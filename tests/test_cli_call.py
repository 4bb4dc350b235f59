"""`fanout call` end to end: a subprocess, the session's Prefect server, the fake OpenAI server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.usefixtures("prefect_server")


def fanout(args: list[str], env: dict[str, str], stdin: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "prefect_fanout.cli", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_help_lists_the_commands():
    done = subprocess.run(
        [sys.executable, "-m", "prefect_fanout.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert "call" in done.stdout


def test_call_prints_json_and_a_second_process_is_served_from_cache(fake_openai, prefect_server):
    prompt = f"{uuid.uuid4().hex} what is a flow?"
    env = prefect_server.env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-cli")
    first = fanout(["call", prompt, "--model", "gpt-4o-mini", "--json"], env)
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["output"] == f"echo: {prompt}" or prompt in result["output"]
    assert result["cached"] is False and result["attempts"] == 1
    assert result["prompt_tokens"] > 0 and result["cost_usd"] is None  # not OpenAI's URL

    second = fanout(["call", prompt, "--model", "gpt-4o-mini", "--json"], env)
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["cached"] is True and again["run_cost_usd"] == 0
    assert again["output"] == result["output"]
    assert fake_openai.count(prompt) == 1

    plain = fanout(["call", prompt, "--model", "gpt-4o-mini"], env)
    assert plain.stdout.strip() == result["output"]

    refreshed = fanout(["call", prompt, "--model", "gpt-4o-mini", "--refresh", "--json"], env)
    assert json.loads(refreshed.stdout)["cached"] is False
    assert fake_openai.count(prompt) == 2


def test_failed_call_exits_1_with_the_reason(fake_openai, prefect_server):
    from tests.fakeopenai import Error

    prompt = f"{uuid.uuid4().hex} rejected"
    fake_openai.script(prompt, Error(401, message="invalid key given"))
    env = prefect_server.env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-cli")
    done = fanout(["call", prompt, "--model", "gpt-4o-mini"], env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "HTTP 401" in done.stderr and "invalid key given" in done.stderr
    assert fake_openai.count(prompt) == 1


def test_missing_configuration_exits_2_and_names_the_fix(prefect_server):
    env = prefect_server.env()
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "FANOUT_MODEL"):
        env.pop(name, None)
    done = fanout(["call", "hello"], env)
    assert done.returncode == 2
    assert "OPENAI_API_KEY" in done.stderr and "--endpoint" in done.stderr
    assert done.stdout == ""


def test_bad_usage_exits_2():
    done = subprocess.run(
        [sys.executable, "-m", "prefect_fanout.cli", "call"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "prompt" in done.stderr


def test_offline_test_model_with_stdin_prompt(prefect_server):
    env = prefect_server.env(FANOUT_MODEL="test")
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    done = fanout(["call", "-", "--system", "Be brief.", "--json"], env, stdin="offline question")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model"] == "test" and "offline question" in result["output"]


def test_no_prefect_api_is_one_line_and_exit_1(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FANOUT_"))}
    env.update(PREFECT_API_URL="http://127.0.0.1:9/api", PREFECT_HOME=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "prefect_fanout.cli", "call", "hello", "--model", "test"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fanout call: failed:"), done.stderr
