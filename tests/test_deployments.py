"""deployments/prefect.yaml and deployments/serve.py against the session's Prefect server.

The flow runs use the offline ``test`` model (FANOUT_MODEL=test in the worker's and the
serve process's environment), so no endpoint or block is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound
from prefect.utilities.asyncutils import run_coro_as_sync

from tests.conftest import stop_process_group

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
SERVE = REPO / "deployments" / "serve.py"
POOL = "fanout-pool"
CLI_TIMEOUT = 180
RUN_DEADLINE = 150.0

pytestmark = pytest.mark.server


def _entries() -> list[dict[str, Any]]:
    return yaml.safe_load(PREFECT_FILE.read_text())["deployments"]


def _flow_name(entry: dict[str, Any]) -> str:
    """The flow's name, read from the entrypoint without running it."""
    from prefect.flows import load_flow_from_entrypoint

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return load_flow_from_entrypoint(entry["entrypoint"]).name
    finally:
        os.chdir(cwd)


def _cli(prefect_server, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        env=prefect_server.env(**env),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def _dependency_hint() -> str:
    """Why deploying or scheduling may fail in this environment (known incompatibilities)."""
    hints = []
    # FastAPI >= 0.151 validates explicit JSON nulls instead of using the default, and
    # Prefect 3.8's client sends {"limit": null} from `prefect deploy` (422 from the server).
    if tuple(int(p) for p in version("fastapi").split(".")[:2]) >= (0, 151):
        hints.append(f"fastapi {version('fastapi')} is installed; Prefect 3.8 needs <0.151")
    # SQLAlchemy 2.1 breaks the server's scheduler (no scheduled runs are ever created).
    if tuple(int(p) for p in version("sqlalchemy").split(".")[:2]) >= (2, 1):
        hints.append(f"sqlalchemy {version('sqlalchemy')} is installed; Prefect 3.8 needs <2.1")
    return f"\n(known incompatibilities: {'; '.join(hints)})" if hints else ""


async def _read_deployment(name: str) -> DeploymentResponse:
    async with get_client() as client:
        return await client.read_deployment_by_name(name)


async def _read_flow_run(flow_run_id: Any) -> FlowRun:
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def _wait_final(flow_run_id: Any, deadline: float = RUN_DEADLINE) -> FlowRun:
    end = time.monotonic() + deadline
    while True:
        run = run_coro_as_sync(_read_flow_run(flow_run_id))
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > end:
            pytest.fail(f"flow run {flow_run_id} not final after {deadline:.0f}s: {run.state}")
        time.sleep(1.0)


@pytest.fixture(scope="module")
def deployed(prefect_server) -> dict[str, DeploymentResponse]:
    """Create the work pool and deploy every entry of prefect.yaml; deployments by entry name."""
    pool = _cli(prefect_server, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    assert pool.returncode == 0, pool.stdout + pool.stderr
    done = _cli(
        prefect_server,
        "--no-prompt",
        "deploy",
        "--all",
        "--prefect-file",
        str(PREFECT_FILE.relative_to(REPO)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + _dependency_hint()
    found = {}
    for entry in _entries():
        full_name = f"{_flow_name(entry)}/{entry['name']}"
        found[entry["name"]] = run_coro_as_sync(_read_deployment(full_name))
    return found


def test_prefect_yaml_deploys_every_flow(deployed) -> None:
    kinds: set[str] = set()
    entrypoints = set()
    for entry in _entries():
        deployment = deployed[entry["name"]]
        entrypoints.add(entry["entrypoint"].split(":")[0])
        assert deployment.work_pool_name == POOL
        assert deployment.entrypoint == entry["entrypoint"]
        assert deployment.parameters == entry.get("parameters", {})
        assert deployment.enforce_parameter_schema
        # The pull step points flow runs at the repository the deploy ran in.
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
        assert len(deployment.schedules) == len(entry.get("schedules") or [])
        for schedule in deployment.schedules:
            assert schedule.active
            kinds.add("cron" if getattr(schedule.schedule, "cron", None) else "interval")
    assert {"cron", "interval"} <= kinds
    # Every flow file in flows/ has at least one deployment.
    flow_files = {
        f"flows/{p.name}" for p in (REPO / "flows").glob("*.py") if "@flow" in p.read_text()
    }
    assert flow_files <= entrypoints, f"flows without a deployment: {flow_files - entrypoints}"


def test_worker_runs_a_triggered_run_to_completion(prefect_server, deployed) -> None:
    from prefect.deployments import run_deployment

    deployment = deployed["plan"]
    flow_run = run_deployment(deployment.id, timeout=0, tags=["test-deployments"])
    worker = _cli(
        prefect_server,
        "worker",
        "start",
        "--pool",
        POOL,
        "--run-once",
        "--type",
        "process",
        FANOUT_MODEL="test",
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    final = _wait_final(flow_run.id, deadline=60)
    assert final.state is not None and final.state.is_completed(), (
        f"{final.state}\n{worker.stdout[-3000:]}{worker.stderr[-3000:]}"
    )
    assert final.deployment_id == deployment.id
    assert final.work_pool_name == POOL


def test_server_rejects_a_wrong_typed_parameter(deployed) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    deployment = deployed["plan"]

    async def create(parameters: dict[str, Any]) -> FlowRun:
        async with get_client() as client:
            return await client.create_flow_run_from_deployment(
                deployment.id, parameters=parameters
            )

    with pytest.raises(PrefectHTTPStatusError) as caught:
        run_coro_as_sync(create({"plan": "p.json", "options": {"max_workers": "many"}}))
    message = str(caught.value)
    assert caught.value.response.status_code == 409
    assert "max_workers" in message and "many" in message, message

    async def runs_of_deployment() -> list[FlowRun]:
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )

    assert not [
        r
        for r in run_coro_as_sync(runs_of_deployment())
        if (r.parameters.get("options") or {}).get("max_workers")
    ]


def _interval_entry(flow_name: str) -> dict[str, Any]:
    for entry in _entries():
        has_interval = any("interval" in s for s in entry.get("schedules") or [])
        if has_interval and _flow_name(entry) == flow_name:
            return entry
    raise AssertionError(f"prefect.yaml has no interval schedule of {flow_name}")


def test_prefect_yaml_deploys_the_library_flows_by_entrypoint() -> None:
    names = {_flow_name(entry): entry["entrypoint"] for entry in _entries()}
    assert names["fanout-dispatch"] == "prefect_fanout/flows.py:dispatch_flow"
    assert names["fanout-map"] == "prefect_fanout/flows.py:map_flow"


@pytest.mark.parametrize("flow_name", ["fanout-dispatch", "fanout-map"])
def test_serve_runs_an_interval_schedule(prefect_server, deployed, tmp_path, flow_name) -> None:
    entry = _interval_entry(flow_name)
    full_name = f"{_flow_name(entry)}/{entry['name']}"
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(SERVE), "--name", entry["name"], "--interval-seconds", "5"],
            env=prefect_server.env(FANOUT_MODEL="test", PREFECT_RUNNER_POLL_FREQUENCY="2"),
            cwd=tmp_path,  # serve.py finds the repository itself
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        completed = _first_completed_scheduled_run(full_name, process, log_path)
    finally:
        stop_process_group(process, grace=20)
    served = run_coro_as_sync(_read_deployment(full_name))
    # Serve pauses its deployments when it shuts down cleanly; a slow shutdown can end in
    # SIGKILL first, so pause it here too: no runs pile up in the session's server.
    run_coro_as_sync(_pause(served.id))
    assert completed.deployment_id == served.id
    assert completed.auto_scheduled
    assert served.work_pool_name is None  # served, not a work pool's
    assert [s.schedule.interval.total_seconds() for s in served.schedules] == [5.0]


async def _pause(deployment_id: Any) -> None:
    async with get_client() as client:
        await client.pause_deployment(deployment_id)


def _first_completed_scheduled_run(
    full_name: str, process: subprocess.Popen[bytes], log_path: Path
) -> FlowRun:
    async def completed_runs() -> list[FlowRun]:
        async with get_client() as client:
            try:
                deployment = await client.read_deployment_by_name(full_name)
            except ObjectNotFound:
                return []
            if deployment.work_pool_name:  # the prefect-deployed one, not yet replaced
                return []
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
            )
        return [r for r in runs if r.auto_scheduled and r.state and r.state.is_completed()]

    end = time.monotonic() + RUN_DEADLINE
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"serve.py exited with {process.returncode}:\n{log_path.read_text()}")
        runs = run_coro_as_sync(completed_runs())
        if runs:
            return runs[0]
        time.sleep(1.0)
    tail = log_path.read_text()[-4000:]
    pytest.fail(f"no scheduled run completed in {RUN_DEADLINE:.0f}s:\n{tail}{_dependency_hint()}")
