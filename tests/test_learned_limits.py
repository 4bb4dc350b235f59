"""Limits learned from the provider, and limits that cost nothing until they bind.

The fake server enforces its own limits as OpenAI does (a 429 over them, the
``x-ratelimit-*`` headers with every answer, no Retry-After); real ``fanout map``
processes run against it with no limit flags, on the session's real Prefect server.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from prefect_fanout.limits import LimitSpec
from prefect_fanout.limits.learned import read_headers
from prefect_fanout.limits.learning import Learning
from prefect_fanout.limits.limiter import EndpointLimiter
from prefect_fanout.limits.server import PrefectBackend, endpoint_key, learned_name, limit_name
from tests.fakeopenai import FakeOpenAI
from tests.map_helpers import read_jsonl, tag
from tests.test_limits import corpus, fanout, finish, map_args, most_in_window, server_limit

# ------------------------------------------------------------------ pure rules (no server)


@pytest.mark.unit
def test_the_ratelimit_headers_are_read_as_openai_writes_them() -> None:
    said = read_headers(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-remaining-requests": "599",
            "x-ratelimit-reset-requests": "100ms",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-tokens": "148976",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert said is not None
    assert (said.requests_per_minute, said.tokens_per_minute) == (600, 150000)
    assert (said.remaining_requests, said.remaining_tokens) == (599, 148976)
    assert said.reset_requests_s == pytest.approx(0.1) and said.reset_tokens_s == 360.0
    assert read_headers({"content-type": "application/json"}) is None
    assert read_headers({"x-ratelimit-limit-requests": "lots"}) is None


@pytest.mark.unit
def test_explicit_rates_win_and_the_probe_tells_how_tokens_are_counted() -> None:
    said = read_headers(
        {
            "x-ratelimit-limit-requests": "600",
            "x-ratelimit-limit-tokens": "10000",
            "x-ratelimit-remaining-tokens": "8960",  # the probe was counted for 1,040
        }
    )
    assert said is not None
    learning = Learning(explicit_rpm=300, explicit_tpm=None)
    assert learning.probe.state == "done"  # a rate was typed: no probe
    assert learning.rates_from(said) == {"tpm": 10000}  # --rpm 300 wins over 600
    learning.counting_from(said, estimate=1040, reported=25)
    assert learning.hand_back is False  # max_tokens was counted up front
    learning.counting_from(said, estimate=2000, reported=1000)
    assert learning.hand_back is True  # nearer what was used


@pytest.mark.unit
def test_without_headers_the_429s_settle_a_guessed_rate() -> None:
    learning = Learning(None, None)
    assert learning.probe.state == "wanted"
    for n in range(100):  # 10 answers a second for 10 s
        learning.answered(n / 10)
    guess = learning.on_429(10.0, None)
    assert guess is not None and 500 <= guess <= 600
    assert learning.on_429(10.5, guess) is None  # at most one change a second
    lower = learning.on_429(12.0, guess)
    assert lower is not None and lower <= guess  # a 429 never raises the rate
    assert learning.recovered(12.0 + 25, lower) == max(lower + 1, int(lower * 1.1))
    assert learning.recovered(12.0 + 61, lower) == 0  # a minute without a 429: dropped
    assert learning.guessed is False
    sparse = Learning(None, None)
    sparse.answered(0.0)
    assert sparse.on_429(5.0, None) == 60  # one answer is no evidence of a low limit


# --------------------------------------------------------------- the provider's own limits


def _run_map(
    prefect_server: Any, fake: FakeOpenAI, tmp_path: Path, run: str, api_key: str, items: int,
    name: str = "", *flags: str,
) -> Any:  # fmt: skip
    return fanout(
        prefect_server,
        fake,
        api_key,
        *map_args(
            corpus(tmp_path / f"in{name}.jsonl", run, items),
            tmp_path / f"out{name}",
            *(flags or ("--max-workers", "16")),
        ),
    )


def _completed(out: str) -> int:
    summary = json.loads(out)
    rows = read_jsonl(Path(summary["output_dir"]) / "final.jsonl")
    return sum(1 for r in rows if r["status"] == "completed")


@pytest.mark.server
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("headers", "rpm"),
    # without headers the run must outpace the provider for it to push back: a low rate
    [(True, 1200), (False, 600)],
    ids=["headers", "no-headers"],
)
def test_no_flags_the_provider_s_limit_costs_no_item(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path, headers: bool, rpm: int
) -> None:
    items = 150
    fake_openai.enforce(requests_per_minute=rpm, headers=headers)
    run, api_key = tag(), f"sk-{uuid.uuid4().hex}"
    code, out, err = finish(_run_map(prefect_server, fake_openai, tmp_path, run, api_key, items))
    assert code == 0, err[-3000:]
    assert _completed(out) == items
    seen = fake_openai.requests(run)
    limited = sum(1 for r in seen if r.status == 429)
    print(f"provider {rpm}/min, headers {headers}: {limited} of {len(seen)} requests were 429")
    if not headers:
        assert limited > 0  # the provider did push back: the pace came from its 429s
        return
    assert limited <= 0.05 * len(seen)
    # the first request went alone: the second arrived after it was answered
    first, second = sorted(seen, key=lambda r: r.arrived)[:2]
    assert first.finished is not None and second.arrived >= first.finished
    # what it learned is kept on the server for other processes
    with get_client(sync_client=True) as client:
        name = learned_name(endpoint_key(fake_openai.base_url, api_key))
        kept = client.read_variable_by_name(name)
    assert kept is not None and kept.value["requests_per_minute"] == rpm


@pytest.mark.server
@pytest.mark.timeout(600)
def test_two_processes_share_the_limits_one_of_them_learned(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    rpm, items = 600, 60
    fake_openai.enforce(requests_per_minute=rpm)
    run, api_key = tag(), f"sk-{uuid.uuid4().hex}"
    processes = [
        _run_map(prefect_server, fake_openai, tmp_path, f"{run}p{p}", api_key, items, str(p))
        for p in range(2)
    ]
    outcomes = [finish(process) for process in processes]
    for code, out, err in outcomes:
        assert code == 0, err[-3000:]
        assert _completed(out) == items
    seen = fake_openai.requests(run)
    limited = sum(1 for r in seen if r.status == 429)
    answered = [r.arrived for r in seen if r.status == 200]
    busiest = most_in_window(answered)
    print(
        f"two processes, provider {rpm}/min: {limited} of {len(seen)} were 429, busiest {busiest}"
    )
    assert limited <= 0.05 * len(seen)  # not each process spending the whole limit
    key = endpoint_key(fake_openai.base_url, api_key)
    assert server_limit(limit_name("rpm", key, rpm)).slot_decay_per_second == pytest.approx(10.0)


@pytest.mark.server
@pytest.mark.timeout(900)
def test_a_binding_rate_holds_across_four_processes(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    rpm, per_process = 240, 15
    run, api_key = tag(), f"sk-{uuid.uuid4().hex}"
    flags = ("--rpm", str(rpm), "--max-workers", "4")
    processes = [
        _run_map(
            prefect_server,
            fake_openai,
            tmp_path,
            f"{run}p{p}",
            api_key,
            per_process,
            str(p),
            *flags,
        )
        for p in range(4)
    ]
    for code, _, err in (finish(process, timeout=600) for process in processes):
        assert code == 0, err[-3000:]
    seen = fake_openai.requests(run)
    assert len(seen) == 4 * per_process
    busiest = most_in_window([r.arrived for r in seen])
    print(f"four processes at --rpm {rpm}: busiest 10 s {busiest} (bound {rpm // 6 + 1})")
    assert busiest <= rpm // 6 + 1


@pytest.mark.server
@pytest.mark.timeout(300)
def test_limits_far_above_use_ask_the_server_a_few_times_not_once_a_call(
    prefect_server: Any,
) -> None:
    spec = LimitSpec(max_concurrency=50, requests_per_minute=100_000, tokens_per_minute=10**7)
    limiter = EndpointLimiter(f"unit-{uuid.uuid4().hex[:12]}", spec, PrefectBackend())
    done = []

    def caller() -> None:
        for _ in range(15):
            with limiter.request(100):
                time.sleep(0.005)  # a request in flight, not synchronisation
            done.append(1)

    threads = [threading.Thread(target=caller) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stats = limiter.stats()
    print(f"far-above limits: {stats.api_calls} Prefect API calls for {stats.permits} requests")
    assert stats.permits == len(done) == 300
    assert stats.api_calls / stats.permits <= 0.3


@pytest.mark.server
def test_an_endpoint_without_headers_is_probed_once_per_server(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.default_latency = 0.3  # no enforce(): answers carry no x-ratelimit headers
    run, api_key = tag(), f"sk-{uuid.uuid4().hex}"
    for process in ("first", "second"):
        code, out, err = finish(
            _run_map(prefect_server, fake_openai, tmp_path, f"{run}{process}", api_key, 8, process)
        )
        assert code == 0, err[-3000:]
        assert _completed(out) == 8
    first, second = (
        sorted(fake_openai.requests(f"{run}{process}"), key=lambda r: r.arrived)
        for process in ("first", "second")
    )
    # the first process's first request went alone: the next arrived once it was answered
    assert first[0].finished is not None and first[1].arrived >= first[0].finished
    # the second process knew there is nothing to learn: its requests went together
    assert second[0].finished is not None and second[1].arrived < second[0].finished
    name = learned_name(endpoint_key(fake_openai.base_url, api_key))
    with get_client(sync_client=True) as client:
        kept = client.read_variable_by_name(name)
    assert kept is not None and kept.value == {"headers": False}
