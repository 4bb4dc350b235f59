"""Endpoint limits: spread across processes sharing a Prefect server, 429s slow every caller.

The bounds are read from what the fake server saw (arrival times, reported tokens,
requests in flight), with two real ``fanout map`` processes on one real Prefect
server. They are upper bounds: a correct limiter cannot fail them on a slow machine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr, ValidationError

from prefect_fanout import LLMEndpoint, build_request, result_from_future, submit_agent_call
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.limits import LimitSpec, estimate_tokens, limiter_for
from prefect_fanout.limits.backoff import Adaptation, reset_seconds
from prefect_fanout.limits.limiter import EndpointLimiter
from prefect_fanout.limits.server import (
    IDLE_SECONDS,
    SWEEP_SECONDS,
    PrefectBackend,
    endpoint_key,
    limit_name,
)
from prefect_fanout.options import RunOptions
from tests.fakeopenai import Error, FakeOpenAI, RecordedRequest, Reply
from tests.map_helpers import read_jsonl, tag, write_corpus
from tests.ui_helpers import PrefectAPI

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 10.0


# ------------------------------------------------------------------------------- helpers


def most_in_window(times: list[float], width: float = WINDOW) -> int:
    """The most arrivals in any closed window of ``width`` seconds starting at an arrival."""
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t <= start + width) for i, start in enumerate(times)))


def most_tokens_in_window(records: list[RecordedRequest], width: float = WINDOW) -> int:
    """The most reported tokens of the requests arriving in any window starting at an arrival."""
    answered = sorted((r for r in records if r.tokens is not None), key=lambda r: r.arrived)
    return max(
        sum(r.tokens or 0 for r in answered[i:] if r.arrived <= first.arrived + width)
        for i, first in enumerate(answered)
    )


def fanout(prefect_server: Any, fake: FakeOpenAI, api_key: str, *args: str) -> subprocess.Popen:
    """Start ``fanout ARGS`` as its own process on the test's Prefect server."""
    env = prefect_server.env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY=api_key)
    env.pop("FANOUT_MODEL", None)
    command = [sys.executable, "-m", "prefect_fanout.cli", *args]
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    """Wait for a process; its exit code, stdout and stderr."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


def map_args(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "map",
        str(source),
        "--agent",
        "default",
        "--partition",
        "count:2",
        "--output",
        str(output),
        "--model",
        "gpt-4o-mini",
        "--max-tokens",
        "64",
        *extra,
    ]


def corpus(path: Path, run: str, count: int, words: int = 6) -> Path:
    text = " ".join(f"paragraph{n:02d}" for n in range(words))
    return write_corpus(
        path, [{"id": f"{run}-{i}", "text": f"{run} item{i:03d} {text}"} for i in range(count)]
    )


def summary_wait(prefect_server: Any, summary: dict[str, Any]) -> str:
    """The map run's summary artifact (markdown)."""
    with PrefectAPI(prefect_server.api_url) as api:
        artifacts = api.artifacts(summary["flow_run_id"])
    found = [a for a in artifacts if a.get("key") == "fanout-map-summary"]
    assert found, [a.get("key") for a in artifacts]
    return str(found[0]["data"])


def server_limit(name: str) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


# ----------------------------------------------------------- two processes, one server


