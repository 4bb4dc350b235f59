"""``fanout server start`` and the line the CLI prints when a server falls behind a run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from prefect_fanout.call.recording import RecordingGuard, guard_mark, server_behind_line
from prefect_fanout.cli.tuning import (
    QUIET_EMBEDDED_SERVER,
    STANDALONE_SETTINGS,
    server_environment,
    tune_embedded_server,
)
from tests.conftest import PREFECT_START_TIMEOUT, free_port, silent_api_url, stop_process_group
from tests.fakeopenai import FakeOpenAI

FANOUT = [sys.executable, "-m", "prefect_fanout.cli"]
RECORDER_BATCH = "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"


def test_a_setting_the_profile_sets_is_left_to_the_profile():
    persister = "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"
    env = server_environment({}, profile_names={persister})
    assert persister not in env
    assert env[RECORDER_BATCH] == STANDALONE_SETTINGS[RECORDER_BATCH]


def test_the_settings_are_defaults_the_environment_overrides():
    env = server_environment({RECORDER_BATCH: "7", "PATH": "/bin"})
    assert env[RECORDER_BATCH] == "7"
    assert env["PATH"] == "/bin"
    for name, value in STANDALONE_SETTINGS.items():
        if name != RECORDER_BATCH:
            assert env[name] == value
    assert "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED" not in env  # automations stay on


@pytest.mark.server
def test_the_embedded_servers_own_lines_stay_off_a_quiet_commands_console():
    quiet: dict[str, str] = {}
    assert tune_embedded_server(quiet, quiet=True)
    assert (
        quiet["PREFECT_SERVER_LOGGING_LEVEL"]
        == QUIET_EMBEDDED_SERVER["PREFECT_SERVER_LOGGING_LEVEL"]
    )
    verbose: dict[str, str] = {}
    assert tune_embedded_server(verbose, quiet=False)
    assert "PREFECT_SERVER_LOGGING_LEVEL" not in verbose
    chosen = {"PREFECT_SERVER_LOGGING_LEVEL": "DEBUG"}  # the user's own level is kept
    tune_embedded_server(chosen, quiet=True)
    assert chosen["PREFECT_SERVER_LOGGING_LEVEL"] == "DEBUG"
    standing = {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}  # no embedded server
    assert not tune_embedded_server(standing, quiet=True) and len(standing) == 1


def test_fanout_server_without_an_action_prints_its_help_and_exits_2():
    done = subprocess.run([*FANOUT, "server"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "start" in done.stderr and RECORDER_BATCH in done.stderr


@pytest.mark.server
def test_help_after_start_is_prefect_server_starts():
    done = subprocess.run(
        [*FANOUT, "server", "start", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "prefect server start" in done.stdout
    assert "--port" in done.stdout


def _wait_healthy(process: subprocess.Popen[bytes], api_url: str, log: Path) -> None:
    """Wait (at most PREFECT_START_TIMEOUT s) until the server answers /health."""
    deadline = time.monotonic() + PREFECT_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"fanout server start exited {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"the server did not answer within {PREFECT_START_TIMEOUT} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def unrecording_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``fanout server start`` with the task-run recorder off: a server that never catches up.

    The environment sets the recorder's batch size and the active Prefect profile the event
    persister's: both must win over the defaults.
    """
    root = tmp_path_factory.mktemp("fanout-server")
    (root / "home").mkdir()
    (root / "home" / "profiles.toml").write_text(
        'active = "mine"\n[profiles.mine]\n'
        'PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE = "123"\n'
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(root / "home"),
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED="false",
        **{RECORDER_BATCH: "7"},
    )
    log = root / "server.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [*FANOUT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(process, api_url, log)
        yield api_url, root
    finally:
        stop_process_group(process)


@pytest.mark.server
def test_the_server_runs_with_the_defaults_and_the_users_own_values_from_env_and_profile(
    unrecording_server,
):
    api_url, _ = unrecording_server
    settings = httpx.get(f"{api_url}/admin/settings", timeout=30).json()
    services = settings["server"]["services"]
    assert services["task_run_recorder"]["batch_size"] == 7  # the user's
    assert services["task_run_recorder"]["read_batch_size"] == 100  # ours
    assert services["event_persister"]["batch_size"] == 123  # the profile's
    assert services["event_persister"]["read_batch_size"] == 100  # ours
    assert services["event_persister"]["flush_interval"] == 1.0
    assert settings["server"]["analytics_enabled"] is False


