"""The ``postgres`` tier: a map and a dispatch against a Prefect server on PostgreSQL.

The module starts its own throwaway PostgreSQL cluster with
``scripts/postgres-server.sh start`` (installing Debian's ``postgresql`` when
missing), and a real ``prefect server start`` on it through
``PREFECT_SERVER_DATABASE_CONNECTION_URL``; the runs are the CLI's, as users run it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PrefectServer, start_prefect_server, stop_process_group, wait_healthy
from tests.fakeopenai import FakeOpenAI
from tests.map_helpers import read_jsonl, tag, write_corpus

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "postgres-server.sh"

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def postgres_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A Prefect server on a fresh PostgreSQL cluster, both on 127.0.0.1."""
    pg_dir = tmp_path_factory.mktemp("pg")
    started = subprocess.run(
        ["bash", str(SCRIPT), "start", str(pg_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert started.returncode == 0, started.stderr[-3000:]
    url = started.stdout.strip().rsplit("=", 1)[1]
    assert url.startswith("postgresql+asyncpg://prefect@127.0.0.1:")
    previous = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL")
    os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url  # the server inherits it
    try:
        server = start_prefect_server(tmp_path_factory.mktemp("prefect-pg"))
    finally:
        if previous is None:
            os.environ.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
        else:
            os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = previous
    try:
        wait_healthy(server)
        yield server
    finally:
        stop_process_group(server.process)
        subprocess.run(["bash", str(SCRIPT), "stop", str(pg_dir)], timeout=120, check=False)


def cli(server: PrefectServer, fake: FakeOpenAI, *args: str) -> subprocess.CompletedProcess[str]:
    env = server.env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test")
    env.pop("FANOUT_MODEL", None)
    command = [sys.executable, "-m", "prefect_fanout.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_the_server_stores_its_runs_in_postgres(postgres_prefect: PrefectServer) -> None:
    log = postgres_prefect.log_path.read_text(errors="replace")
    assert not (postgres_prefect.home / "prefect.db").exists(), log[-2000:]


def test_map_against_a_postgres_server(
    postgres_prefect: PrefectServer, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(20)]
    source = write_corpus(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    done = cli(
        postgres_prefect,
        fake_openai,
        "map",
        str(source),
        "--agent",
        "default",
        "--partition",
        "count:4",
        "--output",
        str(out),
        "--max-workers",
        "4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["total"], summary["completed"], summary["failed"]) == (20, 20, 0)
    assert [r["id"] for r in read_jsonl(out / "final.jsonl")] == [r["id"] for r in records]
    assert fake_openai.count(run) == 20


def test_dispatch_against_a_postgres_server(
    postgres_prefect: PrefectServer, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    key = tag()
    plan = {
        "tasks": [
            {"task_id": "a", "description": f"A-{key}"},
            {"task_id": "b", "description": f"B-{key}", "dependencies": ["a"]},
            {"task_id": "c", "description": f"C-{key}", "dependencies": ["a"]},
        ]
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    done = cli(postgres_prefect, fake_openai, "dispatch", str(path))
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["status"] == "completed" and result["summary"]["completed"] == 3
    assert fake_openai.count(key) == 3