@pytest.mark.server
@pytest.mark.timeout(600)
def test_two_processes_share_rpm_and_concurrency_set_on_the_cli(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    rpm, concurrency, per_process = 120, 2, 20
    run, api_key = tag(), f"sk-{uuid.uuid4().hex}"
    fake_openai.default_latency = 0.4
    flags = ("--rpm", str(rpm), "--max-concurrency", str(concurrency), "--max-workers", "6")
    processes = [
        fanout(
            prefect_server,
            fake_openai,
            api_key,
            *map_args(
                corpus(tmp_path / f"in{p}.jsonl", f"{run}p{p}", per_process),
                tmp_path / f"out{p}",
                *flags,
            ),
        )
        for p in range(2)
    ]
    outcomes = [finish(process) for process in processes]
    for code, _, err in outcomes:
        assert code == 0, err[-3000:]

    seen = fake_openai.requests(run)
    assert len(seen) == 2 * per_process  # every item once: no request lost, none repeated
    assert {r.conversation.split()[0][-2:] for r in seen} == {"p0", "p1"}
    busiest = most_in_window([r.arrived for r in seen])
    print(f"rpm {rpm}: busiest 10 s window {busiest} (bound {rpm // 6 + 1})")
    assert busiest <= rpm // 6 + 1
    assert fake_openai.max_in_flight <= concurrency

    key = endpoint_key(fake_openai.base_url, api_key)
    shared = server_limit(limit_name("rpm", key, rpm))
    assert shared.slot_decay_per_second == pytest.approx(rpm / 60)
    assert server_limit(limit_name("concurrency", key)).limit == concurrency

    for _, out, _ in outcomes:
        summary = json.loads(out)
        markdown = summary_wait(prefect_server, summary)
        assert "## Waiting for capacity" in markdown
        row = next(line for line in markdown.splitlines() if fake_openai.base_url in line)
        calls, waited = row.strip("|").split("|")[1:3]
        assert int(calls) == per_process and float(waited) > 0
        assert summary["limit_wait_s"][fake_openai.base_url] == pytest.approx(
            float(waited), abs=0.002
        )
        rows = read_jsonl(Path(summary["output_dir"]) / "final.jsonl")
        assert all(r["status"] == "completed" for r in rows)


@pytest.mark.server
@pytest.mark.timeout(600)
def test_two_processes_share_tpm_set_on_the_cli(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    tpm, per_process = 3000, 20
    run, api_key = tag(), f"sk-{uuid.uuid4().hex}"
    processes = [
        fanout(
            prefect_server,
            fake_openai,
            api_key,
            *map_args(
                corpus(tmp_path / f"in{p}.jsonl", f"{run}p{p}", per_process),
                tmp_path / f"out{p}",
                "--tpm",
                str(tpm),
                "--max-workers",
                "4",
            ),
        )
        for p in range(2)
    ]
    for code, _, err in (finish(process) for process in processes):
        assert code == 0, err[-3000:]

    seen = fake_openai.requests(run)
    assert len(seen) == 2 * per_process
    largest = max(r.tokens or 0 for r in seen)
    busiest = most_tokens_in_window(seen)
    print(f"tpm {tpm}: busiest 10 s window {busiest} tokens (bound {tpm // 6} + {largest})")
    assert busiest <= tpm // 6 + largest
    # the estimate counted before each request covers what the server reported
    for record in seen:
        assert record.tokens is not None
        assert record.tokens <= estimate_tokens(record.body["messages"], 64)


# -------------------------------------------------------------------- 429 storm, in-process


@pytest.mark.server
@pytest.mark.timeout(300)
def test_a_429_storm_pauses_every_caller_and_keeps_each_call_s_budget(
    prefect_server: Any, fake_openai: FakeOpenAI
) -> None:
    run = tag()
    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr(f"sk-{run}"))
    stormy, others = f"{run} stormy", [f"{run} other {i}" for i in range(4)]
    fake_openai.script(stormy, *[Error(429, retry_after=1.5)] * 3, Reply("finally"))
    for key in others:
        fake_openai.script(key, Error(429, retry_after=0.5), Reply("ok"))
    limiter = limiter_for(endpoint)
    noted = threading.Event()
    started: dict[str, Any] = {}

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=5))
    def storm() -> list[str]:
        first = submit_agent_call(
            build_request(
                stormy,
                options=RunOptions(endpoint=endpoint, model="gpt-4o-mini"),
            ),
            options=RunOptions(endpoint=endpoint),
        )
        # the other calls start once the first 429 has been seen by the limiter
        deadline = time.monotonic() + 60
        while limiter.stats().rate_limited == 0 and time.monotonic() < deadline:
            noted.wait(0.01)
        started["after"] = time.monotonic()
        rest = [
            submit_agent_call(
                build_request(
                    k,
                    options=RunOptions(endpoint=endpoint, model="gpt-4o-mini"),
                ),
                options=RunOptions(endpoint=endpoint),
            )
            for k in others
        ]
        return [result_from_future(f).output for f in [first, *rest]]

    outputs = storm()
    assert outputs == ["finally", "ok", "ok", "ok", "ok"]
    # exactly retries + 1 requests per call
    assert fake_openai.count(stormy) == 4
    assert [fake_openai.count(k) for k in others] == [2, 2, 2, 2]
    # the first 429 paused everyone: no other call's first request came before its wait ended
    first_429 = fake_openai.requests(stormy)[0]
    assert first_429.finished is not None
    firsts = [fake_openai.requests(k)[0].arrived for k in others]
    assert min(firsts) >= first_429.finished + 1.5
    assert limiter.stats().rate_limited >= 1 + len(others)


