"""Issue 22, secrets are redacted everywhere: a server that echoes the key never leaks it.

The fake server answers 401s and 500s whose body echoes the request headers
(``Authorization: Bearer <key>``), as some gateways and proxies do. The key must
then appear nowhere: not in stderr or stdout, the output and trace files, the
Prefect logs, artifacts, or flow-run and task-run state messages.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_fanout.llm.endpoints import LLMEndpoint
from tests.fakeopenai import Error, FakeOpenAI
from tests.map_helpers import tag, write_corpus
from tests.test_cli_dispatch import fanout
from tests.ui_helpers import PrefectAPI, poll

pytestmark = pytest.mark.server


def _files_text(*roots: Path) -> str:
    return "\n".join(
        p.read_text(errors="replace") for root in roots for p in root.rglob("*") if p.is_file()
    )


def _server_text(server: Any, flow_run_id: str) -> str:
    """Everything the UI shows of the flow run, once its final log line is recorded."""
    with PrefectAPI(server.api_url) as api:
        poll(
            lambda: api.logs(flow_run_id),
            lambda logs: any("Finished in state" in line["message"] for line in logs),
            60,
            "the flow run's final log line",
        )
        return api.everything(flow_run_id)


def test_an_echoed_environment_key_appears_nowhere(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    key = f"sk-proj-{uuid.uuid4().hex}"
    records = [{"id": f"{run}-{n}", "text": f"{run} item {n}"} for n in range(4)]
    fake_openai.script(f"{run} item 1", Error(401, "bad key", echo_headers=True))
    fake_openai.script(f"{run} item 2", *[Error(500, "upstream", echo_headers=True)] * 8)
    env = prefect_server.env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY=key)
    env.pop("FANOUT_MODEL", None)
    out = tmp_path / "out"
    done = fanout(
        "map", str(write_corpus(tmp_path / "in.jsonl", records)), "--agent", "default",
        "--partition", "count:2", "--output", str(out), env=env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    echoed = fake_openai.requests(f"{run} item 1")[0].headers["authorization"]
    assert key in echoed  # the server did see (and echo) it
    summary = json.loads(done.stdout)
    places = {
        "stderr": done.stderr,
        "stdout": done.stdout,
        "output files": _files_text(out),
        "Prefect (logs, artifacts, states)": _server_text(prefect_server, summary["flow_run_id"]),
    }
    for place, text in places.items():
        assert key not in text, f"the key leaked into {place}"
    assert f"{key[:3]}****{key[-4:]}" in places["output files"]  # the error kept, key masked
    assert "bad key" in places["output files"] and "upstream" in places["output files"]


def test_an_echoed_block_key_appears_nowhere_in_dispatch(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    key = f"sk-block-{uuid.uuid4().hex}"
    block = f"safety-{run}"
    LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr(key)).save(block)
    fake_openai.script(f"A-{run}", Error(401, "bad key", echo_headers=True))
    plan = {"tasks": [{"task_id": "a", "agent": "debug", "description": f"A-{run}"}]}
    env = prefect_server.env()
    for name in ("FANOUT_MODEL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    traces = tmp_path / "traces"
    done = fanout(
        "dispatch", "-", "--endpoint", block, "--trace-dir", str(traces),
        env=env, stdin=json.dumps(plan),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert key in fake_openai.requests(f"A-{run}")[0].headers["authorization"]
    result = json.loads(done.stdout)
    places = {
        "stderr": done.stderr,
        "stdout": done.stdout,
        "traces": _files_text(traces),
        "Prefect (logs, artifacts, states)": _server_text(prefect_server, result["flow_run_id"]),
    }
    for place, text in places.items():
        assert key not in text, f"the key leaked into {place}"
    assert "bad key" in places["traces"]
    assert "fanout-dispatch-failures" in places["Prefect (logs, artifacts, states)"]
