"""The realmodel tier: `fanout call`, a dispatch with a dependency and a structured map against
a real small model (Gemma 3 270M) behind two real servers, llama.cpp's ``llama-server`` and
llama-cpp-python's server, as a new user would run them: no ``--model``, no style settings.

The model, the servers and their build live in a cache outside the repository
(``scripts/local-model.sh``, run by ``scripts/test.sh``). The assertions are on what a
270M model can do: schema-valid instances (the servers constrain the output to the
schema), upstream text reaching the dependant, finish reasons, usage and the model the
server reported, never on the quality of the prose.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests import realmodel
from tests.conftest import free_port, stop_process_group

pytestmark = [pytest.mark.realmodel, pytest.mark.server]

ROOT = Path(__file__).resolve().parents[1]

CITY_SCHEMA: dict[str, Any] = {
    "title": "Place",
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}
CITIES = [
    "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Warsaw", "Dublin",
    "Oslo", "Stockholm", "Helsinki", "Athens", "Budapest", "Brussels", "Amsterdam", "Copenhagen",
    "Bern", "Tokyo", "Ottawa",
]  # fmt: skip


@pytest.fixture(scope="session", params=realmodel.SERVERS)
def local_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[realmodel.LocalServer]:
    kind = request.param
    problem = realmodel.missing(kind)
    if problem:
        pytest.skip(problem)
    log = tmp_path_factory.mktemp(f"server-{kind}") / "server.log"
    server = realmodel.start(kind, free_port(), log)
    try:
        yield server
    finally:
        stop_process_group(server.process)


def fanout(
    prefect_server: Any, server: realmodel.LocalServer, *args: str
) -> subprocess.CompletedProcess[str]:
    fail_if_dead(server)
    env = prefect_server.env(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="not-needed")
    env.pop("FANOUT_MODEL", None)
    command = [sys.executable, "-m", "prefect_fanout.cli", *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=280, cwd=ROOT)
    fail_if_dead(server)
    return done


def fail_if_dead(server: realmodel.LocalServer) -> None:
    """Fail at once, with the server's exit and log, when it has died (not N retries later)."""
    death = server.death()
    if death:
        pytest.fail(death, pytrace=False)


