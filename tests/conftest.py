"""Shared pytest fixtures: the fake OpenAI server and one real Prefect server per session."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakeopenai import FakeOpenAI

PREFECT_START_TIMEOUT = 180.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def silent_api_url() -> Iterator[str]:
    """A Prefect API URL whose socket accepts connections (its backlog) and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        yield f"http://127.0.0.1:{silent.getsockname()[1]}/api"


@pytest.fixture(scope="session")
def _fake_openai_session() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_openai(_fake_openai_session: FakeOpenAI) -> FakeOpenAI:
    """The session's fake OpenAI server, reset (no scripts, no records) for this test.

    The process's limiters start afresh too: a 429 pause, a guessed rate or a learned
    limit of one test must not pace the next.
    """
    from prefect_fanout.limits import forget_limiters

    forget_limiters()
    _fake_openai_session.reset()
    _fake_openai_session.default_latency = 0.0
    return _fake_openai_session


@pytest.fixture(autouse=True)
def _no_model_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test takes its model from this machine's ``FANOUT_MODEL``."""
    monkeypatch.delenv("FANOUT_MODEL", raising=False)


@pytest.fixture
def endpoint(fake_openai: FakeOpenAI) -> Any:
    """An ``LLMEndpoint`` at the session's fake OpenAI server, with a test key."""
    from pydantic import SecretStr

    from prefect_fanout.llm.endpoints import LLMEndpoint

    return LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr("sk-test"))


@dataclass
class PrefectServer:
    """A running Prefect server started for the test session.

    Attributes:
        api_url: ``http://127.0.0.1:PORT/api``.
        ui_url: ``http://127.0.0.1:PORT``.
        home: The server's PREFECT_HOME (database, logs).
        client_home: PREFECT_HOME given to client subprocesses by `env`.
        storage_path: Result storage shared by the test process and subprocesses.
        log_path: The server's combined stdout/stderr.
        process: The server process.
    """

    api_url: str
    ui_url: str
    home: Path
    client_home: Path
    storage_path: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    def env(self, **extra: str) -> dict[str, str]:
        """Return an environment for CLI subprocesses that talk to this server.

        Args:
            **extra: Additional variables, applied last.
        """
        env = dict(os.environ)
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.client_home),
            PREFECT_LOCAL_STORAGE_PATH=str(self.storage_path),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
        )
        env.update(extra)
        return env

    def log_tail(self, lines: int = 60) -> str:
        """Return the last lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no server log>"
        return "\n".join(text.splitlines()[-lines:])


def _wait_healthy(server: PrefectServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"Prefect server exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"Prefect server not healthy after {timeout:.0f}s:\n{server.log_tail()}")


def _die_with_parent() -> None:
    """Run in the forked child: have Linux SIGTERM it if the test process dies first."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 == PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Terminate a process started with ``start_new_session``; kill its group after ``grace`` s."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_process_groups(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    """:func:`stop_process_group` for several processes at once: all are signalled first."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        stop_process_group(process, grace=0)


@contextlib.contextmanager
def _as_global_settings() -> Iterator[None]:
    """Also expose the current Prefect settings to threads without a settings context.

    Uses the private helper `prefect_test_harness` relies on; a no-op if it is missing.
    """
    import prefect.context

    exposer = getattr(prefect.context, "_temporary_global_settings_context", None)
    if exposer is None:
        yield
        return
    with exposer(prefect.context.get_settings_context()):
        yield


def _drain_prefect_workers() -> None:
    """Flush queued API logs and events while the server is still up."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=10)
        except Exception as exc:  # teardown must go on
            warnings.warn(f"could not drain {worker.__name__}: {exc!r}", stacklevel=1)


def start_prefect_server(
    root: Path, port: int | None = None, settings: dict[str, str] | None = None
) -> PrefectServer:
    """Start a real ``prefect server start`` under ``root`` (not yet waited for).

    The same ``root`` and ``port`` start it again on the same database. ``settings`` are
    more ``PREFECT_SERVER_*`` variables for the server (e.g. a lower graph limit).
    """
    from prefect_fanout.cli.tuning import SERVER_SETTINGS

    home, client_home, storage_path = root / "server-home", root / "client-home", root / "storage"
    for path in (home, client_home, storage_path):
        path.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # The UI asks the server where the API is; without this it looks on port 4200.
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
    )
    env.update(SERVER_SETTINGS)  # batched task-run recording, as the README recommends
    # SQLite serialises writes: background services the tests never need only add lock
    # contention (and the occasional stalled request). The scheduler, the task-run recorder
    # and the event persister stay on: schedules, task runs and the UI need them.
    for service in (
        "CANCELLATION_CLEANUP",
        "FOREMAN",
        "LATE_RUNS",
        "PAUSE_EXPIRATIONS",
        "CLEANUP_RECONCILER",
        "TRIGGERS",
    ):
        env[f"PREFECT_SERVER_SERVICES_{service}_ENABLED"] = "false"
    env.update(settings or {})
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log_path = root / "server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    return PrefectServer(
        api_url=f"http://127.0.0.1:{port}/api",
        ui_url=f"http://127.0.0.1:{port}",
        home=home,
        client_home=client_home,
        storage_path=storage_path,
        log_path=log_path,
        process=process,
    )


