"""map_corpus end to end (real Prefect server, fake OpenAI server over HTTP) and its pure parts."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_fanout import map_corpus
from prefect_fanout.agents.agentsfile import load_agents_file, profiles_from_mapping
from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.files import (
    TEMP_SUFFIX,
    remove_stale_temp_files,
    write_json_atomic,
    write_jsonl_atomic,
)
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.mapping.classify import label_from_output
from prefect_fanout.mapping.corpus import Item
from prefect_fanout.mapping.job import prepare_map
from prefect_fanout.mapping.prompts import TemplateFieldError, item_prompt
from prefect_fanout.mapping.reduce import REDUCE_INSTRUCTION, Piece, estimate_tokens, plan_groups
from prefect_fanout.mapping.spec import MapSpec
from prefect_fanout.mapping.stage import partition_file_names
from prefect_fanout.options import RunOptions
from tests.fakeopenai import FakeOpenAI, Reply
from tests.map_helpers import family_filter, read_jsonl, tag, write_corpus
from tests.ui_helpers import PrefectAPI

REDUCE_HEAD = REDUCE_INSTRUCTION.split("{")[0]


def endpoint_for(fake: FakeOpenAI) -> LLMEndpoint:
    return LLMEndpoint(base_url=fake.base_url, api_key="sk-test")


def item(index: int, text: str | None = "t", **record: Any) -> Item:
    return Item(id=f"i{index}", text=text, record={"id": f"i{index}", **record}, index=index)


# --------------------------------------------------------------------------- end to end


@pytest.mark.server
@pytest.mark.timeout(900)  # never a time assertion: only room for a slow shared server
def test_thousand_items_give_one_line_each(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n:04d}", "text": f"{run} item {n}"} for n in range(1000)]
    source = write_corpus(tmp_path / "items.jsonl", records)
    before = hashlib.sha256(source.read_bytes()).hexdigest(), source.stat().st_mtime_ns
    out = tmp_path / "out"

    started = time.perf_counter()
    summary = map_corpus(
        source,
        agent="default",
        partition="count:8",
        output_dir=out,
        options=RunOptions(endpoint=endpoint_for(fake_openai), max_workers=16),
    )
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n[1,000-item map] {elapsed:.1f} s wall, map stage {summary.map_duration_s:.1f} s, "
            f"{summary.items_per_second:.1f} items/s, concurrency reached "
            f"{summary.concurrency_reached} (server saw at most {fake_openai.max_in_flight})"
        )

    rows = read_jsonl(out / "final.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in records]
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == 1000
    assert all(r["status"] == "completed" for r in rows)
    assert all(r["output"] == f"echo: {rec['text']}" for r, rec in zip(rows, records, strict=True))
    assert fake_openai.count(run) == 1000  # each item asked exactly once
    assert summary.total == summary.completed == 1000
    assert (summary.failed, summary.dead_letter, summary.cached) == (0, 0, 0)
    assert 1 <= summary.concurrency_reached <= 16
    assert fake_openai.max_in_flight <= 16
    assert summary.usage["map"].calls == 1000
    assert summary.usage["map"].prompt_tokens > 0
    assert summary.cost_usd is None  # the fake is not OpenAI: no price from the table

    files = sorted((out / "partitions").iterdir())
    assert [f.name for f in files] == [f"partition-{n:04d}.jsonl" for n in range(8)]
    assert [len(read_jsonl(f)) for f in files] == [125] * 8
    partition_ids = [r["id"] for f in files for r in read_jsonl(f)]
    assert sorted(partition_ids) == sorted(r["id"] for r in records)
    assert [p.items for p in summary.partitions] == [125] * 8
    assert all(p.status == "written" and p.attempts == 1 for p in summary.partitions)
    assert json.loads((out / "summary.json").read_text()) == summary.model_dump(mode="json")
    assert (out / "dead_letters.jsonl").read_text() == ""
    assert not [p for p in out.rglob("*") if p.name.endswith(TEMP_SUFFIX)]
    assert (hashlib.sha256(source.read_bytes()).hexdigest(), source.stat().st_mtime_ns) == before


@pytest.mark.server
def test_calls_carry_the_partition_tags_a_concurrency_limit_uses(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    run = tag()
    records = [
        {"id": f"{run}-{n}", "text": f"{run} {n}", "kind": run + "ab"[n % 2]} for n in range(6)
    ]
    limited = f"partition:{run}a"
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=limited, concurrency_limit=100)
    try:
        summary = map_corpus(
            write_corpus(tmp_path / "c.jsonl", records),
            agent="default",
            partition="key:kind",
            output_dir=tmp_path / "out",
            options=RunOptions(endpoint=endpoint_for(fake_openai), max_workers=3),
        )
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(limited)
    assert summary.flow_run_id is not None
    expected = {f"default:{r['id']}": r["kind"] for r in records}
    partitions = [f"partition:{run}a", f"partition:{run}b"]
    flow_filter = family_filter(summary.flow_run_id)
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        while True:  # the server records task runs shortly after they finish
            runs = {t.name: t for t in client.read_task_runs(flow_run_filter=flow_filter)}
            recorded = all(name in runs for name in [*expected, *partitions])
            if recorded or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    for name, kind in expected.items():
        # Only the tag a limit uses is on the task run: untagged runs ask for no slots.
        assert set(runs[name].tags) == ({limited} if kind == f"{run}a" else set()), name
    assert f"partition:{run}a" in runs and f"partition:{run}b" in runs  # the partition writes
    rows = read_jsonl(tmp_path / "out" / "final.jsonl")
    assert {r["id"]: r["partition"] for r in rows} == {r["id"]: r["kind"] for r in records}


@pytest.mark.server
def test_prompt_template_renders_record_fields(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [
        {"id": f"{run}-1", "title": "Oats", "meta": {"n": 1}},
        {"id": f"{run}-2", "title": "Rye", "meta": {"n": 2}},
    ]
    summary = map_corpus(
        write_corpus(tmp_path / "c.jsonl", records),
        agent="default",
        partition="size:1",
        output_dir=tmp_path / "out",
        options=RunOptions(endpoint=endpoint_for(fake_openai)),
        prompt="[" + run + "] {title} n={meta[n]} all={meta} {{literal}}",
    )
    assert summary.ok
    prompts = sorted(r.prompt for r in fake_openai.requests(run))
    assert prompts == [
        f'[{run}] Oats n=1 all={{"n": 1}} {{literal}}',
        f'[{run}] Rye n=2 all={{"n": 2}} {{literal}}',
    ]


@pytest.mark.server
def test_structured_agent_outputs_are_json_in_the_outputs(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    agents = load_agents_file(Path(__file__).parent.parent / "examples" / "agents.json")
    records = [{"id": f"{run}-{n}", "text": f"{run} note {n}"} for n in range(3)]
    summary = map_corpus(
        write_corpus(tmp_path / "c.jsonl", records),
        agent="extractor",
        agents=agents,
        partition="count:2",
        output_dir=tmp_path / "out",
        options=RunOptions(endpoint=endpoint_for(fake_openai)),
    )
    assert summary.ok
    for row in read_jsonl(tmp_path / "out" / "final.jsonl"):
        assert set(row["output"]) == {"topics", "summary", "sentiment", "action_items"}
    body = fake_openai.requests(run)[0].body
    assert body["response_format"]["json_schema"]["name"] == "NoteInsights"


@pytest.mark.server
@pytest.mark.parametrize("calls_per_run", [None, 4])
def test_topic_agent_classifies_then_partitions_by_label(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path, calls_per_run: int | None
) -> None:
    """With calls_per_run 4 the 6 classifier calls run as child runs ``classify (1/2)`` and
    ``classify (2/2)``, the partitions as ``partition KEY``: the outputs are the same."""
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {'ab'[n % 2]}-{n}"} for n in range(6)]
    classifier = AgentProfile(name="sorter", prompt_template="Classify: {input}")
    fake_openai.script(f"Classify: {run} a-", *[Reply("  apples \n") for _ in range(3)])
    fake_openai.script(f"Classify: {run} b-", *[Reply("pears") for _ in range(3)])
    summary = map_corpus(
        write_corpus(tmp_path / "c.jsonl", records),
        agent="default",
        agents={"sorter": classifier},
        partition="topic:agent=sorter",
        output_dir=tmp_path / "out",
        options=RunOptions(endpoint=endpoint_for(fake_openai), calls_per_run=calls_per_run),
    )
    assert summary.ok
    with PrefectAPI(prefect_server.api_url) as api:
        children = sorted(child["name"] for child in api.child_runs(summary.flow_run_id))
    classify = ["classify (1/2)", "classify (2/2)"] if calls_per_run else []
    assert children == [*classify, "partition apples", "partition pears"]
    assert [p.key for p in summary.partitions] == ["apples", "pears"]
    assert summary.usage["classify"].calls == 6
    rows = read_jsonl(tmp_path / "out" / "final.jsonl")
    assert [r["partition"] for r in rows] == ["apples", "pears"] * 3
    assert sorted(p.name for p in (tmp_path / "out" / "partitions").iterdir()) == [
        "partition-apples.jsonl",
        "partition-pears.jsonl",
    ]
    assert fake_openai.count(f"Classify: {run}") == 6
    assert len([r for r in fake_openai.requests(run) if not r.prompt.startswith("Classify")]) == 6


@pytest.mark.server
def test_tree_reduce_combines_partition_outputs_over_levels(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n:02d}", "text": f"{run} finding {n}"} for n in range(12)]
    out = tmp_path / "out"
    summary = map_corpus(
        write_corpus(tmp_path / "c.jsonl", records),
        agent="default",
        partition="count:3",
        output_dir=out,
        options=RunOptions(endpoint=endpoint_for(fake_openai)),
        reduce="default",
        reduce_budget=40,
    )
    assert summary.ok and summary.reduce is not None
    result = json.loads((out / "reduce.json").read_text())
    assert result["status"] == "completed" and summary.reduce.status == "completed"
    assert result["levels"] >= 2 and result["levels"] == len(result["tree"])
    assert result["calls"] == sum(len(level["groups"]) for level in result["tree"]) >= 3
    assert result["inputs"] == 12 and result["token_budget"] == 40
    assert summary.reduce.calls == result["calls"]
    assert summary.usage["reduce"].calls == result["calls"]

    key_of = {row["id"]: row["partition"] for row in read_jsonl(out / "final.jsonl")}
    for group in result["tree"][0]["groups"]:  # the first level never mixes partitions
        assert len({key_of[i] for i in group["inputs"]}) == 1
    assert len(result["tree"][-1]["groups"]) == 1

    reduce_requests = [r for r in fake_openai.requests() if r.prompt.startswith(REDUCE_HEAD)]
    assert len(reduce_requests) == result["calls"]
    outputs = [row["output"] for f in (out / "partitions").iterdir() for row in read_jsonl(f)]
    assert len(outputs) == 12
    for output in outputs:
        assert any(f"\n{output}\n" in f"{r.prompt}\n" for r in reduce_requests), output
    # The final answer is the top call's answer: the fake echoes that call's prompt.
    top_inputs = result["tree"][-1]["groups"][0]["inputs"]
    top = [r for r in reduce_requests if all(f"### {i}\n" in r.prompt for i in top_inputs)]
    assert [result["answer"]] == ["echo: " + r.prompt for r in top]


@pytest.mark.server
def test_map_corpus_inside_a_flow_uses_that_flow_run(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    from prefect import flow
    from prefect.runtime import flow_run

    run = tag()
    source = write_corpus(
        tmp_path / "c.jsonl", [{"id": f"{run}-{n}", "text": run} for n in range(3)]
    )

    @flow(name="outer-map-test")
    def outer() -> tuple[str, Any]:
        summary = map_corpus(
            source,
            agent="default",
            partition="count:2",
            output_dir=tmp_path / "out",
            options=RunOptions(endpoint=endpoint_for(fake_openai)),
        )
        return flow_run.id, summary

    outer_id, summary = outer()
    assert summary.flow_run_id == outer_id
    assert summary.ok and summary.total == 3


def test_bad_inputs_are_found_before_any_call(tmp_path: Path) -> None:
    source = write_corpus(tmp_path / "c.jsonl", [{"id": "a", "title": "x"}])

    def spec(input: Path, **settings: Any) -> MapSpec:
        return MapSpec(
            input=str(input),
            agent="default",
            partition="count:1",
            output_dir=str(tmp_path / "o"),
            **settings,
        )

    with pytest.raises(TemplateFieldError, match=r"item 'a'.*'body'"):
        prepare_map(spec(source, prompt="{title}: {body}"), RunOptions(model="test"))
    with pytest.raises(ConfigurationError, match="inside the input directory"):
        prepare_map(spec(tmp_path), RunOptions(model="test"))
    with pytest.raises(ConfigurationError, match="max_workers"):
        prepare_map(spec(source), {"model": "test", "max_workers": 0})
    with pytest.raises(ConfigurationError, match="--active-partitions must be at least 1"):
        prepare_map(spec(source, active_partitions=0), RunOptions(model="test"))
    with pytest.raises(ConfigurationError, match="map setting 'partiton'"):
        map_corpus(source, agent="default", partition="count:1", output_dir=tmp_path, partiton=2)


# --------------------------------------------------------------------------- pure parts


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=30),
    bounds=st.lists(st.sampled_from(["a", "b", "c"]), min_size=30, max_size=30),
    budget=st.integers(min_value=1, max_value=80),
)
def test_plan_groups_keeps_order_boundaries_and_progress(
    sizes: list[int], bounds: list[str], budget: int
) -> None:
    pieces = [Piece(f"p{n}", "x" * size, bounds[n]) for n, size in enumerate(sizes)]
    pieces.sort(key=lambda p: p.boundary or "")
    groups = plan_groups(pieces, budget)
    assert [p for g in groups for p in g] == pieces  # every piece once, in order
    for group in groups:
        assert len({p.boundary for p in group}) == 1
        if len(group) >= 3:  # over budget only when two pieces are needed for progress
            assert sum(p.tokens for p in group) <= budget
    runs = {b: [p for p in pieces if p.boundary == b] for b in {p.boundary for p in pieces}}
    for boundary, members in runs.items():
        in_run = [g for g in groups if g[0].boundary == boundary]
        if len(members) >= 2:
            assert len(in_run) < len(members)  # the level shrinks: the tree ends
            assert all(len(g) >= 2 for g in in_run[:-1])


def test_estimate_tokens_is_chars_over_four() -> None:
    assert [estimate_tokens("x" * n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]


def test_item_prompt_defaults_and_template_errors() -> None:
    assert item_prompt(item(0, "hello")) == "hello"
    assert item_prompt(item(1, None, a=1)) == '{"a": 1, "id": "i1"}'
    rendered = item_prompt(item(2, "t", n=3, flag=True, tags=["x"]), "{id} {n} {flag} {tags}")
    assert rendered == 'i2 3 true ["x"]'
    assert item_prompt(item(3, "body"), "<{input}>") == "<body>"
    with pytest.raises(TemplateFieldError, match=r"item 'i4' \(input #5\) has no field 'nope'"):
        item_prompt(item(4), "{nope}")
    with pytest.raises(TemplateFieldError, match="positional"):
        item_prompt(item(5), "{}")
    with pytest.raises(TemplateFieldError, match="malformed"):
        item_prompt(item(6), "{oops")


def test_label_from_output() -> None:
    assert label_from_output("  billing \n") == "billing"
    assert label_from_output({"topic": " ops ", "label": "x"}) == "ops"
    assert label_from_output({"label": "infra"}) == "infra"
    assert label_from_output({"other": 1}) == "unknown"
    assert label_from_output("   ") == "unknown"


def test_partition_file_names_are_safe_and_unique() -> None:
    names = partition_file_names(["2024/01", "A b", "a-b"])
    assert names["2024/01"] == "partition-2024-01.jsonl"
    assert len({n.lower() for n in names.values()}) == 3


def test_atomic_writes_replace_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "rows.jsonl"
    write_jsonl_atomic(target, [{"a": 1}, {"b": "ü"}])
    assert target.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "ü"}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    def rows() -> Any:
        yield {"c": 3}
        raise RuntimeError("source broke mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl_atomic(target, rows())
    assert target.read_text(encoding="utf-8") == '{"a": 1}\n{"b": "ü"}\n'  # untouched
    assert list(target.parent.iterdir()) == [target]  # no temp file left behind
    blocked = tmp_path / "blocked.json"
    blocked.mkdir()
    with pytest.raises(OSError):
        write_json_atomic(blocked, {"x": 1})
    (tmp_path / f".left.abc{TEMP_SUFFIX}").write_text("partial")
    assert remove_stale_temp_files(tmp_path) == 1


def test_agents_files(tmp_path: Path) -> None:
    agents = load_agents_file(Path(__file__).parent.parent / "examples" / "agents.json")
    assert agents["extractor"].output_schema["properties"]["sentiment"]["enum"]
    yaml_file = tmp_path / "a.yaml"
    yaml_file.write_text("agents:\n  short:\n    system_prompt: Be brief.\n    temperature: 0\n")
    assert load_agents_file(yaml_file)["short"].system_prompt == "Be brief."
    broken = tmp_path / "b.json"
    broken.write_text('{\n  "x": {"model": "m",}\n}\n')
    with pytest.raises(ConfigurationError, match=r"b\.json, line 2"):
        load_agents_file(broken)
    with pytest.raises(ConfigurationError, match=r"agent 'x': invalid profile"):
        profiles_from_mapping({"x": {"max_attempts": 0}}, "f.json")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_agents_file(tmp_path / "missing.json")


@pytest.mark.server
def test_a_cached_rerun_reads_stored_answers_without_task_runs_and_lists_them_as_cached(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    from tests.ui_helpers import PrefectAPI, poll

    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(5)]
    source = write_corpus(tmp_path / "c.jsonl", records)
    options = {
        "agent": "default",
        "partition": "count:1",
        "output_dir": tmp_path / "out",
        "options": RunOptions(endpoint=endpoint_for(fake_openai)),
    }
    first = map_corpus(source, **options)
    second = map_corpus(source, **options)
    assert (first.cached, second.cached) == (0, 5)
    assert fake_openai.count(run) == 5  # the rerun asked nothing
    with PrefectAPI(prefect_server.api_url) as api:
        table = poll(
            lambda: [a for a in api.artifacts(second.flow_run_id) if a["type"] == "table"],
            lambda found: bool(found),
            30,
            "the rerun's table artifact",
        )[0]
        rows = json.loads(table["data"]) if isinstance(table["data"], str) else table["data"]
        assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in records)
        assert all(r["cached"] is True and r["status"] == "completed" for r in rows)
        names = poll(  # the server records task runs a little after they finish
            lambda: [t["name"] for t in api.task_runs(second.flow_run_id)],
            lambda found: "partition:0000" in found,
            30,
            "the rerun's partition task run",
        )
        assert not [n for n in names if n.startswith("default:")]  # no agent-call task runs
        assert "partition:0000" in names  # the partition file is still written by its task
