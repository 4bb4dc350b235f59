"""The parallel-agent patterns (fan-out, fan-in, pipeline, tree) against the fake OpenAI server.

Every test uses its own uuid in prompts (the cache and both servers live for the
session). Overlap is shown from the arrival and finish times the fake server
records, never from sleeps or timings.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from prefect_fanout import (
    AgentProfile,
    FanoutError,
    LLMEndpoint,
    PatternResult,
    fan_in,
    fan_out,
    pattern_result_of,
    pipeline,
    tree,
)
from prefect_fanout.errors import PatternArgumentError
from prefect_fanout.options import RunOptions
from prefect_fanout.patterns.result import compute_metrics
from prefect_fanout.usage import CallRecord
from tests.fakeopenai import Error, FakeOpenAI, RecordedRequest, Reply
from tests.map_helpers import uid

pytestmark = pytest.mark.usefixtures("prefect_server")

LATENCY = 0.6


def tagged(name: str, key: str) -> AgentProfile:
    """A profile whose user messages start with ``NAME-KEY`` (so scripts can tell calls apart)."""
    return AgentProfile(name=name, prompt_template=f"{name.upper()}-{key} {{input}}")


def overlap(requests: list[RecordedRequest]) -> bool:
    """True when every request arrived before every other one finished (all were in flight).

    The first request a test makes to its endpoint goes alone, to learn the provider's
    rate limits from its answer (prefect_fanout.limits.learning): when it is one of these
    and finished before the next arrived, the others must all have been in flight.
    """
    assert requests and all(r.finished is not None for r in requests)
    ordered = sorted(requests, key=lambda r: r.arrived)
    if len(ordered) > 2 and ordered[0].finished <= ordered[1].arrived:  # type: ignore[operator]
        ordered = ordered[1:]
    return max(r.arrived for r in ordered) < min(r.finished for r in ordered)  # type: ignore[type-var]


def state_of(server: Any, result: PatternResult) -> dict[str, Any]:
    response = httpx.get(f"{server.api_url}/flow_runs/{result.flow_run_id}", timeout=10)
    response.raise_for_status()
    return response.json()["state"]


def poll(fetch: Any, ready: Any, timeout: float = 20.0) -> Any:
    """Read from the API until ``ready(value)``; the server records runs a little late."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ready(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def task_run_names(server: Any, flow_run_id: str, expected: set[str]) -> set[str]:
    """The flow run's task-run names, once every expected one is recorded (the server
    records task runs in batches, a moment after they finish)."""

    def fetch() -> set[str]:
        body = {"flow_runs": {"id": {"any_": [flow_run_id]}}, "limit": 200}
        runs = httpx.post(f"{server.api_url}/task_runs/filter", json=body, timeout=10).json()
        return {run["name"] for run in runs}

    return poll(fetch, lambda found: expected <= found)


def check_metrics(result: PatternResult) -> None:
    """The metrics agree with the records they are computed from."""
    m, calls = result.metrics, result.calls
    assert m.calls == len(calls)
    assert m.completed == sum(1 for c in calls if c.status == "completed")
    expected = sum(c.latency_s or 0.0 for c in calls if c.status == "completed")
    assert m.sequential_s == pytest.approx(expected, abs=1e-5)
    assert m.speedup == pytest.approx(m.sequential_s / m.wall_s, rel=1e-3)
    assert m.parallelism_factor == pytest.approx(len(calls) / m.workers, rel=1e-3)
    assert m.success_rate == pytest.approx(m.completed / m.calls, rel=1e-3)
    assert m.prompt_tokens == sum(c.prompt_tokens for c in calls if c.status == "completed")
    assert m.worth_parallel == (m.speedup > (m.cost_multiplier or 0))


# ------------------------------------------------------------------------------------ fan-out