def test_call_uses_the_served_model_and_records_what_answered(prefect_server, local_server):
    done = fanout(
        prefect_server,
        local_server,
        "call",
        "Write one short sentence about the sea.",
        "--max-tokens",
        "48",
        "--temperature",
        "0",
        "--no-cache",
        "--json",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["model"] == local_server.model  # as the server reports it
    assert result["finish_reason"] in ("stop", "length")
    assert result["cost_usd"] is None  # a local server is never priced from OpenAI's table
    assert result["prompt_tokens"] > 0 and 0 < result["completion_tokens"] <= 48
    assert result["raw_text"].strip()
    if result["finish_reason"] == "length":
        assert "cut at max_tokens=48" in done.stderr


def test_dispatch_feeds_the_upstream_answer_to_the_dependant(
    prefect_server, local_server, tmp_path
):
    plan = {
        "agents": {
            "brief": {
                "system_prompt": "Answer in a few words.",
                "max_tokens": 24,
                "temperature": 0,
            }
        },
        "tasks": [
            {"task_id": "color", "agent": "brief", "description": "Name one colour."},
            {
                "task_id": "echo",
                "agent": "brief",
                "description": "Repeat the upstream answer.",
                "dependencies": ["color"],
            },
        ],
        "config": {"trace_dir": str(tmp_path / "traces"), "max_workers": 2},
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    done = fanout(prefect_server, local_server, "dispatch", str(path), "--no-cache")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    outcomes = {t["task_id"]: t for t in result["tasks"]}
    assert all(t["status"] == "completed" for t in outcomes.values())
    for outcome in outcomes.values():
        assert outcome["model"] == local_server.model
        assert outcome["finish_reason"] in ("stop", "length")
        assert outcome["usage"]["completion_tokens"] > 0 and outcome["usage"]["cost_usd"] is None
    trace = json.loads((tmp_path / "traces" / "echo.json").read_text())
    upstream = outcomes["color"]["output"]
    assert upstream.strip()
    assert "## Upstream results" in trace["prompt"] and upstream in trace["prompt"]
    assert trace["finish_reason"] == outcomes["echo"]["finish_reason"]


def test_a_structured_map_of_20_items_is_valid_with_no_format_retries(
    prefect_server, local_server, tmp_path
):
    corpus = tmp_path / "cities.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": f"c{n:02d}", "city": c}) + "\n" for n, c in enumerate(CITIES))
    )
    agents = tmp_path / "agents.json"
    agents.write_text(
        json.dumps(
            {
                "place": {
                    "system_prompt": "You answer with JSON only.",
                    "output_schema": CITY_SCHEMA,
                    "max_tokens": 96,
                    "temperature": 0,
                    "extra_body": {"repeat_penalty": 1.1, "seed": 1},
                    "max_validation_retries": 1,
                }
            }
        )
    )
    out = tmp_path / "out"
    done = fanout(
        prefect_server,
        local_server,
        "map",
        str(corpus),
        "--agent",
        "place",
        "--agents",
        str(agents),
        "--prompt",
        'Give the city and its country as JSON, e.g. {{"city": "Lyon", "country": "France"}}. '
        "City: {city}",
        "--partition",
        "count:2",
        "--max-workers",
        "2",
        "--output",
        str(out),
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]
    summary = json.loads(done.stdout)
    rows = [json.loads(line) for line in (out / "final.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    valid = 0
    for row in rows:
        if row["status"] == "completed":
            jsonschema.validate(row["output"], CITY_SCHEMA)
            valid += 1
        assert row["model"] == local_server.model
        assert row["finish_reason"] in ("stop", "length")
    assert valid >= 19, f"{valid}/20 valid:\n{done.stderr[-3000:]}"
    assert summary["cost_usd"] is None
    assert summary["usage"]["map"]["completion_tokens"] > 0
    # No request was retried because of its response format: no retry at all was logged,
    # and `auto` moved on from a refused style at most once per call.
    assert "retrying in" not in done.stderr
    fallbacks = done.stderr.count("refused structured-output style")
    if local_server.kind == "llama-server":
        assert fallbacks == 0  # json_schema works as it is
    else:
        assert fallbacks == 1  # the first call found the style; the others used it
    print(
        f"\n{local_server.kind}: {valid}/20 valid, {fallbacks} style fallback(s), "
        f"model {local_server.model!r}, started in {local_server.started_s:.1f}s"
    )


SOURCE_SCHEMA: dict[str, Any] = {
    "title": "SourceFile",
    "type": "object",
    "properties": {
        "purpose": {"type": "string", "maxLength": 160},
        "names": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 4},
    },
    "required": ["purpose", "names"],
    "additionalProperties": False,
}
SOURCE_FILES = [  # the project's own source: small files and one over a 2,048-token context
    "prefect_fanout/llm/styles.py",
    "prefect_fanout/llm/result.py",
    "prefect_fanout/llm/answer.py",
    "prefect_fanout/llm/retry.py",
]


def test_a_map_of_the_projects_own_source_chunks_what_is_over_the_context(
    prefect_server, local_server, tmp_path
):
    corpus = tmp_path / "source"
    for name in SOURCE_FILES:
        target = corpus / name.replace("/", "__")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / name).read_text())
    profile: dict[str, Any] = {
        "system_prompt": "You describe Python source files. Answer with JSON only.",
        "prompt_template": "Describe this Python file: its purpose and its main names.\n\n{input}",
        "output_schema": SOURCE_SCHEMA,
        "max_tokens": 160,
        "temperature": 0,
        "extra_body": {"repeat_penalty": 1.2, "seed": 1},
        "max_validation_retries": 1,
    }
    if local_server.kind == "llama-cpp-python":  # it does not say its context: the user does
        profile["context_tokens"] = 2048  # below its n_ctx of 4096, as llama-server's slots
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps({"describer": profile}))
    out = tmp_path / "out"
    started = time.perf_counter()
    done = fanout(
        prefect_server,
        local_server,
        "map",
        str(corpus),
        "--agent",
        "describer",
        "--agents",
        str(agents),
        "--partition",
        "count:1",
        "--max-workers",
        "2",
        "--long-inputs",
        "chunk",
        "--output",
        str(out),
    )
    elapsed = time.perf_counter() - started
    assert done.returncode in (0, 1), done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "final.jsonl").read_text().splitlines()]
    assert len(rows) == len(SOURCE_FILES)
    assert "exceeds the available context" not in done.stderr  # nothing was sent too long
    chunked = [row for row in rows if row.get("chunks")]
    assert chunked, f"no file was chunked:\n{done.stderr[-3000:]}"
    valid = 0
    for row in rows:
        if row["status"] == "completed":
            jsonschema.validate(row["output"], SOURCE_SCHEMA)
            valid += 1
    print(
        f"\n{local_server.kind}: source map with long_inputs chunk: {valid}/{len(rows)} valid, "
        f"{len(chunked)} file(s) chunked into {[row['chunks'] for row in chunked]} parts, "
        f"{elapsed:.1f} s for the command"
    )
    assert valid >= len(rows) - 1, f"{valid}/{len(rows)} valid:\n{done.stderr[-3000:]}"
