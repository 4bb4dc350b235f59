"""A map whose chunks run as flow runs of the deployed ``fanout-partition`` flow on a work pool.

The deployment comes from ``deployments/prefect.yaml`` (entry ``partition``) on a
process work pool; two ``prefect worker start`` processes on this machine pick the
chunks up. The workers and the test share the session's Prefect server, its result
storage and the fake OpenAI server (``OPENAI_*`` in every environment).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from prefect_fanout import map_corpus
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.options import RunOptions
from tests.conftest import stop_process_groups
from tests.fakeopenai import FakeOpenAI, Reply
from tests.map_helpers import read_jsonl, tag, write_corpus
from tests.ui_helpers import poll

REPO = Path(__file__).resolve().parents[1]
POOL = "fanout-pool"  # the pool deployments/prefect.yaml names
DEPLOYMENT = "fanout-partition/partition"

pytestmark = pytest.mark.server


def _prefect(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=env,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def pool_workers(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The partition deployment on a process pool and two workers polling it."""
    env = prefect_server.env(
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="sk-test",
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    env.pop("FANOUT_MODEL", None)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    created = _prefect(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _prefect(
        env, "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
        "--name", "partition",
    )  # fmt: skip
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    workers = []
    for n in range(2):
        log = (tmp_path / f"worker{n}.log").open("wb")
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "worker",
                    "start",
                    "--pool",
                    POOL,
                    "--type",
                    "process",
                    "--name",
                    f"partition-worker-{n}-{tag()}",
                ],  # fmt: skip
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        yield workers
    finally:
        # `prefect worker start` (3.8.8) forwards SIGTERM to its worker as SIGINT and did not
        # exit within a minute: waiting its 10 s grace per worker cost every test 20 s
        stop_process_groups(workers, grace=3)


def _task_runs_named(api_url: str, text: str) -> list[dict[str, Any]]:
    body = {"task_runs": {"name": {"like_": text}}, "limit": 200}
    response = httpx.post(f"{api_url}/task_runs/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def _child_runs(api_url: str, parent: str | None, state: str | None = None) -> list[dict]:
    """Flow runs started by a map (``parent``), or every flow run in ``state``."""
    if parent is not None:
        body: dict[str, Any] = {"flow_runs": {"parent_flow_run_id": {"any_": [parent]}}}
    else:
        body = {"flow_runs": {"state": {"type": {"any_": [state]}}}}
    body["limit"] = 200
    response = httpx.post(f"{api_url}/flow_runs/filter", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_the_cache_off_or_an_endpoint_object_is_refused_up_front(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from prefect_fanout.llm.endpoints import LLMEndpoint

    source = write_corpus(tmp_path / "in.jsonl", [{"id": "a", "text": "a"}])
    settings: dict[str, Any] = {"agent": "default", "partition": "count:1"}
    with pytest.raises(ConfigurationError, match="needs the cache"):
        map_corpus(source, output_dir=tmp_path / "o", options=RunOptions(
            partition_deployment=DEPLOYMENT, cache="off", model="test"), **settings)  # fmt: skip
    endpoint = LLMEndpoint(base_url="http://127.0.0.1:9/v1", api_key=SecretStr("sk-x"))
    with pytest.raises(ConfigurationError, match="block's name"):
        map_corpus(source, output_dir=tmp_path / "o", options=RunOptions(
            partition_deployment=DEPLOYMENT, endpoint=endpoint), **settings)  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(900)
def test_chunks_run_as_flow_runs_on_two_pool_workers_like_threads(
    prefect_server: Any, fake_openai: FakeOpenAI, pool_workers: Any, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n:03d}", "text": f"{run} item {n}"} for n in range(24)]
    twin = f"{run} twin"
    records[0]["text"] = records[12]["text"] = twin
    answer = Reply("twin answer", latency=1.0)
    fake_openai.script(twin, answer, answer, answer)
    source = write_corpus(tmp_path / "items.jsonl", records)
    settings: dict[str, Any] = {"agent": "default", "partition": "count:2"}
    options = RunOptions(max_workers=4, chunk_size=6, partition_deployment=DEPLOYMENT)
    pooled = map_corpus(source, output_dir=tmp_path / "pool", options=options, **settings)
    assert (pooled.total, pooled.completed, pooled.failed) == (24, 24, 0), pooled
    assert fake_openai.count(run) == 23 and fake_openai.count(twin) == 1  # the twin once

    children = _child_runs(prefect_server.api_url, pooled.flow_run_id)
    assert sorted(r["name"] for r in children) == [
        "partition 0000 (1/2)", "partition 0000 (2/2)",
        "partition 0001 (1/2)", "partition 0001 (2/2)",
    ]  # fmt: skip
    assert {r["state_type"] for r in children} == {"COMPLETED"}
    assert {r["work_pool_name"] for r in children} == {POOL}
    calls = poll(
        lambda: _task_runs_named(prefect_server.api_url, f"default:{run}-"),
        lambda runs: len({r["name"] for r in runs if r["state_type"] == "COMPLETED"}) >= 23,
        60.0,
        "23 agent-call task runs recorded",
    )
    # Every call asked is a task run of a child run; the second twin is one too, unless
    # its chunk started after the first had stored the answer (a cache hit: no task run).
    names = {r["name"] for r in calls}
    twins = {f"default:{records[n]['id']}" for n in (0, 12)}
    others = {f"default:{r['id']}" for r in records} - twins
    assert others <= names and names & twins and len(calls) == len(names)
    assert {r["flow_run_id"] for r in calls} <= {r["id"] for r in children}

    # A rerun has every answer stored: no flow run is started, nothing is asked.
    again = map_corpus(source, output_dir=tmp_path / "pool", options=options, **settings)
    assert again.completed == 24 and again.cached == 24 and fake_openai.count(run) == 23
    assert _child_runs(prefect_server.api_url, again.flow_run_id) == []

    local = map_corpus(
        source,
        output_dir=tmp_path / "thread",
        options=RunOptions(max_workers=4, cache="refresh"),
        **settings,
    )
    assert local.completed == 24
    for name in ("final.jsonl", "partitions/partition-0000.jsonl"):
        assert read_jsonl(tmp_path / "pool" / name) == read_jsonl(tmp_path / "thread" / name)


@pytest.mark.timeout(900)
def test_a_cancelled_child_run_is_rerun_asking_only_its_missing_calls(
    prefect_server: Any, fake_openai: FakeOpenAI, pool_workers: Any, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.states import Cancelling

    run = tag()
    records = [{"id": f"{run}-{n:03d}", "text": f"{run} item {n}"} for n in range(24)]
    source = write_corpus(tmp_path / "items.jsonl", records)
    fake_openai.default_latency = 2.0
    settings: dict[str, Any] = {"agent": "default", "partition": "count:2"}
    # One child run per partition, 2 calls at once: 6 rounds of 2 s each.
    options = RunOptions(max_workers=2, chunk_size=12, partition_deployment=DEPLOYMENT)
    outcome: list[Any] = []

    def map_in_background() -> None:
        outcome.append(map_corpus(source, output_dir=tmp_path / "out", options=options, **settings))

    mapping = threading.Thread(target=map_in_background, daemon=True)
    mapping.start()
    # 6 requests: each child has stored its first 2 answers and asks 2 more.
    poll(lambda: fake_openai.count(run), lambda n: n >= 6, 300.0, "6 calls asked")
    running = poll(
        lambda: [
            r
            for r in _child_runs(prefect_server.api_url, None, state="RUNNING")
            # the deployment's runs: a killed map elsewhere may leave its own partitions Running
            if r["name"].startswith("partition ") and r.get("deployment_id")
        ],  # fmt: skip
        bool,
        60.0,
        "a running child flow run",
    )
    victim = running[0]
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(victim["id"], Cancelling(), force=True)
    mapping.join(timeout=600)
    (first,) = outcome
    assert first.failed > 0 and first.completed + first.failed == 24
    completed = {r["id"] for r in read_jsonl(tmp_path / "out" / "final.jsonl")
                 if r["status"] == "completed"}  # fmt: skip
    before = fake_openai.count(run)

    second = map_corpus(source, output_dir=tmp_path / "out", options=options, **settings)
    assert (second.completed, second.failed) == (24, 0)
    asked_again = [r.prompt for r in fake_openai.requests(run)[before:]]
    text_of = {r["id"]: r["text"] for r in records}
    for item_id in completed:  # nothing answered in the first run is asked again
        assert text_of[item_id] not in asked_again, item_id
    # The map counts the cancelled child's stored answers as completed; only the calls
    # with no stored answer failed, and the rerun asks exactly those.
    assert first.completed > 12 and len(asked_again) == first.failed
    children = _child_runs(prefect_server.api_url, second.flow_run_id)
    assert len(children) == 1  # only the cancelled chunk is sent again
