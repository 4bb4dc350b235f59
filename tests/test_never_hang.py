"""Limits and calls that never hang and never serialise (issue 20).

Each test is one way a run used to stop cold or go one call at a time: a token limit
smaller than six requests' estimate, a limit lowered between runs, a killed slot holder,
the structured-output probe, a dripping body, a signal in a big map. The processes are
real ``fanout`` commands against the fake OpenAI server and real Prefect servers (a
standalone one, and the embedded one the CLI starts). Process timeouts only detect a
hang; nothing here asserts how fast something was.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.errors import CallTimeoutError
from prefect_fanout.limits import LimitSpec, forget_limiters
from prefect_fanout.limits.limiter import EndpointLimiter
from prefect_fanout.limits.server import DEAD_HOLDER_BOUND_SECONDS, endpoint_key, limit_name
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.execute import execute_request
from prefect_fanout.llm.transport import forget_learned_styles
from prefect_fanout.options import RunOptions
from tests.conftest import stop_process_group
from tests.fakeopenai import Drip, FakeOpenAI, Hang, format_style

ROOT = Path(__file__).resolve().parents[1]
HANG_SECONDS = 150.0
"""A ``fanout`` process still running after this (plus its own bound) is taken for a hang."""
FANOUT = [sys.executable, "-m", "prefect_fanout.cli"]
LOG = logging.getLogger("tests.never_hang")


def write_items(path: Path, run: str, count: int) -> Path:
    path.write_text(
        "".join(
            json.dumps({"id": f"{run}-{i}", "text": f"{run} item {i}"}) + "\n" for i in range(count)
        )  # fmt: skip
    )
    return path


def env_for(fake: FakeOpenAI, api_key: str, prefect_server: Any | None, home: Path) -> dict:
    """The environment of a ``fanout`` process: a standalone server, or none (embedded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FANOUT_"))}
    env.pop("PREFECT_API_URL", None)
    env.update(
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY=api_key,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_HOME=str(home),
    )
    if prefect_server is None:  # the embedded server: give it time on a loaded machine
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    else:
        env.update(
            PREFECT_API_URL=prefect_server.api_url,
            PREFECT_LOCAL_STORAGE_PATH=str(prefect_server.storage_path),
        )
    return env


def start_map(source: Path, out: Path, env: dict, *extra: str) -> subprocess.Popen[str]:
    command = [*FANOUT, "map", str(source), "--agent", "default", "--partition", "count:1",
               "--output", str(out), "--model", "gpt-4o-mini", *extra]  # fmt: skip
    return subprocess.Popen(
        command,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    """Exit code and stderr; a process still running after ``timeout`` is a hang."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(process, grace=1)  # type: ignore[arg-type]
        _, err = process.communicate()
        pytest.fail(f"still running after {timeout:.0f}s (a hang):\n{err[-3000:]}")
    return process.returncode, err


def wait_for(condition: Any, deadline: float, what: str) -> None:
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling interval; the deadline bounds the wait


# ------------------------------------------------------------------ 1. small token limits


def _tpm_run(fake: FakeOpenAI, server: Any | None, tmp_path: Path, tpm: int) -> None:
    run, key = uuid.uuid4().hex[:8], f"sk-{uuid.uuid4().hex}"
    source = write_items(tmp_path / "in.jsonl", run, 2)
    env = env_for(fake, key, server, tmp_path / "home")
    # the default max_tokens (1024): each request is counted for about 1,035 tokens
    code, err = finish(
        start_map(source, tmp_path / "out", env, "--tpm", str(tpm)), 2 * HANG_SECONDS
    )
    if tpm < 1028:
        assert code == 2, err[-3000:]
        assert "--tpm" in err and "1,028" in err and "--max-tokens" in err, err[-3000:]
        assert fake.count(run) == 0
    else:
        assert code == 0, err[-3000:]
        assert fake.count(run) == 2


@pytest.mark.server
@pytest.mark.timeout(400)
@pytest.mark.parametrize("tpm", [1000, 4000, 6300, 6400])
def test_a_small_token_limit_runs_or_exits_2_with_a_standalone_server(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path, tpm: int
) -> None:
    """6,300 hung for ever (1,055 > T/6); 4,000 takes the big-request path (over T/5)."""
    _tpm_run(fake_openai, prefect_server, tmp_path, tpm)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("tpm", [1000, 6300, 6400])
def test_a_small_token_limit_runs_or_exits_2_with_the_embedded_server(
    fake_openai: FakeOpenAI, tmp_path: Path, tpm: int
) -> None:
    _tpm_run(fake_openai, None, tmp_path, tpm)


# ------------------------------------------------------------- 2. a limit lowered, raised


@pytest.mark.server
@pytest.mark.timeout(600)
def test_a_token_limit_lowered_then_raised_between_runs_never_waits_out_the_old_one(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    env = env_for(fake_openai, key, prefect_server, tmp_path / "home")
    for step, tpm in enumerate((600_000, 6_000, 60_000, 600_000)):
        run = uuid.uuid4().hex[:8]
        source = write_items(tmp_path / f"in{step}.jsonl", run, 2)
        flags = ("--tpm", str(tpm), "--max-tokens", "200")
        code, err = finish(start_map(source, tmp_path / f"out{step}", env, *flags), HANG_SECONDS)
        assert code == 0, (tpm, err[-3000:])
        assert fake_openai.count(run) == 2
    # each rate has its own limit, sized for it
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        name = limit_name("tpm", endpoint_key(fake_openai.base_url, key), 6_000)
        assert client.read_global_concurrency_limit_by_name(name).limit == 1_200


# ---------------------------------------------------------------- 3. a killed slot holder


@pytest.mark.server
@pytest.mark.timeout(600)
def test_a_sigkilled_holder_s_slots_come_back_and_the_wait_is_logged(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    env = env_for(fake_openai, key, prefect_server, tmp_path / "home")
    held, waiting = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    fake_openai.script(held, Hang(600), Hang(600))
    flags = ("--max-concurrency", "2", "--max-workers", "2")
    holder = start_map(write_items(tmp_path / "a.jsonl", held, 2), tmp_path / "a", env, *flags)
    try:
        wait_for(lambda: fake_openai.count(held) == 2, 180, "both slots held")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.communicate()
    other = start_map(write_items(tmp_path / "b.jsonl", waiting, 1), tmp_path / "b", env, *flags)
    # the bound: the lease and the server's sweep, plus start-up; the old lease was 600 s
    code, err = finish(other, DEAD_HOLDER_BOUND_SECONDS + HANG_SECONDS)
    assert code == 0, err[-3000:]
    assert fake_openai.count(waiting) == 1
    assert "for a slot of the concurrency limit" in err, err[-3000:]
    assert limit_name("concurrency", endpoint_key(fake_openai.base_url, key)) in err


# ------------------------------------------------------- 4. the structured-output probe

SCHEMA: dict[str, Any] = {
    "title": "Fact",
    "type": "object",
    "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["name", "year"],
}


def test_structured_calls_do_not_queue_behind_the_probe(fake_openai: FakeOpenAI) -> None:
    """8 workers, 16 structured calls: by the time the second answer is back, all 8 of the
    first wave were at the server (the old probe lock let them in one whole request at a
    time: 1, 1, 2, 3...)."""
    forget_learned_styles()
    fake_openai.default_latency = 1.0
    run = uuid.uuid4().hex
    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr("sk-probe"))
    profile = AgentProfile(name="s", output_schema=SCHEMA)

    def ask(n: int) -> Any:
        resolver = Resolver(RunOptions(endpoint=endpoint, model="local-model"))
        request = resolver.request(f"{run} {n}", agent=profile)
        return execute_request(request, resolver.transport(request.model), LOG)

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(ask, range(16)))
    finally:
        forget_learned_styles()
    assert len(results) == 16
    seen = fake_openai.requests(run)
    second_done = sorted(r.finished or 0.0 for r in seen)[1]
    assert sum(1 for r in seen if r.arrived < second_done) >= 8
    assert {format_style(r.body) for r in seen} == {"json_schema"}
    # the calls that waited for the probe say so (limit_wait_s, apart from their latency)
    assert any(r.limit_wait_s > 0 for r in results)


def test_a_429_cap_comes_from_the_most_in_flight_not_the_moment() -> None:
    limiter = EndpointLimiter("k", LimitSpec())
    permits = [limiter.request(1) for _ in range(8)]
    for permit in permits:
        permit.__enter__()
    for permit in permits[1:]:
        permit.__exit__(None, None, None)
    limiter.note_rate_limited(0.0)  # one request in flight at the 429
    permits[0].__exit__(None, None, None)
    assert limiter._adapt.cap(time.monotonic(), None) == 4  # half of 8, not of 1


# ---------------------------------------------------------------- 5. a dripping body


def test_a_dripping_body_ends_at_the_request_s_deadline(fake_openai: FakeOpenAI) -> None:
    run = uuid.uuid4().hex
    fake_openai.script(run, Drip(interval=0.5, seconds=60), Drip(interval=0.5, seconds=60))
    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr("sk-drip"))
    profile = AgentProfile(name="d", max_attempts=2, backoff_initial_seconds=0.01,
                           backoff_max_seconds=0.02)  # fmt: skip
    resolver = Resolver(RunOptions(endpoint=endpoint, model="gpt-4o-mini"))
    request = resolver.request(f"{run} hi", agent=profile, timeout_seconds=2)
    with pytest.raises(CallTimeoutError, match="timed out after 2"):
        execute_request(request, resolver.transport(request.model), LOG)
    assert fake_openai.count(run) == 2


# ------------------------------------------------------------- 6. a signal in a big map


@pytest.mark.server
@pytest.mark.timeout(600)
def test_sigterm_in_a_50000_item_map_starts_no_request_and_ends_without_tracebacks(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.default_latency = 0.2
    run = uuid.uuid4().hex[:8]
    env = env_for(fake_openai, "sk-signal", prefect_server, tmp_path / "home")
    source = write_items(tmp_path / "in.jsonl", run, 50_000)
    process = start_map(source, tmp_path / "out", env, "--max-workers", "8")
    wait_for(lambda: fake_openai.count(run) >= 20, 300, "20 requests")
    os.killpg(process.pid, signal.SIGTERM)
    at_signal = fake_openai.count(run)
    try:
        _, err = process.communicate(timeout=10)  # the bound: 5 s, and some slack
    except subprocess.TimeoutExpired:
        stop_process_group(process, grace=1)  # type: ignore[arg-type]
        pytest.fail("the process did not end after SIGTERM")
    after = fake_openai.count(run) - at_signal
    assert process.returncode == 143, err[-3000:]
    # requests already on their way may still arrive; none may start after the signal
    assert after <= 8, after
    assert "Traceback" not in err and "atexit" not in err, err[-5000:]


@pytest.fixture(autouse=True)
def _fresh_limiters() -> Any:
    forget_limiters()
    yield
    forget_limiters()


# ------------------------------------------------------------------ the summary's truth


@pytest.mark.server
@pytest.mark.timeout(400)
def test_the_summary_s_concurrency_is_what_the_server_saw(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """4 workers, one place in flight: the summary says 1, as the server saw, not the 4
    calls that were submitted (three of them waiting for the limit)."""
    fake_openai.default_latency = 0.3
    run = uuid.uuid4().hex[:8]
    env = env_for(fake_openai, f"sk-{uuid.uuid4().hex}", prefect_server, tmp_path / "home")
    source = write_items(tmp_path / "in.jsonl", run, 8)
    flags = ("--max-workers", "4", "--max-concurrency", "1")
    process = start_map(source, tmp_path / "out", env, *flags)
    code, err = finish(process, HANG_SECONDS)
    assert code == 0, err[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert fake_openai.max_in_flight == 1
    assert summary["concurrency_reached"] == 1
    assert sum(summary["limit_wait_s"].values()) > 0  # the waits are reported apart
