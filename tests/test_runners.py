"""Task runners: map and dispatch on a real Dask ``LocalCluster`` and a local Ray; bad input.

The end-to-end tests run against the session's real Prefect server and the fake
OpenAI server; the Dask cluster is started for each run by the runner itself
(worker processes on 127.0.0.1). Every test uses its own tag in prompts, because
the cache and both servers live for the whole session.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from pydantic import ValidationError

from prefect_fanout import dispatch_plan, map_corpus
from prefect_fanout.call.locks import FlockLockManager
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.options import RunOptions, merge_options
from prefect_fanout.plan.model import Plan
from prefect_fanout.runners import check_task_runner
from prefect_fanout.runners.choice import dask_cluster_kwargs
from tests.fakeopenai import FakeOpenAI, Reply
from tests.map_helpers import read_jsonl, tag, write_corpus

ROOT = Path(__file__).resolve().parent.parent

RUNNERS = [
    "dask",
    pytest.param(
        "ray",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("prefect_ray") is None,
            reason="the ray extra is not installed (pip install 'prefect-fanout[ray]')",
        ),
    ),
]

pytest.importorskip("prefect_dask", reason="the dask extra is not installed")


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def plan_of(*tasks: dict[str, Any], **top: Any) -> Plan:
    return Plan.model_validate({"tasks": list(tasks), **top})


def task(task_id: str, description: str, *deps: str, **fields: Any) -> dict[str, Any]:
    return {"task_id": task_id, "description": description, "dependencies": list(deps), **fields}


# ------------------------------------------------------------------------ pure parts


def test_unknown_runner_names_the_option_and_the_choices() -> None:
    with pytest.raises(ConfigurationError, match=r"task_runner: unknown task runner 'spark'.*dask"):
        check_task_runner("spark")
    with pytest.raises(ConfigurationError, match=r"--task-runner: unknown"):
        check_task_runner("spark", cli=True)


def test_an_address_for_another_runner_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"--dask-address is for the dask runner"):
        check_task_runner("thread", dask_address="tcp://127.0.0.1:8786", cli=True)
    with pytest.raises(ConfigurationError, match=r"ray_address is for the ray runner"):
        check_task_runner("dask", ray_address="127.0.0.1:10001")


def test_an_unreachable_dask_address_is_refused_with_the_fix() -> None:
    port = closed_port()
    with pytest.raises(ConfigurationError) as caught:
        check_task_runner("dask", dask_address=f"tcp://127.0.0.1:{port}", cli=True)
    message = str(caught.value)
    assert f"--dask-address tcp://127.0.0.1:{port}: nothing answers" in message
    assert "dask scheduler" in message and "drop --dask-address" in message


def test_the_local_cluster_runs_max_workers_tasks_in_worker_processes_on_loopback() -> None:
    kwargs = dask_cluster_kwargs(4)
    assert kwargs["processes"] is True and kwargs["host"] == "127.0.0.1"
    assert kwargs["n_workers"] * kwargs["threads_per_worker"] >= 4
    assert kwargs["n_workers"] <= 4 and dask_cluster_kwargs(1)["n_workers"] == 1


@pytest.mark.timeout(300)
@pytest.mark.server
def test_the_workers_of_a_local_cluster_run_no_statistical_profiler() -> None:
    """Dask's profiler calls sys._current_frames() every 10 ms, which can deadlock a
    Python 3.11 worker holding the GIL (CPython gh-106883): seen as a frozen worker."""
    pytest.importorskip("prefect_dask", reason="the dask extra is not installed")
    from distributed import Client, LocalCluster

    from prefect_fanout.runners.dask_runner import profiling_workers

    kwargs = {**dask_cluster_kwargs(2, chunked=True), "n_workers": 2}
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        profiling = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
        assert profiling_workers(client) == []
    assert list(profiling.values()) == [False, False]
    # A cluster started with Dask's defaults profiles: on Python 3.11 fanout warns about it.
    defaults = {key: kwargs[key] for key in ("host", "processes", "dashboard_address")}
    with LocalCluster(n_workers=1, **defaults) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)
        risky = profiling_workers(client)
    assert len(risky) == (1 if sys.version_info < (3, 12) else 0)


def test_a_lock_manager_travels_to_a_worker_as_its_directory(tmp_path: Path) -> None:
    manager = FlockLockManager(tmp_path / "locks")
    assert manager.acquire_lock("k", "holder")
    copy = pickle.loads(cloudpickle.dumps(manager))
    assert copy.directory == manager.directory
    assert copy.is_locked("k")  # the same flock files, so the same locks
    assert not copy.is_lock_holder("k", "holder")  # held locks never travel
    manager.release_lock("k", "holder")
    assert not copy.is_locked("k")


def test_a_transport_with_its_endpoint_pickles_for_workers(endpoint: LLMEndpoint) -> None:
    from prefect_fanout.agents.resolver import Resolver

    transport = Resolver(RunOptions(endpoint=endpoint)).transport("gpt-4o-mini")
    copy = pickle.loads(cloudpickle.dumps(transport))
    assert copy == transport and copy.base_url == transport.base_url


# ------------------------------------------------------------------------ bad input: exit 2


def cli(prefect_server: Any, fake: FakeOpenAI, *args: str) -> subprocess.CompletedProcess[str]:
    env = prefect_server.env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test")
    env.pop("FANOUT_MODEL", None)
    command = [sys.executable, "-m", "prefect_fanout.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.server
def test_cli_bad_runner_input_exits_2_before_any_call(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(tmp_path / "in.jsonl", [{"id": f"{run}-1", "text": run}])
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tasks": [{"task_id": "a", "description": run}]}))
    port = closed_port()
    map_args = ["map", str(source), "--agent", "default", "--partition", "count:1"]
    map_args += ["--output", str(tmp_path / "out")]

    unknown = cli(prefect_server, fake_openai, *map_args, "--task-runner", "spark")
    assert unknown.returncode == 2
    assert "--task-runner: invalid choice: 'spark'" in unknown.stderr

    for command in (map_args, ["dispatch", str(plan)]):
        done = cli(
            prefect_server,
            fake_openai,
            *command,
            "--task-runner",
            "dask",
            "--dask-address",
            f"tcp://127.0.0.1:{port}",
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"--dask-address tcp://127.0.0.1:{port}: nothing answers" in done.stderr
        assert "drop --dask-address" in done.stderr and done.stdout == ""

        wrong = cli(prefect_server, fake_openai, *command, "--ray-address", "127.0.0.1:10001")
        assert wrong.returncode == 2 and "--ray-address is for the ray runner" in wrong.stderr
    assert fake_openai.count(run) == 0
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- end to end on Dask


@pytest.mark.server
@pytest.mark.timeout(600)
@pytest.mark.parametrize("runner", RUNNERS)
def test_map_on_worker_processes_matches_the_thread_runner(
    runner: str,
    prefect_server: Any,
    fake_openai: FakeOpenAI,
    endpoint: LLMEndpoint,
    tmp_path: Path,
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n:02d}", "text": f"{run} item {n}"} for n in range(12)]
    source = write_corpus(tmp_path / "items.jsonl", records)
    base = RunOptions(endpoint=endpoint, max_workers=4)
    options: dict[str, Any] = {"agent": "default", "partition": "count:3"}

    on_dask = map_corpus(
        source,
        output_dir=tmp_path / "dask",
        options=base.model_copy(update={"task_runner": runner}),
        **options,
    )
    assert (on_dask.total, on_dask.completed, on_dask.failed) == (12, 12, 0)
    assert on_dask.cached == 0 and fake_openai.count(run) == 12
    assert len(list((tmp_path / "dask" / "partitions").glob("partition-*.jsonl"))) == 3

    # The workers stored every answer where the flow's process finds it: all cached.
    cached = map_corpus(source, output_dir=tmp_path / "cached", options=base, **options)
    assert cached.cached == 12 and fake_openai.count(run) == 12

    on_threads = map_corpus(
        source,
        output_dir=tmp_path / "thread",
        options=merge_options({"cache": "refresh"}, base),
        **options,
    )
    assert on_threads.completed == 12 and fake_openai.count(run) == 24
    parts = sorted(p.name for p in (tmp_path / "dask" / "partitions").iterdir())
    for name in ("final.jsonl", *(f"partitions/{part}" for part in parts)):
        assert read_jsonl(tmp_path / "dask" / name) == read_jsonl(tmp_path / "thread" / name)


@pytest.mark.server
@pytest.mark.timeout(600)
@pytest.mark.parametrize("runner", RUNNERS)
def test_dispatch_on_worker_processes_matches_the_thread_runner(
    runner: str, prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uuid.uuid4().hex[:12]
    same = Reply(f"same-out-{key}", latency=1.0)
    fake_openai.script(f"SAME-{key}", same, same, same)  # this run's, then the reruns
    plan = plan_of(
        task("a", f"A-{key}"),
        task("b", f"B-{key}", "a"),
        task("c", f"C-{key}", "a"),
        task("d", f"D-{key}", "b", "c"),
        task("same1", f"SAME-{key}"),
        task("same2", f"SAME-{key}"),
    )
    on_dask = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint, task_runner=runner, max_workers=4),
    )
    assert on_dask.status == "completed", on_dask.model_dump_json(indent=2)
    assert on_dask.summary.completed == 6
    # Two identical calls at once: the call lock (flock files beside result storage,
    # taken in the workers) lets one ask; the other gets its stored answer.
    assert fake_openai.count(f"SAME-{key}") == 1
    assert {on_dask.task("same1").cached, on_dask.task("same2").cached} == {False, True}
    (d,) = fake_openai.requests(f"D-{key}")
    assert "### b\n" in d.prompt and "### c\n" in d.prompt

    on_threads = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint, cache="refresh"),
    )
    assert on_threads.status == "completed"
    assert [t.output for t in on_threads.tasks] == [t.output for t in on_dask.tasks]


@pytest.mark.server
@pytest.mark.timeout(600)
def test_cli_map_with_task_runner_dask(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(6)]
    source = write_corpus(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    done = cli(
        prefect_server,
        fake_openai,
        "map",
        str(source),
        "--agent",
        "default",
        "--partition",
        "count:2",
        "--output",
        str(out),
        "--max-workers",
        "2",
        "--task-runner",
        "dask",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert (summary["total"], summary["completed"]) == (6, 6)
    assert [r["id"] for r in read_jsonl(out / "final.jsonl")] == [r["id"] for r in records]
    assert fake_openai.count(run) == 6


@pytest.mark.server
@pytest.mark.timeout(600)
def test_the_shipped_flow_honours_its_task_runner_parameter(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    """As a run from the UI or a deployment does: the flow's default runner, a parameter."""
    from prefect_fanout.dispatch.run import result_of
    from prefect_fanout.flows import dispatch_flow

    key = uuid.uuid4().hex[:12]
    plan = plan_of(task("a", f"A-{key}"), task("b", f"B-{key}", "a"))
    state = dispatch_flow(
        plan=plan, options=RunOptions(endpoint=endpoint, task_runner="dask"), return_state=True
    )
    result = result_of(state)
    assert result.status == "completed" and fake_openai.count(key) == 2
    (b,) = fake_openai.requests(f"B-{key}")
    assert f"### a\n{result.task('a').output}" in b.prompt

    # A wrong runner is refused when the options are made (in Python) or when the flow
    # run's parameters are checked (a deployment, the UI), before any call.
    with pytest.raises(ValidationError, match="task_runner"):
        RunOptions(endpoint=endpoint, task_runner="spark")
    bad = dispatch_flow(plan=plan, options={"task_runner": "spark"}, return_state=True)
    assert bad.is_failed() and fake_openai.count(key) == 2
    with pytest.raises(Exception, match="task_runner"):
        bad.result()


