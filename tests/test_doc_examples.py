"""Docs that are run: every bash and python example of README.md and docs/ runs with the test
model (or says why not), its shown output is checked, and every `fanout` line names only flags
its command accepts. The rules are in tests/docs_examples.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_fanout.cli import command_parsers
from tests.docs_examples import (
    ROOT,
    RUNNABLE,
    command_words,
    examples,
    fanout_lines,
    option_strings,
)

EXAMPLES = examples()
TO_RUN = [e for e in EXAMPLES if e.mode == "run"]
LINKED = ("examples", "flows", "blocks", "deployments", "scripts")


def test_every_example_says_how_it_is_tested():
    unmarked = [e.id for e in EXAMPLES if e.mode is None]
    assert not unmarked, f"add a <!-- docs-test: ... --> line before: {unmarked}"
    unexplained = [e.id for e in EXAMPLES if e.mode in ("flags", "skip") and not e.reason]
    assert not unexplained, f"say why these do not run: {unexplained}"


def test_most_examples_run():
    assert len(TO_RUN) >= 10
    assert len(TO_RUN) > len(EXAMPLES) - len(TO_RUN) - 12  # the skipped stay few


@pytest.mark.parametrize("where, line", fanout_lines(), ids=lambda v: str(v)[:60])
def test_every_fanout_line_names_a_command_and_flags_it_accepts(where, line):
    parsers = command_parsers()
    words = command_words(line)[1:]  # after `fanout`
    command = "fanout"
    for word in words:
        if word == "...":
            continue
        if word.startswith("-") and word != "-":
            flag = word.split("=", 1)[0]
            allowed = option_strings(parsers[command].format_help())
            assert flag in allowed, f"{where}: `{line}`: {command} does not accept {flag}"
        elif command == "fanout":
            assert word in parsers, f"{where}: `{line}`: no command {word!r}"
            command = word
            if word == "server":
                return  # every argument after `server start` is prefect server start's
    assert command != "fanout" or any(w.startswith("--") for w in words), (where, line)


def test_the_flag_check_catches_a_flag_the_command_does_not_take():
    help_text = command_parsers()["call"].format_help()
    assert "--model" in option_strings(help_text)
    assert "--task-runner" not in option_strings(help_text)  # what README once claimed


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A directory to run examples in, with the repository's example inputs linked in."""
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


@pytest.mark.server
@pytest.mark.parametrize("example", TO_RUN, ids=lambda e: e.id)
def test_example_runs(example, prefect_server, scratch):
    env = prefect_server.env(**example.env)
    env.pop("OPENAI_API_KEY", None)  # offline: the examples run on the test model
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    if RUNNABLE[example.language] == "python":
        command = [sys.executable, "-c", example.code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", example.code]
    done = subprocess.run(
        command, cwd=scratch, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"{example.id}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    if example.expected is not None:
        assert done.stdout.strip() == example.expected.strip(), example.id