def _map(api_url: str, root: Path, fake: FakeOpenAI, items: int) -> subprocess.CompletedProcess:
    tag = uuid.uuid4().hex[:8]
    work = root / f"map-{tag}"
    work.mkdir()
    source = work / "corpus.jsonl"
    source.write_text(
        "".join(
            json.dumps({"id": f"i{i}", "text": f"behind {tag} {i}"}) + "\n" for i in range(items)
        )
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FANOUT_MODEL",)}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(work / "home"),
        PREFECT_LOCAL_STORAGE_PATH=str(work / "storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-test",
    )
    command = [*FANOUT, "map", str(source), "--agent", "default", "--partition", "count:1"]
    command += ["--output", str(work / "out"), "--max-workers", "16", "--model", "gpt-4o-mini"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_the_cli_says_once_in_one_line_when_the_server_fell_behind(unrecording_server, fake_openai):
    api_url, root = unrecording_server
    done = _map(api_url, root, fake_openai, 300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if "fell behind" in line]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("fanout map: the Prefect server at " + api_url)
    assert "recorded 0 of the 300 task runs" in lines[0]
    assert "fanout server start" in lines[0]


def test_the_cli_says_nothing_when_the_server_keeps_up(prefect_server, fake_openai):
    done = _map(prefect_server.api_url, prefect_server.home.parent, fake_openai, 300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fell behind" not in done.stderr


def _watched(guard: RecordingGuard) -> None:
    from prefect_fanout.call import recording

    with recording._guards_lock:
        recording._guards[guard.flow_run_id] = guard


@pytest.mark.server
def test_a_server_that_cannot_be_read_is_reported_too():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    mark = guard_mark()
    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{free_port()}/api"}):
        guard = RecordingGuard(uuid.uuid4(), check_every=10**6)
        _watched(guard)
        guard.finished(5)
        line = server_behind_line(mark)
    assert line is not None and "could not be read" in line
    assert server_behind_line(guard.sequence) is None  # only runs after the mark count


@pytest.mark.server
def test_a_count_unread_during_the_run_is_said_without_waiting_again():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    mark = guard_mark()
    with silent_api_url() as url, temporary_settings({PREFECT_API_URL: url}):
        guard = RecordingGuard(uuid.uuid4(), max_lag=0, resume_lag=0, check_every=1)
        _watched(guard)
        guard.finished()  # the read during the run gets no answer
        line = server_behind_line(mark)
    assert guard.checks == 1  # the end did not read (nor wait) again
    assert line is not None and "could not be read during the run (no answer)" in line


class _SlowCount:
    """An API that answers ``POST /api/task_runs/count`` with ``count`` after ``delay`` s."""

    def __init__(self, count: int, delay: float) -> None:
        import http.server
        import threading

        answer = str(count).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                self.send_error(404)  # no CSRF tokens here: Prefect's client goes on without

            def do_POST(self) -> None:  # noqa: N802 (the http.server name)
                self.rfile.read(int(self.headers.get("content-length", 0)))
                time.sleep(delay)  # the behaviour under test: a busy server's slow answer
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.server
def test_a_count_answered_slower_than_a_brake_read_still_counts_at_the_end():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_fanout.call.recording import END_READ_SECONDS, READ_TIMEOUT_SECONDS

    delay = READ_TIMEOUT_SECONDS + 1
    assert delay < END_READ_SECONDS
    slow = _SlowCount(300, delay)
    try:
        mark = guard_mark()
        with temporary_settings({PREFECT_API_URL: slow.url}):
            guard = RecordingGuard(uuid.uuid4(), check_every=10**6)
            _watched(guard)
            guard.finished(300)
            line = server_behind_line(mark)
    finally:
        slow.close()
    assert guard.checks == 1
    assert line is None  # all 300 recorded: the server kept up, it was only slow to say so


@pytest.mark.server
def test_the_ui_asks_the_port_the_server_was_started_on():
    from prefect_fanout.cli.server import ui_api_url

    assert ui_api_url(["--port", "4300"]) == "http://127.0.0.1:4300/api"
    assert ui_api_url(["--host=0.0.0.0", "--port=4301"]) == "http://127.0.0.1:4301/api"
    assert ui_api_url(["--host", "10.0.0.5", "--port", "4302"]) == "http://10.0.0.5:4302/api"
    assert ui_api_url(["--background"]) is None  # Prefect's default stands
