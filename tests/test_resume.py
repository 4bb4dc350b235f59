"""Resume: a rerun after a crash, a failed item or a dead letter redoes only what is missing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_fanout import map_corpus
from prefect_fanout.files import TEMP_SUFFIX
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.options import RunOptions, merge_options
from tests.fakeopenai import Error, FakeOpenAI
from tests.map_helpers import read_jsonl, tag, write_corpus
from tests.ui_helpers import PrefectAPI

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.server


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


def partition_states(server: Any, flow_run_id: str | None) -> dict[str, tuple[str, str]]:
    """The map's partitions' flow runs: name -> (state type, state name)."""
    assert flow_run_id is not None
    with PrefectAPI(server.api_url) as api:
        return {r["name"]: (r["state_type"], r["state_name"]) for r in api.child_runs(flow_run_id)}


def test_killed_run_resumes_with_only_the_calls_it_had_not_finished(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run, total, workers = tag(), 200, 4
    records = [{"id": f"{run}-{n:03d}", "text": f"{run} item-{n:03d}."} for n in range(total)]
    id_of = {r["text"]: r["id"] for r in records}
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "prefect_fanout.cli",
        "map",
        str(write_corpus(tmp_path / "in.jsonl", records)),
        "--agent",
        "default",
        "--partition",
        "count:4",
        "--output",
        str(out),
        "--max-workers",
        str(workers),
    ]
    env = prefect_server.env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test")
    env.pop("FANOUT_MODEL", None)
    fake_openai.default_latency = 0.05

    with (tmp_path / "first-run.log").open("w") as log:
        first_run = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: fake_openai.count(run) >= total // 2 or first_run.poll() is not None,
                timeout=180,
                what="half of the items to be requested",
            )
            assert first_run.poll() is None, "the first run ended before it could be killed"
            killed_at = time.monotonic()
            os.killpg(first_run.pid, signal.SIGKILL)
        finally:
            if first_run.poll() is None:
                os.killpg(first_run.pid, signal.SIGKILL)
            first_run.wait(timeout=30)
    wait_until(
        lambda: all(r.finished is not None for r in fake_openai.requests(run)),
        timeout=30,
        what="the killed run's requests to end",
    )
    first = [id_of[r.prompt] for r in fake_openai.requests(run)]
    answered = {id_of[r.prompt] for r in fake_openai.requests(run) if r.finished < killed_at}
    assert len(first) == len(set(first)) < total  # one request per item, and it was cut short

    second_run = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert second_run.returncode == 0, second_run.stderr[-3000:]
    second = [id_of[r.prompt] for r in fake_openai.requests(run)[len(first) :]]
    not_answered = {r["id"] for r in records} - answered
    in_flight_at_kill = set(second) - not_answered
    print(
        f"\n[kill and resume] first run: {len(first)} requests, {len(answered)} answered before "
        f"the kill; second run: {len(second)} requests, of which {len(in_flight_at_kill)} "
        "were answered but not yet stored when the process died"
    )
    assert len(second) == len(set(second))  # nothing asked twice
    assert not_answered <= set(second)  # everything unanswered is asked again...
    assert len(in_flight_at_kill) <= workers  # ...plus at most the calls in flight at the kill
    assert in_flight_at_kill <= answered

    summary = json.loads(second_run.stdout)
    assert (summary["total"], summary["completed"], summary["failed"]) == (total, total, 0)
    assert summary["cached"] == total - len(second)
    rows = read_jsonl(out / "final.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in records]  # each item once, in order
    assert all(r["status"] == "completed" for r in rows)
    assert all(r["output"] == f"echo: {rec['text']}" for r, rec in zip(rows, records, strict=True))
    partition_rows = [row for f in (out / "partitions").iterdir() for row in read_jsonl(f)]
    assert sorted(r["id"] for r in partition_rows) == [r["id"] for r in records]
    assert not [p for p in out.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def test_rerun_is_served_entirely_from_the_cache(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(24)]
    source = write_corpus(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    options: dict[str, Any] = {
        "agent": "default",
        "partition": "count:3",
        "output_dir": out,
        "reduce": "default",
        "reduce_budget": 60,
        "options": RunOptions(endpoint=LLMEndpoint(base_url=fake_openai.base_url, api_key="k")),
    }
    first = map_corpus(source, **options)
    assert first.ok and first.cached == 0 and first.reduce is not None
    requests_after_first = fake_openai.total
    final_after_first = (out / "final.jsonl").read_bytes()
    partitions_after_first = {p.name: p.read_bytes() for p in (out / "partitions").iterdir()}

    second = map_corpus(source, **options)
    assert fake_openai.total == requests_after_first  # zero new requests
    assert second.cached == second.total == 24
    assert second.usage["map"].cached == 24 and second.usage["map"].prompt_tokens == 0
    assert second.reduce is not None and second.reduce.cached == second.reduce.calls
    assert second.cost_usd == 0.0  # this run paid nothing
    assert (out / "final.jsonl").read_bytes() == final_after_first
    assert {p.name: p.read_bytes() for p in (out / "partitions").iterdir()} == (
        partitions_after_first
    )

    refresh = merge_options({"cache": "refresh"}, options["options"])
    third = map_corpus(source, **{**options, "options": refresh, "reduce": None})
    assert fake_openai.total == requests_after_first + 24  # --refresh asks again
    assert third.cached == 0
    assert not (out / "reduce.json").exists()  # no longer part of this run's outputs


def test_rerun_after_a_failed_item_asks_only_for_that_item(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} item-{n}."} for n in range(6)]
    source = write_corpus(tmp_path / "in.jsonl", records)
    options: dict[str, Any] = {
        "agent": "default",
        "partition": "count:2",
        "output_dir": tmp_path / "out",
        "options": RunOptions(endpoint=LLMEndpoint(base_url=fake_openai.base_url, api_key="k")),
    }
    fake_openai.script(f"{run} item-2.", Error(400, "bad luck"))
    first = map_corpus(source, **options)
    assert first.failed_ids == [f"{run}-2"] and not first.ok
    # The partitions' flow runs say so in the map's list of subflow runs.
    assert partition_states(prefect_server, first.flow_run_id) == {
        "partition 0000": ("COMPLETED", "Partial"),
        "partition 0001": ("COMPLETED", "Completed"),
    }
    before = fake_openai.total

    second = map_corpus(source, **options)  # the scripted error is used up
    assert second.ok and second.cached == 5
    assert [r.prompt for r in fake_openai.requests()[before:]] == [f"{run} item-2."]
    rows = read_jsonl(tmp_path / "out" / "final.jsonl")
    assert [r["status"] for r in rows] == ["completed"] * 6


def test_rerun_after_a_dead_lettered_partition_writes_it_from_the_cache(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(4)]
    source = write_corpus(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    blocker = out / "partitions" / "partition-0000.jsonl"
    blocker.mkdir(parents=True)
    options: dict[str, Any] = {
        "agent": "default",
        "partition": "count:2",
        "output_dir": out,
        "options": RunOptions(endpoint=LLMEndpoint(base_url=fake_openai.base_url, api_key="k")),
        "partition_retries": 1,
        "partition_retry_delay": 0.01,
    }
    first = map_corpus(source, **options)
    assert first.dead_letter_ids == [f"{run}-0", f"{run}-1"]
    assert len(read_jsonl(out / "dead_letters.jsonl")) == 2
    states = partition_states(prefect_server, first.flow_run_id)
    assert states == {
        "partition 0000": ("FAILED", "Failed"),
        "partition 0001": ("COMPLETED", "Completed"),
    }
    before = fake_openai.total

    shutil.rmtree(blocker)  # the manual fix
    second = map_corpus(source, **options)
    assert second.ok and second.dead_letter == 0 and second.cached == 4
    assert {
        state for state, _name in partition_states(prefect_server, second.flow_run_id).values()
    } == {"COMPLETED"}
    assert fake_openai.total == before  # the dead letters' answers were cached all along
    assert (out / "dead_letters.jsonl").read_text() == ""
    assert [r["id"] for r in read_jsonl(blocker)] == [f"{run}-0", f"{run}-1"]


@pytest.mark.server
def test_a_damaged_cache_entry_is_asked_again_once_rewritten_and_reported(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path, caplog: Any
) -> None:
    from prefect_fanout import build_request

    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(3)]
    source = write_corpus(tmp_path / "in.jsonl", records)
    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key="sk-test")
    options = {"agent": "default", "partition": "count:1", "output_dir": tmp_path / "out"}
    map_corpus(source, options=RunOptions(endpoint=endpoint), **options)
    assert fake_openai.count(run) == 3
    key = build_request(
        f"{run} 1", options=RunOptions(endpoint=endpoint), item_id=f"{run}-1"
    ).cache_key()
    (prefect_server.storage_path / key).write_bytes(b"\x00 not a record")
    with caplog.at_level("WARNING", logger="prefect_fanout.cache"):
        second = map_corpus(source, options=RunOptions(endpoint=endpoint), **options)
    assert fake_openai.count(run) == 4  # only the damaged one was asked again
    assert second.completed == 3 and second.cached == 2
    assert any(key in record.getMessage() for record in caplog.records)
    third = map_corpus(source, options=RunOptions(endpoint=endpoint), **options)
    assert fake_openai.count(run) == 4 and third.cached == 3  # the entry was rewritten
