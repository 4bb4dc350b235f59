"""Dry runs and budgets (issue 24) against the fake OpenAI server and a real Prefect server.

Words in these corpora are three letters and a space, so the estimate (characters / 4) and
the fake's count (words) agree closely; the agents' ``max_tokens`` is above the fake's echo,
so every answer spends less than its estimate and a budget is never passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fakeopenai import FakeOpenAI
from tests.map_helpers import read_jsonl, tag, write_corpus

ROOT = Path(__file__).resolve().parent.parent
MAX_TOKENS = 100
WORDS = ("abc", "def", "ghi", "jkl", "mno", "pqr", "stu", "vwx")


def text(run: str, n: int, words: int = 60) -> str:
    """An item's text: the run's tag, the item's number, then three-letter words."""
    return f"{run} n{n:03d} " + " ".join(WORDS[(n + i) % len(WORDS)] for i in range(words))


def agents_file(path: Path, **prices: float) -> Path:
    """An agents file with ``summ``: a short system prompt of three-letter words."""
    profile: dict[str, Any] = {
        "system_prompt": "say the new one now for all",
        "max_tokens": MAX_TOKENS,
        **prices,
    }
    path.write_text(json.dumps({"summ": profile}), encoding="utf-8")
    return path


def fanout(
    prefect_server: Any, fake: FakeOpenAI, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``fanout ARGS`` against the fake server and the session's Prefect server."""
    environment = prefect_server.env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test")
    environment.pop("FANOUT_MODEL", None)
    environment.update(env or {})
    command = [sys.executable, "-m", "prefect_fanout.cli", *args]
    return subprocess.run(
        command, env=environment, capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def map_args(source: Path, out: Path, agents: Path, *extra: str) -> list[str]:
    return [
        "map",
        str(source),
        "--agent",
        "summ",
        "--agents",
        str(agents),
        "--partition",
        "count:3",
        "--output",
        str(out),
        "--max-workers",
        "4",
        *extra,
    ]


def reported_tokens(fake: FakeOpenAI, run: str) -> int:
    return sum(r.tokens or 0 for r in fake.requests(run))


def reported_prompt_tokens(fake: FakeOpenAI, run: str) -> int:
    total = 0
    for record in fake.requests(run):
        words = sum(len(str(m.get("content", "")).split()) for m in record.body["messages"])
        total += words
    return total


@pytest.mark.server
def test_map_dry_run_asks_nothing_and_counts_what_the_run_asks(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(
        tmp_path / "in.jsonl", [{"id": f"i{n}", "text": text(run, n)} for n in range(12)]
    )
    agents = agents_file(tmp_path / "agents.json")
    out = tmp_path / "out"
    dry = fanout(prefect_server, fake_openai, *map_args(source, out, agents, "--dry-run", "--json"))
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert fake_openai.count(run) == 0  # not a single request
    report = json.loads(dry.stdout)
    assert (report["calls"], report["cached"], report["to_ask"]) == (12, 0, 12)
    assert [g["key"] for g in report["groups"]] == ["0000", "0001", "0002"]
    assert sum(g["to_ask"] for g in report["groups"]) == 12
    assert report["output_tokens_max"] == 12 * MAX_TOKENS
    assert report["usd_low"] is None  # the fake is not OpenAI: no price
    assert not (out / "final.jsonl").exists() and not (out / "summary.json").exists()

    done = fanout(prefect_server, fake_openai, *map_args(source, out, agents))
    assert done.returncode == 0, done.stderr[-3000:]
    assert fake_openai.count(run) == report["to_ask"]  # exact for calls
    prompt = reported_prompt_tokens(fake_openai, run)
    assert abs(report["input_tokens"] - prompt) <= 0.2 * prompt  # within 20%

    again = fanout(prefect_server, fake_openai, *map_args(source, out, agents, "--dry-run"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "calls: 12 in all, 12 cached, 0 to ask" in again.stdout
    assert fake_openai.count(run) == 12


@pytest.mark.server
def test_a_map_stops_at_its_token_budget_and_a_rerun_asks_only_the_rest(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    items = [{"id": f"i{n}", "text": text(run, n)} for n in range(30)]
    source = write_corpus(tmp_path / "in.jsonl", items)
    agents = agents_file(tmp_path / "agents.json")
    out = tmp_path / "out"
    dry = fanout(prefect_server, fake_openai, *map_args(source, out, agents, "--dry-run", "--json"))
    estimate = json.loads(dry.stdout)
    per_call = (estimate["input_tokens"] + estimate["output_tokens_max"]) / 30
    budget = int(per_call * 10)  # about ten calls at their estimate

    stopped = fanout(
        prefect_server,
        fake_openai,
        *map_args(source, out, agents, "--budget-tokens", str(budget)),
    )
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    summary = json.loads(stopped.stdout)
    asked = fake_openai.count(run)
    assert 10 <= asked < 30
    assert summary["completed"] == asked and summary["skipped"] == 30 - asked
    assert summary["failed"] == 0
    spent = summary["budget"]["spent_tokens"]
    assert spent == reported_tokens(fake_openai, run)  # what the ledger counts
    usage = summary["usage"]["map"]
    assert spent == usage["prompt_tokens"] + usage["completion_tokens"]
    assert spent <= budget  # no answer spent more than its estimate: never past the budget
    assert spent + (estimate["input_tokens"] / 30 + MAX_TOKENS) * 1.1 > budget  # stopped late
    assert summary["budget"]["tokens"] == budget
    assert summary["budget"]["left_tokens"] == budget - spent
    assert summary["budget"]["reached"] is True
    message = f"budget of {budget} tokens reached after {asked} of 30 calls"
    assert summary["budget"]["message"] == message
    assert message in stopped.stderr
    rows = read_jsonl(out / "final.jsonl")
    assert [r["id"] for r in rows] == [i["id"] for i in items]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 30 - asked
    assert all(r["error"].startswith("budget: budget of") for r in skipped)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert _flow_run_state(prefect_server, summary["flow_run_id"]) == (
        "CANCELLED",
        "BudgetReached",
        message,
    )

    rerun = fanout(
        prefect_server,
        fake_openai,
        *map_args(source, out, agents, "--budget-tokens", str(budget * 10)),
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert fake_openai.count(run) == 30  # exactly the skipped ones were asked
    assert json.loads(rerun.stdout)["cached"] == asked


@pytest.mark.server
def test_a_budget_below_the_first_call_is_exit_2_before_any_call(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(tmp_path / "in.jsonl", [{"id": "a", "text": text(run, 1)}])
    agents = agents_file(tmp_path / "agents.json")
    out = tmp_path / "out"
    done = fanout(
        prefect_server, fake_openai, *map_args(source, out, agents, "--budget-tokens", "50")
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "--budget-tokens 50 is below what the first call needs" in done.stderr
    assert fake_openai.count(run) == 0


def _flow_run_state(prefect_server: Any, flow_run_id: str) -> tuple[str, str, str]:
    import httpx

    found = httpx.get(f"{prefect_server.api_url}/flow_runs/{flow_run_id}", timeout=10).json()
    state = found["state"]
    return state["type"], state["name"], state["message"]
