"""Batch mode against the test server's Batch API: answers, failures, durability, cost, limits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_fanout import AgentProfile, RunOptions
from prefect_fanout.batch.lines import request_line, write_input_files
from prefect_fanout.cli import main
from prefect_fanout.flows import map_corpus
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.mapping.job import prepare_map
from prefect_fanout.mapping.spec import MapSpec
from tests.fakebatch import Outcome, token_estimate
from tests.fakeopenai import Error, FakeOpenAI, Reply
from tests.map_helpers import read_jsonl, tag, write_corpus

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 120.0


def _endpoint(fake: FakeOpenAI) -> LLMEndpoint:
    return LLMEndpoint(base_url=fake.base_url, api_key="sk-test")


def _options(fake: FakeOpenAI, **fields: Any) -> RunOptions:
    base: dict[str, Any] = {
        "endpoint": _endpoint(fake),
        "model": "gpt-4o-mini",
        "batch": True,
        "batch_poll_seconds": 0.1,
        "max_workers": 8,
    }
    return RunOptions(**{**base, **fields})


def _items(run: str, count: int) -> list[dict[str, Any]]:
    return [{"id": f"{run}-{n}", "text": f"{run} item-{n}."} for n in range(count)]


def _answered_once(fake: FakeOpenAI, run: str, count: int) -> None:
    """Every item got exactly one successful answer: from its batch line or online."""
    for n in range(count):
        prompt = f"{run} item-{n}."
        batch_ok = sum(
            1
            for line in fake.batches.lines
            if prompt in line.conversation and line.status_code == 200
        )
        online_ok = sum(1 for r in fake.requests(prompt) if r.tokens is not None)
        assert batch_ok + online_ok == 1, (prompt, batch_ok, online_ok)


@pytest.mark.server
def test_a_map_of_200_through_batches_with_failing_lines_and_an_expired_batch(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    fake_openai.batches.completion_seconds = 0.5
    fake_openai.batches.script(Outcome("completed"), Outcome("expired", answered=70))
    for n in (5, 17, 42):  # three lines of the first batch fail there
        fake_openai.script(f"{run} item-{n}.", Error(500, "the batch worker broke"))
    out = tmp_path / "out"
    options = _options(fake_openai, batch_max_requests=100)
    summary = map_corpus(
        _items(run, 200), agent="default", partition="count:4", output_dir=out, options=options
    )

    assert (summary.total, summary.completed, summary.failed) == (200, 200, 0), summary
    report = summary.batch
    assert report is not None
    assert (report.created, report.sent, report.answered, report.online) == (2, 200, 167, 33)
    assert [row.status for row in report.batches] == ["completed", "expired"]
    assert fake_openai.batches.created == 2
    assert fake_openai.batches.line_count(run) == 170  # 100 + the 70 the expired batch ran
    assert fake_openai.count(run) == 33  # 3 failed lines + 30 expired, online once each
    _answered_once(fake_openai, run, 200)
    ledger = json.loads((out / "batches" / "batches.json").read_text())
    assert [e["collected"] for e in ledger["batches"]] == [True, True]
    assert all(e["batch_id"] for e in ledger["batches"])
    rows = {r["id"]: r for r in read_jsonl(out / "final.jsonl")}
    assert rows[f"{run}-0"]["output"] == f"echo: {run} item-0."

    # A rerun sends nothing: every answer is stored where the online call would look.
    again = map_corpus(
        _items(run, 200), agent="default", partition="count:4", output_dir=out, options=options
    )
    assert (again.cached, again.completed) == (200, 200)
    assert again.batch is not None and (again.batch.created, again.batch.sent) == (0, 0)
    assert fake_openai.batches.created == 2 and fake_openai.count(run) == 33

    # ... and so does the same map online: one cache.
    online = map_corpus(
        _items(run, 200),
        agent="default",
        partition="count:4",
        output_dir=tmp_path / "online",
        options=RunOptions(endpoint=_endpoint(fake_openai), model="gpt-4o-mini"),
    )
    assert online.cached == 200 and fake_openai.count(run) == 33


@pytest.mark.server
def test_an_online_map_then_batch_sends_no_batch(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    items = _items(run, 12)
    online = RunOptions(endpoint=_endpoint(fake_openai), model="gpt-4o-mini")
    map_corpus(
        items, agent="default", partition="count:2", output_dir=tmp_path / "a", options=online
    )
    assert fake_openai.count(run) == 12
    summary = map_corpus(
        items,
        agent="default",
        partition="count:2",
        output_dir=tmp_path / "b",
        options=_options(fake_openai),
    )
    assert summary.cached == 12 and fake_openai.batches.created == 0


@pytest.mark.server
def test_batch_answers_are_validated_and_priced_at_half(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    agent = AgentProfile(
        name="extract",
        output_schema={
            "type": "object",
            "properties": {"topic": {"type": "string"}},
            "required": ["topic"],
        },
        input_price_per_million=2.0,
        output_price_per_million=8.0,
    )
    fake_openai.batches.completion_seconds = 0.3
    # the batch's answer for item 1 is not JSON: it is re-asked online with the error
    fake_openai.script(f"{run} item-1.", Reply("not json at all"), Reply('{"topic": "fixed"}'))
    summary = map_corpus(
        _items(run, 6),
        agent=agent,
        partition="count:1",
        output_dir=tmp_path / "out",
        options=_options(fake_openai),
    )
    assert summary.completed == 6, summary
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "final.jsonl")}
    assert rows[f"{run}-1"]["output"] == {"topic": "fixed"}
    assert fake_openai.count(f"{run} item-1.") == 1  # the re-ask, online
    report = summary.batch
    assert report is not None and report.answered == 6
    assert report.cost_usd is not None and report.online_cost_usd is not None
    # valid answers cost half; item 1 paid half for its batch answer, full for the re-ask
    assert report.cost_usd < report.online_cost_usd
    lines = [line for line in fake_openai.batches.lines if run in line.conversation]
    assert len(lines) == 6


def _tokens_of_ten(fake: FakeOpenAI, run: str, tmp_path: Path) -> int:
    """What the test server counts for a batch of the first ten items."""
    spec = MapSpec(
        input="ten items", agent="default", partition="count:1", output_dir=str(tmp_path / "p")
    )
    job = prepare_map(spec, _options(fake), items=_items(run, 10))
    return sum(token_estimate(request_line(r)["body"]) for r in job.requests.values())


@pytest.mark.server
def test_a_rejected_batch_is_sent_again_once_another_ended(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    # long enough that the second batch is always created while the first is in flight,
    # even on a loaded machine (at 0.5 s the first could end before the second was sent)
    fake_openai.batches.completion_seconds = 3.0
    # one batch of 10 items fits, two do not
    fake_openai.batches.enqueued_token_limit = int(_tokens_of_ten(fake_openai, run, tmp_path) * 1.5)
    options = _options(fake_openai, batch_max_requests=10)
    summary = map_corpus(
        _items(run, 20),
        agent="default",
        partition="count:1",
        output_dir=tmp_path / "o",
        options=options,
    )
    assert summary.completed == 20
    report = summary.batch
    assert report is not None and report.resubmitted >= 1 and report.answered == 20
    assert fake_openai.count(run) == 0  # nothing had to go online
    _answered_once(fake_openai, run, 20)


@pytest.mark.server
def test_batch_max_tokens_queues_batches_instead_of_being_rejected(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    fake_openai.batches.completion_seconds = 0.3
    ten = _tokens_of_ten(fake_openai, run, tmp_path)
    fake_openai.batches.enqueued_token_limit = int(ten * 1.5)
    options = _options(fake_openai, batch_max_tokens=int(ten * 1.2))
    summary = map_corpus(
        _items(run, 20),
        agent="default",
        partition="count:1",
        output_dir=tmp_path / "o",
        options=options,
    )
    report = summary.batch
    assert report is not None and report.answered == 20
    assert report.resubmitted == 0 and report.created == fake_openai.batches.created >= 2


def test_60000_calls_are_split_into_two_files(tmp_path: Path) -> None:
    requests = (
        CallRequest(
            agent="a",
            base_url="https://api.openai.com/v1",
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"item {n}"}],
        )
        for n in range(60_000)
    )
    files = write_input_files(requests, tmp_path)
    assert [len(f.keys) for f in files] == [50_000, 10_000]
    first = json.loads(files[0].path.open().readline())
    assert first["method"] == "POST" and first["url"] == "/v1/chat/completions"
    assert first["custom_id"].startswith("fanout-") and first["body"]["model"] == "gpt-4o-mini"


def test_files_are_split_by_bytes_and_tokens(tmp_path: Path) -> None:
    def requests() -> Any:
        for n in range(10):
            yield CallRequest(
                agent="a",
                base_url="https://api.openai.com/v1",
                model="m",
                messages=[{"role": "user", "content": f"{n} " + "x" * 400}],
            )

    by_bytes = write_input_files(requests(), tmp_path / "b", max_bytes=1500)
    assert len(by_bytes) == 5 and all(f.size <= 1500 for f in by_bytes)
    by_tokens = write_input_files(requests(), tmp_path / "t", max_tokens=350)
    assert [len(f.keys) for f in by_tokens] == [3, 3, 3, 1]


def _cli(prefect_server: Any, fake: FakeOpenAI, *args: str) -> list[str]:
    env = prefect_server.env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test")
    env.pop("FANOUT_MODEL", None)
    return [sys.executable, "-m", "prefect_fanout.cli", "map", *args], env  # type: ignore[return-value]


def _map_args(source: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(source),
        "--agent",
        "default",
        "--partition",
        "count:2",
        "--output",
        str(out),
        "--batch",
        "--batch-poll-seconds",
        "0.1",
        *extra,
    ]


@pytest.mark.server
def test_a_run_killed_while_its_batch_is_in_flight_resumes_it(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(tmp_path / "in.jsonl", _items(run, 30))
    out = tmp_path / "out"
    fake_openai.batches.completion_seconds = 3600  # in flight until the test says otherwise
    command, env = _cli(prefect_server, fake_openai, *_map_args(source, out))
    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    ledger = out / "batches" / "batches.json"
    deadline = time.monotonic() + DEADLINE

    def recorded() -> bool:
        if not ledger.is_file():
            return False
        entries = json.loads(ledger.read_text())["batches"]
        return bool(entries) and all(e.get("batch_id") for e in entries)

    while not recorded():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no batch was recorded"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert fake_openai.batches.created == 1
    fake_openai.batches.completion_seconds = 0.5  # the provider finishes it
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert fake_openai.batches.created == 1  # waited for, not paid twice
    assert summary["batch"]["resumed"] == 1 and summary["batch"]["created"] == 0
    assert summary["completed"] == 30 and fake_openai.count(run) == 0
    _answered_once(fake_openai, run, 30)


@pytest.mark.server
def test_no_batch_wait_submits_records_and_exits_then_the_next_run_collects(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(tmp_path / "in.jsonl", _items(run, 10))
    out = tmp_path / "out"
    fake_openai.batches.completion_seconds = 3600
    command, env = _cli(prefect_server, fake_openai, *_map_args(source, out, "--no-batch-wait"))
    first = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["batch"]["pending"] == 10 and summary["batch"]["created"] == 1
    assert "rerun the same command" in first.stderr
    assert not (out / "final.jsonl").exists()
    second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert json.loads(second.stdout)["batch"]["pending"] == 10  # still in flight: nothing new
    assert fake_openai.batches.created == 1
    fake_openai.batches.completion_seconds = 0.2
    command, env = _cli(prefect_server, fake_openai, *_map_args(source, out))
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    assert summary["completed"] == 10 and summary["batch"]["answered"] == 10
    assert fake_openai.batches.created == 1 and fake_openai.count(run) == 0


def test_batch_with_the_test_model_exits_2_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_corpus(tmp_path / "in.jsonl", _items(tag(), 3))
    args = ["map", str(source), "--agent", "default", "--partition", "count:1"]
    code = main([*args, "--output", str(tmp_path / "o"), "--model", "test", "--batch"])
    assert code == 2
    assert "offline 'test' model" in capsys.readouterr().err


def test_a_server_without_a_batch_api_exits_2_naming_it(
    fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    fake_openai.batches.enabled = False
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    source = write_corpus(tmp_path / "in.jsonl", _items(tag(), 3))
    args = ["map", str(source), "--agent", "default", "--partition", "count:1"]
    assert main([*args, "--output", str(tmp_path / "o"), "--batch"]) == 2
    err = capsys.readouterr().err
    assert fake_openai.base_url in err and "404" in err and "without --batch" in err
    assert not fake_openai.batches.files  # nothing uploaded


def test_batch_options_without_batch_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_corpus(tmp_path / "in.jsonl", _items(tag(), 3))
    args = ["map", str(source), "--agent", "default", "--partition", "count:1", "--model", "test"]
    assert main([*args, "--output", str(tmp_path / "o"), "--batch-max-tokens", "100"]) == 2
    assert "only with --batch" in capsys.readouterr().err


@pytest.mark.server
def test_fan_out_takes_batch_too(prefect_server: Any, fake_openai: FakeOpenAI) -> None:
    from prefect_fanout import fan_out

    run = tag()
    fake_openai.batches.completion_seconds = 0.3
    fake_openai.script(f"{run} item-2.", Error(400, "refused in the batch"))
    items = [f"{run} item-{n}." for n in range(5)]
    result = fan_out(items, options=_options(fake_openai))
    assert result.output == [f"echo: {item}" for item in items]
    assert result.details["batch"]["answered"] == 4 and result.details["batch"]["online"] == 1
    assert fake_openai.batches.created == 1 and fake_openai.count(run) == 1
    again = fan_out(items, options=_options(fake_openai))  # rerun: all cached, nothing sent
    assert again.output == result.output
    assert fake_openai.batches.created == 1 and fake_openai.count(run) == 1


@pytest.mark.server
def test_a_cancelled_and_a_failed_batch_leave_nothing_unanswered(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    fake_openai.batches.completion_seconds = 0.3
    failed = Outcome(
        "failed", errors=[{"code": "invalid_request", "message": "bad file", "line": 1}]
    )
    fake_openai.batches.script(Outcome("cancelled", answered=3), failed)
    options = _options(fake_openai, batch_max_requests=8)
    summary = map_corpus(
        _items(run, 16),
        agent="default",
        partition="count:2",
        output_dir=tmp_path / "o",
        options=options,
    )
    assert summary.completed == 16
    report = summary.batch
    assert report is not None
    assert sorted(row.status for row in report.batches) == ["cancelled", "failed"]
    assert (report.answered, report.online) == (3, 13)
    assert fake_openai.count(run) == 13
    _answered_once(fake_openai, run, 16)