def test_an_unreachable_ray_address_is_refused_with_the_fix() -> None:
    port = closed_port()
    with pytest.raises(ConfigurationError) as caught:
        check_task_runner("ray", ray_address=f"ray://127.0.0.1:{port}", cli=True)
    assert f"--ray-address ray://127.0.0.1:{port}: nothing answers" in str(caught.value)
    assert "ray start --head" in str(caught.value)


@pytest.mark.server
@pytest.mark.timeout(600)
def test_a_tag_concurrency_limit_bounds_calls_on_dask_workers(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    agent = f"limited-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        [sys.executable, "-m", "prefect", "concurrency-limit", "create", f"agent:{agent}", "1"],
        env=prefect_server.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    key = uuid.uuid4().hex[:12]
    for n in range(3):
        fake_openai.script(f"L{n}-{key}", Reply("ok", latency=0.5))
    plan = plan_of(
        *(task(f"t{n}", f"L{n}-{key}", agent=agent) for n in range(3)), agents={agent: {}}
    )
    result = dispatch_plan(
        plan,
        options=RunOptions(endpoint=endpoint, task_runner="dask", max_workers=3),
    )
    assert result.status == "completed" and fake_openai.count(key) == 3
    assert fake_openai.max_in_flight == 1  # the limit held across worker processes