@pytest.mark.server
def test_fan_out_makes_one_call_per_item_round_robin_in_parallel(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    items = [f"item{i}-{key}" for i in range(4)]
    for item in items:
        fake_openai.script(item, Reply(f"out-{item}", latency=LATENCY))
    agents = {"a1": AgentProfile(name="a1"), "a2": AgentProfile(name="a2")}
    result = fan_out(
        items,
        agent=["a1", "a2"],
        agents=agents,
        options=RunOptions(endpoint=endpoint, max_workers=4),
    )

    assert isinstance(result, PatternResult) and result.status == "completed"
    assert result.output == [f"out-{item}" for item in items]
    assert fake_openai.count(key) == 4
    assert [result.call(f"item-{i}").agent for i in range(4)] == ["a1", "a2", "a1", "a2"]
    assert overlap(fake_openai.requests(key)), "fan-out calls did not run in parallel"
    check_metrics(result)
    assert result.metrics.calls == 4 and result.metrics.workers == 4
    assert result.metrics.parallelism_factor == 1.0
    assert result.metrics.cost_multiplier == 1.0 and result.metrics.speedup > 1.0
    assert result.metrics.worth_parallel
    assert state_of(prefect_server, result)["type"] == "COMPLETED"
    expected = {"a1:item-0", "a2:item-1", "a1:item-2", "a2:item-3"}
    assert expected <= task_run_names(prefect_server, result.flow_run_id, expected)


@pytest.mark.server
def test_fan_out_over_calls_per_run_runs_its_groups_as_child_flow_runs(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    """More calls than ``calls_per_run``: child flow runs ``fan-out (i/n)`` of the run, each
    holding its calls as task runs; a child with a failed call ends Partial; the result is
    the same as in one flow run."""
    key = uid()
    items = [f"g{i}-{key}" for i in range(7)]
    fake_openai.default_latency = 0.3  # a speedup far from 0: check_metrics compares it rounded
    fake_openai.script(items[4], Error(400, message="bad item"))
    result = fan_out(
        items,
        prompt="Summarise: {item}",
        options=RunOptions(endpoint=endpoint, max_workers=4, calls_per_run=3),
    )
    assert result.status == "partial"
    assert [out is None for out in result.output] == [i == 4 for i in range(7)]
    assert result.output[0].startswith("echo: Summarise: g0")
    check_metrics(result)
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [result.flow_run_id]}}}
    children = poll(
        lambda: httpx.post(f"{prefect_server.api_url}/flow_runs/filter", json=body).json(),
        lambda runs: len(runs) == 3 and all(r["state_type"] for r in runs),
    )
    by_name = {run["name"]: run for run in children}
    assert set(by_name) == {"fan-out (1/3)", "fan-out (2/3)", "fan-out (3/3)"}
    assert [by_name[f"fan-out ({n}/3)"]["state_name"] for n in (1, 2, 3)] == [
        "Completed",
        "Partial",
        "Completed",
    ]
    for name, wanted in (("fan-out (1/3)", {0, 1}), ("fan-out (3/3)", {5, 6})):
        expected = {f"default:item-{i}" for i in wanted}
        assert expected <= task_run_names(prefect_server, by_name[name]["id"], expected)
    state = state_of(prefect_server, result)
    assert (state["type"], state["name"]) == ("COMPLETED", "Partial")