def wait_healthy(server: PrefectServer, timeout: float = PREFECT_START_TIMEOUT) -> None:
    """Wait until the server answers /health (fails the test when it does not)."""
    _wait_healthy(server, timeout)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """Run one real Prefect server (API and UI) for the session and point Prefect at it."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_UI_URL,
        temporary_settings,
    )

    server = start_prefect_server(tmp_path_factory.mktemp("prefect"))
    try:
        _wait_healthy(server, PREFECT_START_TIMEOUT)
        settings = {
            PREFECT_API_URL: server.api_url,
            PREFECT_UI_URL: server.ui_url,
            PREFECT_LOCAL_STORAGE_PATH: server.storage_path,
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
        }
        with temporary_settings(updates=settings), _as_global_settings():
            yield server
            _drain_prefect_workers()
    finally:
        stop_process_group(server.process)


#: Fixtures that start (or are) a server: a test using one is not in the unit tier.
SERVER_FIXTURES = {"prefect_server", "_fake_openai_session", "fake_openai"}
#: Marks of the tiers that need servers, processes or a browser.
HEAVY_MARKS = ("server", "browser", "faults", "realmodel", "postgres")


#: Files whose tests start Ray heads: they run on one xdist worker, one head at a time (two
#: heads starting side by side on 2 cores made a head's client server miss its start).
RAY_FILES = frozenset({"test_chunks.py", "test_runners.py"})
#: Files with the longest tests (a 60 s lease, Ray heads, the real model, minute-long rate
#: tests), longest first: under ``pytest -n 3 --dist loadgroup`` they start first, so the short
#: files fill the other workers instead of one long file ending the run alone. Only an order:
#: a file missing here runs after them, in collection order.
LONG_FILES = (
    "test_faults.py",
    "test_realmodel.py",
    "test_chunks.py",
    "test_runners.py",
    "test_never_hang.py",
    "test_limits.py",
    "test_learned_limits.py",
    "test_partition_pool.py",
    "test_map_cli.py",
    "test_ui_partitions.py",
    "test_batch.py",
    "test_mapreduce.py",
    "test_deployments.py",
)


def xdist_group_of(nodeid: str) -> str:
    """Name the xdist group a test runs in: its file, its documentation example, or ``ray``.

    Tests of one file share module fixtures (a server, a browser), so a file is one group;
    each documentation example runs alone in its own directory, so each is its own group; the
    files that start Ray heads share one group.
    """
    path, _, rest = nodeid.partition("::")
    name = path.rsplit("/", 1)[-1]
    if name in RAY_FILES:
        return "ray"
    if name == "test_doc_examples.py" and "[" in rest:
        return f"docs:{rest}"
    return name


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``--dist loadgroup`` (scripts/test.sh), keep each `xdist_group_of` on one worker.

    The groups are computed here from each test's id: xdist 3.8 reads ``xdist_group`` marks
    by renaming tests, which pytest 9 no longer lets a plugin do (its node ids are read-only),
    so marks would leave every test a group of its own. The scheduler is xdist's own
    ``LoadScopeScheduling`` with this grouping (its documented hook); groups are handed out
    in collection order (``--no-loadscope-reorder``: the long files first).
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid)

    return GroupScheduling(config, log)


def _long_first(item: pytest.Item) -> int:
    name = item.path.name
    return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``unit`` every test that needs no server; put the long files first.

    A test is in the unit tier (``pytest -m unit``) unless it uses a server fixture or carries a
    heavy tier's mark; a test that starts a server by itself carries ``server`` (or another
    heavy mark).
    """
    for item in items:
        if any(item.get_closest_marker(mark) for mark in HEAVY_MARKS):
            continue
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            continue
        item.add_marker(pytest.mark.unit)
    items.sort(key=_long_first)