# ------------------------------------------------------------------- a block and a plan


@pytest.mark.server
@pytest.mark.timeout(300)
def test_limits_set_on_a_block_hold_and_reach_the_server(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    rpm, count = 120, 26
    run, api_key = tag(), f"sk-{uuid.uuid4().hex}"
    block = f"limited-{run}"
    LLMEndpoint(
        base_url=fake_openai.base_url, api_key=SecretStr(api_key), requests_per_minute=rpm
    ).save(block, overwrite=True)
    source = corpus(tmp_path / "in.jsonl", run, count)
    process = fanout(
        prefect_server,
        fake_openai,
        "sk-not-this-one",
        *map_args(source, tmp_path / "out", "--endpoint", block, "--max-workers", "8"),
    )
    code, out, err = finish(process)
    assert code == 0, err[-3000:]
    seen = fake_openai.requests(run)
    assert len(seen) == count
    assert most_in_window([r.arrived for r in seen]) <= rpm // 6 + 1
    shared = server_limit(limit_name("rpm", endpoint_key(fake_openai.base_url, api_key), rpm))
    assert shared.slot_decay_per_second == pytest.approx(rpm / 60)
    assert "## Waiting for capacity" in summary_wait(prefect_server, json.loads(out))


@pytest.mark.server
@pytest.mark.timeout(300)
def test_limits_set_in_a_plan_config_hold(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run, api_key = tag(), f"sk-{uuid.uuid4().hex}"
    fake_openai.default_latency = 0.2
    tasks = [{"task_id": f"t{i}", "description": f"{run} task {i}"} for i in range(6)]
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps({"tasks": tasks, "config": {"max_workers": 6, "max_concurrency": 1}})
    )
    process = fanout(
        prefect_server, fake_openai, api_key, "dispatch", str(plan), "--model", "gpt-4o-mini"
    )
    code, out, err = finish(process)
    assert code == 0, err[-3000:]
    result = json.loads(out)
    assert result["status"] == "completed"
    assert fake_openai.count(run) == 6
    assert fake_openai.max_in_flight == 1
    key = endpoint_key(fake_openai.base_url, api_key)
    assert server_limit(limit_name("concurrency", key)).limit == 1
    assert all(task["endpoint"] == fake_openai.base_url for task in result["tasks"])
    assert sum(task["limit_wait_s"] for task in result["tasks"]) > 0
    with PrefectAPI(prefect_server.api_url) as api:
        artifacts = api.artifacts(result["flow_run_id"])
    summary = next(a for a in artifacts if a.get("key") == "fanout-dispatch-summary")
    assert "## Waiting for capacity" in summary["data"]
    assert f"| {fake_openai.base_url} | 6 |" in summary["data"]


# -------------------------------------------------------------------------- bad input


@pytest.mark.server
@pytest.mark.timeout(300)
def test_zero_or_negative_limits_exit_2_naming_the_flag_before_any_call(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = corpus(tmp_path / "in.jsonl", run, 2)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tasks": [{"task_id": "a", "description": run}]}))
    cases = [
        (
            map_args(source, tmp_path / "out", "--rpm", "0"),
            "argument --rpm: must be greater than 0",
        ),
        (["dispatch", str(plan), "--tpm", "-5"], "argument --tpm: must be greater than 0"),
        (["call", run, "--max-concurrency", "0"], "argument --max-concurrency: must be greater"),
    ]
    for args, message in cases:
        code, out, err = finish(fanout(prefect_server, fake_openai, "sk-test", *args))
        assert code == 2, err[-2000:]
        assert message in err and "leave the flag out for no limit" in err and out == ""
    plan.write_text(
        json.dumps(
            {"tasks": [{"task_id": "a", "description": run}], "config": {"requests_per_minute": 0}}
        )
    )
    code, out, err = finish(fanout(prefect_server, fake_openai, "sk-test", "dispatch", str(plan)))
    assert code == 2 and "config.requests_per_minute" in err and "greater than 0" in err
    assert fake_openai.count(run) == 0
    assert not (tmp_path / "out").exists()


def test_a_block_and_the_library_refuse_a_zero_limit_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="tokens_per_minute must be greater than 0"):
        LLMEndpoint(base_url="http://127.0.0.1:9/v1", tokens_per_minute=0)
    with pytest.raises(ValidationError, match="requests_per_minute"):
        RunOptions(requests_per_minute=-1)
    with pytest.raises(ConfigurationError, match="max_concurrency"):
        RunOptions.of({"max_concurrency": 0})
    with pytest.raises(ConfigurationError):
        LimitSpec(requests_per_minute=0)


# ---------------------------------------------------------------- the limiter by itself


@pytest.mark.server
@pytest.mark.timeout(300)
def test_threads_and_an_event_loop_share_one_limiter_over_the_server(prefect_server: Any) -> None:
    """Sync and async callers draw on the same spans; the API calls per request are few."""
    rpm, count = 300, 30
    limiter = EndpointLimiter(
        f"unit-{uuid.uuid4().hex[:12]}", LimitSpec(requests_per_minute=rpm), PrefectBackend()
    )
    granted: list[float] = []
    lock = threading.Lock()

    def sync_caller() -> None:
        with limiter.request(10):
            with lock:
                granted.append(time.monotonic())

    async def async_callers() -> None:
        async def one() -> None:
            async with limiter.arequest(10):
                with lock:
                    granted.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(count // 2)))

    threads = [threading.Thread(target=sync_caller) for _ in range(count // 2)]
    for thread in threads:
        thread.start()
    asyncio.run(async_callers())
    for thread in threads:
        thread.join()
    stats = limiter.stats()
    assert stats.permits == count and len(granted) == count
    assert most_in_window(granted, 2.0) <= 2.0 * rpm / 60 + 1
    # a span of 5 s holds 25 requests: one read and one increment per span (plus the
    # limit's creation, once)
    print(f"rpm {rpm}: {stats.api_calls} Prefect API calls for {stats.permits} requests")
    assert stats.api_calls / stats.permits <= 0.5


class InFlight:
    """Counts the requests inside it, from many threads, and the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    def __enter__(self) -> InFlight:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.now -= 1


def run_threads(target: Any, count: int) -> None:
    """Run ``target`` on ``count`` threads at once and wait for them all."""
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_without_a_server_the_limits_hold_in_the_process() -> None:
    limiter = EndpointLimiter("local", LimitSpec(max_concurrency=2, requests_per_minute=600))
    flight, granted = InFlight(), []

    def caller() -> None:
        with limiter.request(1), flight:
            granted.append(time.monotonic())
            time.sleep(0.05)  # a request in flight, not synchronisation

    run_threads(caller, 20)
    assert flight.peak <= 2
    assert most_in_window(granted, 1.0) <= 600 / 60 + 1
    assert limiter.stats().api_calls == 0


def test_a_rate_too_fast_to_pace_still_grants_every_request() -> None:
    # At 10 million requests a minute an interval (6 microseconds) is shorter than the
    # limiter's own bookkeeping: every permit must still be granted, not asked for again
    # for ever.
    limiter = EndpointLimiter("fast", LimitSpec(requests_per_minute=10**7))
    for _ in range(300):
        with limiter.request(1) as permit:
            assert permit.waited_s >= 0
    assert limiter.stats().permits == 300


def test_the_adaptation_rule_halves_and_recovers() -> None:
    rule = Adaptation()
    rule.on_429(now=100.0, in_flight=8)
    assert rule.current(100.0) == 0.5 and rule.cap(100.0, None) == 4
    rule.on_429(now=101.0, in_flight=4)
    assert rule.cap(101.0, 10) == 2
    assert rule.current(131.0) == 0.5 and rule.current(161.0) == 1.0
    assert rule.cap(161.0, None) is None


def test_reset_headers_are_read() -> None:
    assert reset_seconds("1s") == 1.0
    assert reset_seconds("6m0s") == 360.0
    assert reset_seconds("20ms") == pytest.approx(0.02)
    assert reset_seconds("2.5") == 2.5
    assert reset_seconds("soon") is None


def test_the_token_estimate_counts_prompt_and_budget() -> None:
    messages = [{"role": "user", "content": "x" * 40}]
    assert estimate_tokens(messages, 100) == 10 + 4 + 100
    assert estimate_tokens(messages, None) == 10 + 4 + 1024


@pytest.mark.server
@pytest.mark.timeout(300)
def test_a_process_hands_its_concurrency_slots_on_without_asking_the_server(
    prefect_server: Any,
) -> None:
    limiter = EndpointLimiter(
        f"unit-{uuid.uuid4().hex[:12]}", LimitSpec(max_concurrency=2), PrefectBackend()
    )
    flight = InFlight()

    def caller() -> None:
        for _ in range(5):
            with limiter.request(), flight:
                time.sleep(0.02)  # a request in flight, not synchronisation

    run_threads(caller, 6)
    stats = limiter.stats()
    print(f"max_concurrency 2: {stats.api_calls} Prefect API calls for {stats.permits} requests")
    assert stats.permits == 30 and flight.peak <= 2
    assert stats.api_calls < stats.permits  # slots held are handed on, not asked for again
    # every slot goes back once idle (IDLE_SECONDS, swept every SWEEP_SECONDS)
    name = limit_name("concurrency", limiter.key)
    deadline = time.monotonic() + IDLE_SECONDS + 10 * SWEEP_SECONDS + 10
    while server_limit(name).active_slots and time.monotonic() < deadline:
        time.sleep(SWEEP_SECONDS)  # polling the server for a state with a bound
    shared = server_limit(name)
    assert shared.limit == 2 and shared.active_slots == 0


def test_limits_are_shared_only_with_a_configured_server(prefect_server: Any) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    endpoint = LLMEndpoint(
        base_url="http://127.0.0.1:9/v1", api_key=SecretStr(f"sk-{tag()}"), requests_per_minute=60
    )
    assert limiter_for(endpoint).backend is not None
    with temporary_settings({PREFECT_API_URL: None}):
        assert limiter_for(endpoint).backend is None  # embedded: within the process
    unlimited = LLMEndpoint(base_url="http://127.0.0.1:9/v1", api_key=SecretStr("sk-x"))
    # an endpoint without limits may share what it learns of the provider's, and asks
    # the server nothing before its first request
    assert limiter_for(unlimited).backend is not None
    assert limiter_for(unlimited).stats().api_calls == limiter_for(endpoint).stats().api_calls


def test_a_429_without_retry_after_pauses_for_the_reset_headers() -> None:
    import httpx
    import openai

    from prefect_fanout.limits.backoff import DEFAULT_PAUSE_SECONDS, pause_seconds

    def error(headers: dict[str, str]) -> openai.APIStatusError:
        request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
        response = httpx.Response(429, headers=headers, request=request, json={"error": {}})
        return openai.RateLimitError("rate limited", response=response, body=None)

    assert pause_seconds(error({"retry-after": "3"})) == 3.0
    resets = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert pause_seconds(error(resets)) == 60.0  # capped
    assert pause_seconds(error({"x-ratelimit-reset-requests": "250ms"})) == pytest.approx(0.25)
    assert pause_seconds(error({})) == DEFAULT_PAUSE_SECONDS