@pytest.mark.server
def test_fan_out_partial_keeps_the_others_and_all_or_nothing_stops(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    items = [f"p{i}-{key}" for i in range(3)]
    fake_openai.script(items[1], Error(400, message="bad item"))
    result = fan_out(
        items,
        prompt="Summarise: {item}",
        options=RunOptions(endpoint=endpoint),
    )
    assert result.status == "partial"
    assert result.output[1] is None and result.output[0].startswith("echo: Summarise: p0")
    assert result.call("item-1").status == "failed"
    assert "NonRetryableAPIError" in (result.call("item-1").error or "")
    assert result.metrics.success_rate == pytest.approx(2 / 3, rel=1e-3)
    check_metrics(result)
    state = state_of(prefect_server, result)
    assert (state["type"], state["name"]) == ("COMPLETED", "Partial")

    key = uid()
    items = [f"q{i}-{key}" for i in range(3)]
    fake_openai.script(items[0], Error(400))
    state = fan_out(
        items,
        options=RunOptions(endpoint=endpoint, max_workers=1, failure_policy="all_or_nothing"),
        return_state=True,
    )
    failed = pattern_result_of(state)
    assert state.is_failed() and failed.status == "failed" and failed.output is None
    assert [c.status for c in failed.calls] == ["failed", "skipped", "skipped"]
    assert fake_openai.count(key) == 1
    assert failed.metrics.skipped == 2 and failed.metrics.success_rate == 0.0


# ------------------------------------------------------------------------------------ fan-in


@pytest.mark.server
def test_fan_in_collects_in_parallel_then_aggregates_everything(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    agents = {"collector": tagged("collector", key), "aggregator": tagged("aggregator", key)}
    sources = {"north": f"N-{key}", "south": f"S-{key}", "east": f"E-{key}"}
    for name, source in sources.items():
        fake_openai.script(source, Reply(f"{name}-data", latency=LATENCY))
    fake_openai.script(f"AGGREGATOR-{key}", Reply("the report"))
    result = fan_in(
        sources,
        collector="collector",
        aggregator="aggregator",
        agents=agents,
        options=RunOptions(endpoint=endpoint),
    )

    assert result.status == "completed" and result.output == "the report"
    assert fake_openai.count(f"COLLECTOR-{key}") == 3
    assert fake_openai.count(key) == 3 + 1  # N collectors + 1 aggregator
    collected = [r for r in fake_openai.requests(f"COLLECTOR-{key}")]
    assert overlap(collected), "collectors did not run in parallel"
    (aggregate,) = fake_openai.requests(f"AGGREGATOR-{key}")
    assert aggregate.arrived >= max(r.finished for r in collected)  # type: ignore[type-var]
    assert aggregate.prompt.endswith(
        "## Upstream results\n\n### north\nnorth-data\n\n### south\nsouth-data"
        "\n\n### east\neast-data"
    )
    assert result.details["collected"] == {n: f"{n}-data" for n in sources}
    check_metrics(result)


@pytest.mark.server
def test_fan_in_partial_aggregates_what_completed_all_or_nothing_does_not_aggregate(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    agents = {"collector": tagged("collector", key), "aggregator": tagged("aggregator", key)}
    fake_openai.script(f"B-{key}", Error(400))
    sources = [f"A-{key}", f"B-{key}", f"C-{key}"]
    result = fan_in(
        sources,
        collector="collector",
        aggregator="aggregator",
        agents=agents,
        options=RunOptions(endpoint=endpoint),
    )
    assert result.status == "partial"
    (aggregate,) = fake_openai.requests(f"AGGREGATOR-{key}")
    assert "### source-0" in aggregate.prompt and "### source-2" in aggregate.prompt
    assert "### source-1" not in aggregate.prompt

    fake_openai.script(f"B-{key}", Error(400))
    state = fan_in(
        [f"X-{key}", f"B-{key}"],
        collector="collector",
        aggregator="aggregator",
        agents=agents,
        options=RunOptions(endpoint=endpoint, failure_policy="all_or_nothing"),
        return_state=True,
    )
    failed = pattern_result_of(state)
    assert failed.status == "failed" and failed.call("aggregate").status == "skipped"
    assert fake_openai.count(f"AGGREGATOR-{key}") == 1  # only the partial run's


# ------------------------------------------------------------------------------------ pipeline


def enrichment_agents(key: str) -> dict[str, AgentProfile]:
    names = ("validator", "geo", "price", "tags", "combiner")
    return {name: tagged(name, key) for name in names}


@pytest.mark.server
def test_pipeline_branches_run_in_parallel_and_each_stage_gets_all_previous_outputs(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    fake_openai.script(f"VALIDATOR-{key}", Reply("valid-item"))
    for name in ("geo", "price", "tags"):
        fake_openai.script(f"{name.upper()}-{key}", Reply(f"{name}-info", latency=LATENCY))
    fake_openai.script(f"COMBINER-{key}", Reply("enriched"))
    stages = ["validator", ["geo", "price", "tags"], "combiner"]
    result = pipeline(
        "a record",
        stages,
        agents=enrichment_agents(key),
        options=RunOptions(endpoint=endpoint, max_workers=3),
    )

    assert result.status == "completed" and result.output == "enriched"
    assert fake_openai.count(key) == 1 + 3 + 1  # the sum of the stage widths
    enrichers = [fake_openai.requests(f"{n.upper()}-{key}")[0] for n in ("geo", "price", "tags")]
    assert overlap(enrichers), "the branches of stage 2 did not run in parallel"
    for request in enrichers:
        assert request.prompt.endswith("## Upstream results\n\n### s1.validator\nvalid-item")
    (combine,) = fake_openai.requests(f"COMBINER-{key}")
    assert combine.arrived >= max(r.finished for r in enrichers)  # type: ignore[type-var]
    assert combine.prompt.endswith(
        "## Upstream results\n\n### s2.geo\ngeo-info\n\n### s2.price\nprice-info"
        "\n\n### s2.tags\ntags-info"
    )
    assert result.details["stages"][1] == {
        "s2.geo": "geo-info",
        "s2.price": "price-info",
        "s2.tags": "tags-info",
    }
    check_metrics(result)


@pytest.mark.server
def test_pipeline_partial_goes_on_with_what_completed_all_or_nothing_stops(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    fake_openai.script(f"PRICE-{key}", Error(400))
    stages = ["validator", ["geo", "price", "tags"], "combiner"]
    agents = enrichment_agents(key)
    result = pipeline(
        "rec",
        stages,
        agents=agents,
        options=RunOptions(endpoint=endpoint),
    )
    assert result.status == "partial"
    (combine,) = fake_openai.requests(f"COMBINER-{key}")
    assert "### s2.geo" in combine.prompt and "### s2.tags" in combine.prompt
    assert "### s2.price" not in combine.prompt

    key = uid()
    fake_openai.script(f"PRICE-{key}", Error(400))
    agents = enrichment_agents(key)
    state = pipeline(
        "rec",
        stages,
        agents=agents,
        options=RunOptions(endpoint=endpoint, failure_policy="all_or_nothing"),
        return_state=True,
    )
    failed = pattern_result_of(state)
    assert failed.status == "failed" and failed.call("s3.combiner").status == "skipped"
    assert fake_openai.count(f"COMBINER-{key}") == 0


# ------------------------------------------------------------------------------------ tree


def halves(text: str) -> list[str]:
    """Split a space-separated text into two halves; one word is a leaf."""
    words = text.split()
    if len(words) <= 1:
        return []
    middle = len(words) // 2
    return [" ".join(words[:middle]), " ".join(words[middle:])]


@pytest.mark.server
def test_tree_solves_leaves_in_parallel_and_combines_up_with_node_paths(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    agents = {"solver": tagged("solver", key), "merger": tagged("merger", key)}
    fake_openai.script(f"SOLVER-{key}", *[Reply(f"leaf{i}", latency=LATENCY) for i in range(4)])
    words = " ".join(f"w{i}" for i in range(4))
    result = tree(
        words,
        split=halves,
        solve="solver",
        combine="merger",
        max_depth=5,
        agents=agents,
        options=RunOptions(endpoint=endpoint, max_workers=4),
    )

    assert result.status == "completed"
    shape = result.details["tree"]
    assert shape["0"]["children"] == ["0.0", "0.1"] and shape["0.0"]["children"] == [
        "0.0.0",
        "0.0.1",
    ]
    assert result.details["leaves"] == 4 and result.details["depth"] == 2
    assert fake_openai.count(f"SOLVER-{key}") == 4
    assert fake_openai.count(f"MERGER-{key}") == 3  # the internal nodes
    assert fake_openai.count(key) == 4 + 3
    assert overlap(fake_openai.requests(f"SOLVER-{key}")), "leaves were not solved in parallel"
    root = [r for r in fake_openai.requests(f"MERGER-{key}") if "### combine:0.0" in r.prompt]
    assert len(root) == 1 and "### combine:0.1" in root[0].prompt
    check_metrics(result)
    expected = {"solver:solve:0.0.0", "solver:solve:0.1.1", "merger:combine:0"}
    expected |= {"split:0", "split:0.0", "split:0.1"}  # the split function's task runs
    assert expected <= task_run_names(prefect_server, result.flow_run_id, expected)


@pytest.mark.server
def test_tree_depth_bound_and_failure_policies(
    prefect_server: Any, fake_openai: FakeOpenAI, endpoint: LLMEndpoint
) -> None:
    key = uid()
    seen: list[str] = []

    def always(text: str) -> list[str]:
        seen.append(text)
        return [f"{text}/a", f"{text}/b"]  # never a leaf by itself

    agents = {"solver": tagged("solver", key)}
    result = tree(
        f"root-{key}",
        split=always,
        solve="solver",
        combine=lambda parts: " + ".join(parts),
        max_depth=2,
        agents=agents,
        options=RunOptions(endpoint=endpoint),
    )
    assert result.status == "completed" and result.details["depth"] == 2
    assert len(seen) == 1 + 2  # depth 0 and 1 are split, depth 2 are leaves
    assert fake_openai.count(f"SOLVER-{key}") == 4
    assert result.output.count("+") == 3

    only_root = tree(
        f"single-{key}",
        split=always,
        solve="solver",
        combine="solver",
        max_depth=0,
        agents=agents,
        options=RunOptions(endpoint=endpoint),
    )
    assert [c.id for c in only_root.calls] == ["solve:0"]

    key = uid()
    agents = {"solver": tagged("solver", key), "merger": tagged("merger", key)}
    fake_openai.script(f"root-{key}/a/b", Error(400))
    partial = tree(
        f"root-{key}",
        split=always,
        solve="solver",
        combine="merger",
        max_depth=2,
        agents=agents,
        options=RunOptions(endpoint=endpoint),
    )
    assert partial.status == "partial" and partial.call("solve:0.0.1").status == "failed"
    merges = fake_openai.requests(f"MERGER-{key}")
    (node,) = [r for r in merges if r.prompt.split("\n\n")[1] == f"root-{key}/a"]
    assert "### solve:0.0.0" in node.prompt
    assert "### solve:0.0.1" not in node.prompt

    fake_openai.script(f"root-{key}/a/b", Error(400))
    state = tree(
        f"root-{key}",
        split=always,
        solve="solver",
        combine="merger",
        max_depth=2,
        agents=agents,
        options=RunOptions(
            endpoint=endpoint, failure_policy="all_or_nothing", max_workers=1, cache="off"
        ),
        return_state=True,
    )
    failed = pattern_result_of(state)
    assert failed.status == "failed" and failed.output is None
    assert failed.metrics.skipped > 0


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("field", "value"), [("max_workers", 0), ("failure_policy", "most")])
def test_bad_run_options_are_refused_naming_the_field_before_any_pattern_runs(field, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=field):
        RunOptions(model="test", **{field: value})


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (
            lambda: pipeline(
                "x",
                [],
                options=RunOptions(model="test"),
            ),
            "stages",
        ),
        (
            lambda: pipeline(
                "x",
                ["default", []],
                options=RunOptions(model="test"),
            ),
            "stages[1]",
        ),
        (
            lambda: fan_out(
                [],
                options=RunOptions(model="test"),
            ),
            "items",
        ),
        (lambda: fan_in([], collector="default", aggregator="default"), "sources"),
        (
            lambda: tree("p", split=halves, solve="default", combine="default", max_depth=-1),
            "max_depth",
        ),
        (
            lambda: tree(
                "a b",
                split=lambda p: [p],
                solve="default",
                combine="default",
                max_depth=3,
                options=RunOptions(model="test"),
            ),
            "split",
        ),
    ],
)
def test_bad_arguments_raise_a_fanout_error_naming_the_argument(make: Any, argument: str) -> None:
    with pytest.raises(FanoutError) as caught:
        make()
    assert isinstance(caught.value, PatternArgumentError)
    assert caught.value.argument == argument and str(caught.value).startswith(f"{argument}:")
    assert caught.value.exit_code == 2


# ------------------------------------------------------------------------- metrics (pure)


def test_metrics_are_computed_from_the_records() -> None:
    records = [
        CallRecord(
            id="a",
            agent="x",
            status="completed",
            attempts=1,
            latency_s=2.0,
            prompt_tokens=10,
            completion_tokens=5,
            cost_usd=0.01,
        ),
        CallRecord(
            id="b",
            agent="x",
            status="completed",
            attempts=3,
            latency_s=3.0,
            prompt_tokens=20,
            completion_tokens=5,
            cost_usd=0.02,
        ),
        CallRecord(
            id="c",
            agent="x",
            status="completed",
            cached=True,
            attempts=0,
            latency_s=1.0,
            prompt_tokens=7,
            completion_tokens=7,
            cost_usd=0.0,
        ),
        CallRecord(id="d", agent="x", status="failed", attempts=2, error="boom"),
        CallRecord(id="e", agent="x", status="skipped"),
    ]
    m = compute_metrics(records, wall_s=2.5, workers=2, peak_in_flight=2)
    assert (m.calls, m.completed, m.failed, m.skipped, m.cached) == (5, 3, 1, 1, 1)
    assert m.sequential_s == 6.0 and m.speedup == 2.4
    assert m.parallelism_factor == 2.5 and m.success_rate == 0.6
    assert (m.prompt_tokens, m.completion_tokens) == (30, 10)  # the cache hit spent nothing
    assert m.cost_usd == pytest.approx(0.03)
    assert m.requests == 6 and m.cost_multiplier == 1.5  # 6 requests for 4 calls made
    assert m.worth_parallel  # 2.4x faster for 1.5x the requests
    slow = compute_metrics(records[:2], wall_s=5.0, workers=2)
    assert slow.speedup == 1.0 and slow.cost_multiplier == 2.0 and not slow.worth_parallel
    assert compute_metrics([], wall_s=0.0, workers=1).speedup is None
