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
from tests.map_helpers import endpoint_for, read_jsonl, tag, write_corpus

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

    artifacts = _artifacts(prefect_server, summary["flow_run_id"])
    markdown = "".join(a["data"] for a in artifacts if a["type"] == "markdown")
    assert f"**Budget:** budget: {spent} of {budget} tokens - reached" in markdown
    assert f"**Budget left:** {budget - spent} tokens" in markdown
    progress = [a for a in artifacts if a["type"] == "progress"]
    assert progress and f"spent {spent} of {budget} tokens, reached" in progress[0]["description"]

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


def _artifacts(prefect_server: Any, flow_run_id: str) -> list[dict[str, Any]]:
    import httpx

    body = {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    found = httpx.post(f"{prefect_server.api_url}/artifacts/filter", json=body, timeout=10)
    found.raise_for_status()
    return list(found.json())


def _flow_run_state(prefect_server: Any, flow_run_id: str) -> tuple[str, str, str]:
    import httpx

    found = httpx.get(f"{prefect_server.api_url}/flow_runs/{flow_run_id}", timeout=10).json()
    state = found["state"]
    return state["type"], state["name"], state["message"]


def plan_file(path: Path, run: str, **config: Any) -> Path:
    """A plan of 10 independent tasks and 4 dependants (each on two of them)."""
    tasks: list[dict[str, Any]] = [
        {"task_id": f"t{n}", "agent": "summ", "description": text(run, n), "dependencies": []}
        for n in range(10)
    ]
    tasks += [
        {
            "task_id": f"d{n}",
            "agent": "summ",
            "description": text(run, 100 + n, 20),
            "dependencies": [f"t{2 * n}", f"t{2 * n + 1}"],
        }
        for n in range(4)
    ]
    agents = {"summ": {"system_prompt": "say the new one now for all", "max_tokens": MAX_TOKENS}}
    plan = {"tasks": tasks, "agents": agents, "config": {"max_workers": 3, **config}}
    path.write_text(json.dumps(plan), encoding="utf-8")
    return path


@pytest.mark.server
def test_a_dispatch_stops_at_its_budget_and_a_rerun_asks_only_the_skipped_tasks(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    plan = plan_file(tmp_path / "plan.json", run)
    dry = fanout(prefect_server, fake_openai, "dispatch", str(plan), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert fake_openai.count(run) == 0
    estimate = json.loads(dry.stdout)
    assert (estimate["calls"], estimate["cached"], estimate["to_ask"]) == (14, 0, 14)
    assert [g["key"] for g in estimate["groups"]] == ["level 0", "level 1"]
    assert estimate["groups"][1]["from_template"] == 4  # dependants: prompts not known yet
    assert any("template" in note for note in estimate["notes"])
    per_call = (estimate["input_tokens"] + estimate["output_tokens_max"]) / 14
    budget = int(per_call * 5)

    # The budget from the plan's config, the way a plan carries it.
    budgeted = plan_file(tmp_path / "budgeted.json", run, budget_tokens=budget)
    stopped = fanout(prefect_server, fake_openai, "dispatch", str(budgeted))
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    result = json.loads(stopped.stdout)
    asked = fake_openai.count(run)
    assert 5 <= asked < 14
    skipped = [t for t in result["tasks"] if t["status"] == "skipped"]
    assert len(skipped) == 14 - asked
    assert all(t["error"].startswith("skipped: budget: budget of") for t in skipped)
    assert result["summary"]["failed"] == 0
    spent = result["budget"]["spent_tokens"]
    assert spent == reported_tokens(fake_openai, run) <= budget
    assert spent == result["usage"]["prompt_tokens"] + result["usage"]["completion_tokens"]
    message = f"budget of {budget} tokens reached after {asked} of 14 calls"
    assert result["budget"]["message"] == message and message in stopped.stderr
    assert _flow_run_state(prefect_server, result["flow_run_id"])[:2] == (
        "CANCELLED",
        "BudgetReached",
    )

    # The dry run now knows what the rerun will ask; the flag raises the plan's budget.
    again = fanout(prefect_server, fake_openai, "dispatch", str(budgeted), "--dry-run", "--json")
    counted = json.loads(again.stdout)
    assert counted["cached"] == asked
    rerun = fanout(
        prefect_server, fake_openai, "dispatch", str(budgeted), "--budget-tokens", str(budget * 10)
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert fake_openai.count(run) == 14  # exactly the skipped tasks were asked
    assert fake_openai.count(run) - asked == counted["to_ask"]


@pytest.mark.server
def test_a_dollar_budget_with_priced_agents(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    items = [{"id": f"i{n}", "text": text(run, n)} for n in range(20)]
    source = write_corpus(tmp_path / "in.jsonl", items)
    prices = {"input_price_per_million": 1000.0, "output_price_per_million": 2000.0}
    agents = agents_file(tmp_path / "agents.json", **prices)
    out = tmp_path / "out"
    dry = fanout(prefect_server, fake_openai, *map_args(source, out, agents, "--dry-run", "--json"))
    estimate = json.loads(dry.stdout)
    assert 0 < estimate["usd_low"] < estimate["usd_high"]
    assert estimate["usd_high"] == pytest.approx(
        (estimate["input_tokens"] * 1000 + estimate["output_tokens_max"] * 2000) / 1e6
    )
    budget = round(estimate["usd_high"] / 20 * 6, 4)  # about six calls at their highest cost

    stopped = fanout(
        prefect_server, fake_openai, *map_args(source, out, agents, "--budget-usd", str(budget))
    )
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    summary = json.loads(stopped.stdout)
    asked = fake_openai.count(run)
    assert 6 <= asked < 20 and summary["skipped"] == 20 - asked
    assert summary["budget"]["spent_usd"] == pytest.approx(summary["cost_usd"])
    assert summary["budget"]["spent_usd"] <= budget
    assert f"budget of ${budget:g} reached after {asked} of 20 calls" in stopped.stderr

    unpriced = agents_file(tmp_path / "unpriced.json")
    refused = fanout(
        prefect_server, fake_openai, *map_args(source, out, unpriced, "--budget-usd", "1")
    )
    assert refused.returncode == 2 and "needs a price for model" in refused.stderr


@pytest.mark.server
def test_two_processes_sharing_a_named_budget_stop_together_within_it(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    import httpx

    run = tag()
    fake_openai.default_latency = 0.3  # the two runs usually overlap (not relied upon)
    agents = agents_file(tmp_path / "agents.json")
    halves = []
    for half in range(2):
        items = [{"id": f"h{half}-{n}", "text": text(run, 15 * half + n)} for n in range(15)]
        halves.append(write_corpus(tmp_path / f"half{half}.jsonl", items))
    per_call = (text(run, 0).count(" ") + 1 + 7 + 2 * 4) + MAX_TOKENS  # about one estimate
    # Five estimates: less than either half's 15 prompts alone, so each run must stop even
    # when the other has not started yet (the answers are short but the prompts are not).
    budget = per_call * 5
    name = f"shared-{run}"
    environment = prefect_server.env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-t")
    environment.pop("FANOUT_MODEL", None)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect_fanout.cli",
                *map_args(halves[h], tmp_path / f"out{h}", agents),
                "--budget-tokens",
                str(budget),
                "--budget-name",
                name,
            ],
            env=environment,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for h in range(2)
    ]
    finished = [process.communicate(timeout=300) for process in processes]
    codes = [process.returncode for process in processes]
    assert codes == [3, 3], [err[-2000:] for _, err in finished]
    summaries = [json.loads(out) for out, _ in finished]
    spent = [summary["budget"]["spent_tokens"] for summary in summaries]
    asked = fake_openai.count(run)
    assert sum(s["completed"] for s in summaries) == asked < 30
    # Both stop (exit 3 above): the later one at once if the earlier spent it all.
    assert sum(spent) == reported_tokens(fake_openai, run)
    assert sum(spent) <= budget  # never past it: every answer spent less than its estimate
    limit = httpx.get(
        f"{prefect_server.api_url}/v2/concurrency_limits/fanout-budget:{name}:tokens", timeout=10
    ).json()
    assert limit["limit"] == budget and limit["slot_decay_per_second"] == 0
    assert limit["active_slots"] == sum(spent), (limit, budget, spent)  # no reservation left
    assert all(s["budget"]["name"] == name for s in summaries)
    # Each run reports what was left when it ended; the other may still have been spending
    # then, so only the server's counter above is exact.
    assert all(
        0 <= s["budget"]["left_tokens"] <= budget - sum(spent) + max(spent) for s in summaries
    )


@pytest.mark.server
def test_a_pattern_stops_at_its_budget(
    prefect_server: Any, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pydantic import SecretStr

    from prefect_fanout import AgentProfile, LLMEndpoint, RunOptions, fan_out
    from prefect_fanout.patterns.engine import pattern_result_of

    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    run = tag()
    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr("sk-test"))
    agent = AgentProfile(name="summ", system_prompt="say the new one now for all")
    items = [text(run, n) for n in range(12)]
    per_call = 62 + 7 + 8 + MAX_TOKENS + 2  # about one call's estimate
    options = RunOptions(
        endpoint=endpoint, max_workers=2, max_tokens=MAX_TOKENS, budget_tokens=per_call * 4
    )
    state = fan_out(items, agent=agent, options=options, return_state=True)
    result = pattern_result_of(state)
    asked = fake_openai.count(run)
    assert 4 <= asked < 12
    assert (state.type.value, state.name) == ("CANCELLED", "BudgetReached")
    budget = result.details["budget"]
    assert budget["reached"] and budget["spent_tokens"] <= per_call * 4
    assert budget["spent_tokens"] == reported_tokens(fake_openai, run)
    skipped = [call for call in result.calls if call.status == "skipped"]
    assert len(skipped) == 12 - asked and all(c.error.startswith("budget: ") for c in skipped)
    assert state.message == f"budget of {per_call * 4} tokens reached after {asked} of 12 calls"


def _pattern_options(fake: FakeOpenAI, **extra: Any) -> Any:
    from prefect_fanout import RunOptions

    endpoint = endpoint_for(fake)
    return RunOptions(endpoint=endpoint, max_workers=3, max_tokens=MAX_TOKENS, **extra)


@pytest.mark.server
def test_a_pattern_dry_run_asks_nothing_and_counts_what_the_run_asks(
    prefect_server: Any, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_fanout import AgentProfile, fan_out, pipeline
    from prefect_fanout.budget.dryrun import DryRun

    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    run = tag()
    agent = AgentProfile(name="summ", system_prompt="say the new one now for all")
    items = [text(run, n) for n in range(6)]
    dry = fan_out(items, agent=agent, options=_pattern_options(fake_openai, dry_run=True))
    assert isinstance(dry, DryRun) and dry.kind == "pattern"
    assert fake_openai.count(run) == 0  # not a single request
    assert (dry.calls, dry.cached, dry.to_ask) == (6, 0, 6)
    assert dry.output_tokens_max == 6 * MAX_TOKENS
    assert [g.key for g in dry.groups] == ["fan-out"]

    fan_out(items, agent=agent, options=_pattern_options(fake_openai))
    assert fake_openai.count(run) == dry.to_ask  # exact for calls
    prompt = reported_prompt_tokens(fake_openai, run)
    assert abs(dry.input_tokens - prompt) <= 0.2 * prompt  # within 20%
    again = fan_out(items, agent=agent, options=_pattern_options(fake_openai, dry_run=True))
    assert (again.calls, again.cached, again.to_ask) == (6, 6, 0)

    # A pipeline's second stage cannot be known before its first stage is answered.
    stages = [agent, [AgentProfile(name="a", system_prompt="one"), "default"]]
    item = text(run, 99)
    first = pipeline(item, stages, options=_pattern_options(fake_openai, dry_run=True))
    assert (first.calls, first.to_ask, first.from_template) == (3, 3, 2)
    assert [g.key for g in first.groups] == ["pipeline:stage-1", "pipeline:stage-2"]
    assert any("not known before the run" in note for note in first.notes)
    assert fake_openai.count(run) == 6
    pipeline(item, stages, options=_pattern_options(fake_openai))
    assert fake_openai.count(run) == 6 + first.to_ask
    known = pipeline(item, stages, options=_pattern_options(fake_openai, dry_run=True))
    assert (known.calls, known.cached, known.to_ask, known.from_template) == (3, 3, 0, 0)


@pytest.mark.server
def test_call_agent_keeps_to_a_named_budget(
    prefect_server: Any, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_fanout import AgentProfile, call_agent
    from prefect_fanout.errors import BudgetExhausted, ConfigurationError

    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    run = tag()
    agent = AgentProfile(name="summ", system_prompt="say the new one now for all")
    per_call = 62 + 7 + 8 + MAX_TOKENS + 2  # about one call's estimate
    with pytest.raises(ConfigurationError, match="below what the first call needs"):
        call_agent(
            text(run, 0), agent=agent, options=_pattern_options(fake_openai, budget_tokens=50)
        )
    assert fake_openai.count(run) == 0

    options = _pattern_options(
        fake_openai, budget_tokens=per_call * 3, budget_name=f"single-{run}", cache="off"
    )
    answered = 0
    with pytest.raises(BudgetExhausted, match=f"of {per_call * 3} tokens reached"):
        for n in range(10):  # a loop of single calls stops when the shared budget is spent
            call_agent(text(run, n), agent=agent, options=options)
            answered += 1
    assert 2 <= answered < 10 and fake_openai.count(run) == answered
    assert reported_tokens(fake_openai, run) <= per_call * 3


@pytest.mark.server
def test_classifier_calls_the_budget_refuses_are_skipped_not_failed(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(
        tmp_path / "in.jsonl", [{"id": f"i{n}", "text": text(run, n)} for n in range(12)]
    )
    agents = agents_file(tmp_path / "agents.json")
    profiles = json.loads(agents.read_text(encoding="utf-8"))
    profiles["sorter"] = {"prompt_template": "Classify: {input}", "max_tokens": MAX_TOKENS}
    agents.write_text(json.dumps(profiles), encoding="utf-8")
    per_call = (text(run, 0).count(" ") + 1 + 7 + 2 * 4) + MAX_TOKENS
    args = map_args(source, tmp_path / "out", agents, "--budget-tokens", str(per_call * 4))
    args[args.index("count:3")] = "topic:agent=sorter"
    stopped = fanout(prefect_server, fake_openai, *args)
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    asked = fake_openai.count(run)
    assert asked < 12  # the classifier itself ran out of budget
    summary = json.loads(stopped.stdout)
    assert summary["failed"] == 0, summary
    assert summary["usage"]["classify"]["failed"] == 0
    assert summary["usage"]["classify"]["calls"] == asked
    assert summary["skipped"] == 12
    assert "failed, labelled" not in stopped.stderr  # no classifier failure logged


@pytest.mark.server
def test_a_tree_dry_run_counts_the_leaves_and_the_combine_from_its_template(
    prefect_server: Any, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_fanout import AgentProfile, tree

    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    run = tag()
    agent = AgentProfile(name="summ", system_prompt="say the new one now for all")
    report = tree(
        text(run, 0),
        split=lambda problem: [f"{problem} part {n}" for n in range(3)],
        solve=agent,
        combine=agent,
        max_depth=1,
        options=_pattern_options(fake_openai, dry_run=True),
    )
    assert fake_openai.count(run) == 0
    assert {g.key: (g.calls, g.from_template) for g in report.groups} == {
        "solve": (3, 0),
        "combine": (1, 1),
    }
