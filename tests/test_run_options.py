"""One set of run options: every shape takes ``options=RunOptions(...)`` the same way, and the
options merge by one documented precedence (README's "Run options" table, a test per row).

Every shape is run against the OpenAI-compatible test server, which records each request's
body: ``RunOptions(max_tokens=77, temperature=0.3)`` must reach every request a shape makes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from prefect_fanout import (
    AgentProfile,
    LLMEndpoint,
    Plan,
    RunOptions,
    call_agent,
    dispatch_plan,
    fan_in,
    fan_out,
    map_corpus,
    pipeline,
    run_plan,
    tree,
)
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.options import merge_options
from tests.fakeopenai import FakeOpenAI
from tests.map_helpers import uid

ROOT = Path(__file__).resolve().parents[1]
SAMPLING = RunOptions(max_tokens=77, temperature=0.3)

pytestmark = pytest.mark.usefixtures("prefect_server")


def sampled(endpoint: LLMEndpoint, **more: Any) -> RunOptions:
    return merge_options({"endpoint": endpoint, "cache": "off", **more}, SAMPLING)


def assert_every_request_sampled(fake: FakeOpenAI, key: str, expected: int) -> None:
    requests = fake.requests(key)
    assert len(requests) >= expected, f"{len(requests)} requests, expected {expected}"
    for request in requests:
        assert request.body.get("max_tokens") == 77, request.body
        assert request.body.get("temperature") == 0.3, request.body


# ------------------------------------------------------------ every shape takes the options


def test_call_agent_takes_the_options(fake_openai, endpoint):
    key = uid()
    call_agent(f"one call {key}", options=sampled(endpoint))
    assert_every_request_sampled(fake_openai, key, 1)


def test_fan_out_takes_the_options(fake_openai, endpoint):
    key = uid()
    fan_out([f"a-{key}", f"b-{key}", f"c-{key}"], options=sampled(endpoint))
    assert_every_request_sampled(fake_openai, key, 3)


def test_fan_in_takes_the_options(fake_openai, endpoint):
    key = uid()
    fan_in(
        [f"s1-{key}", f"s2-{key}"],
        collector="default",
        aggregator="default",
        aggregate_prompt=f"Combine {key}",
        options=sampled(endpoint),
    )
    assert_every_request_sampled(fake_openai, key, 3)


def test_pipeline_takes_the_options(fake_openai, endpoint):
    key = uid()
    first, left, right = (
        AgentProfile(name=name, prompt_template=f"{name.upper()}-{key} {{input}}")
        for name in ("first", "left", "right")
    )
    pipeline(f"item {key}", [first, [left, right]], options=sampled(endpoint))
    assert_every_request_sampled(fake_openai, key, 3)


def test_tree_takes_the_options(fake_openai, endpoint):
    key = uid()
    tree(
        f"problem {key} with two halves",
        split=lambda text: (
            [] if len(text) < 30 else [text[: len(text) // 2], text[len(text) // 2 :]]
        ),
        solve="default",
        combine="default",
        combine_prompt=f"Combine {key}",
        max_depth=1,
        options=sampled(endpoint),
    )
    assert len(fake_openai.requests()) >= 3
    for request in fake_openai.requests():
        assert (request.body["max_tokens"], request.body["temperature"]) == (77, 0.3)


def test_dispatch_plan_and_run_plan_take_the_options(fake_openai, endpoint):
    key = uid()
    plan = Plan.model_validate(
        {
            "tasks": [
                {"task_id": "a", "agent": "default", "description": f"A {key}"},
                {
                    "task_id": "b",
                    "agent": "default",
                    "description": f"B {key}",
                    "dependencies": ["a"],
                },
            ]
        }
    )
    dispatch_plan(plan, options=sampled(endpoint))
    assert_every_request_sampled(fake_openai, key, 2)

    from prefect import flow

    @flow
    def mine() -> Any:
        return run_plan(plan, options=sampled(endpoint))

    fake_openai.reset()
    mine()
    assert_every_request_sampled(fake_openai, key, 2)


def test_map_corpus_takes_the_options(fake_openai, endpoint, tmp_path):
    key = uid()
    items = [{"id": f"i{n}", "text": f"item {n} {key}"} for n in range(4)]
    summary = map_corpus(
        items,
        agent="default",
        partition="count:2",
        output_dir=tmp_path / "out",
        reduce="default",
        options=sampled(endpoint),
    )
    assert summary.ok
    assert_every_request_sampled(fake_openai, key, 5)  # 4 items and at least one reduce


# ------------------------------------------------------------------ one precedence, by row


def plan_with(config: dict[str, Any], agents: dict[str, Any] | None = None, key: str = "") -> Plan:
    return Plan.model_validate(
        {
            "tasks": [{"task_id": "t", "agent": "writer", "description": f"Task {key}"}],
            "config": config,
            "agents": agents or {"writer": {}},
        }
    )


def test_row_1_a_flag_beats_options_from_a_file(prefect_server, fake_openai, tmp_path):
    """``fanout call --options FILE --max-tokens 7``: the flag wins, the file fills the rest."""
    key = uid()
    options = tmp_path / "run.json"
    options.write_text(json.dumps({"max_tokens": 50, "temperature": 0.25}))
    env = prefect_server.env(OPENAI_BASE_URL=fake_openai.base_url, OPENAI_API_KEY="sk-test")
    env.pop("FANOUT_MODEL", None)
    done = subprocess.run(
        [sys.executable, "-m", "prefect_fanout.cli", "call", f"row one {key}", "--model", "m"]
        + ["--options", str(options), "--max-tokens", "7", "--no-cache"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (request,) = fake_openai.requests(key)
    assert request.body["max_tokens"] == 7  # the flag
    assert request.body["temperature"] == 0.25  # the file, where no flag is given


def test_row_1_a_bad_options_file_is_exit_2_naming_file_and_field(prefect_server, tmp_path):
    options = tmp_path / "run.json"
    options.write_text(json.dumps({"max_tokens": 0}))
    done = subprocess.run(
        [sys.executable, "-m", "prefect_fanout.cli", "call", "hi", "--model", "test"]
        + ["--options", str(options)],
        env=prefect_server.env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert str(options) in done.stderr and "max_tokens" in done.stderr


def test_row_2_options_passed_in_python_beat_the_plan_config(fake_openai, endpoint):
    key = uid()
    plan = plan_with({"max_tokens": 30, "temperature": 1.0}, key=key)
    dispatch_plan(plan, options=RunOptions(endpoint=endpoint, max_tokens=77, cache="off"))
    (request,) = fake_openai.requests(key)
    assert request.body["max_tokens"] == 77  # the options
    assert request.body["temperature"] == 1.0  # the plan, where the options say nothing


def test_row_3_the_plan_config_beats_the_agent_profile(fake_openai, endpoint):
    key = uid()
    plan = plan_with({"max_tokens": 30}, {"writer": {"max_tokens": 10, "temperature": 0.7}}, key)
    dispatch_plan(plan, options=RunOptions(endpoint=endpoint, cache="off"))
    (request,) = fake_openai.requests(key)
    assert request.body["max_tokens"] == 30  # the plan's config
    assert request.body["temperature"] == 0.7  # the profile, where the plan says nothing


def test_row_3_run_plan_honours_the_plan_config_without_a_resolver(fake_openai, endpoint):
    from prefect import flow

    key = uid()
    plan = plan_with({"max_tokens": 33, "temperature": 0.4, "max_concurrency": 3}, key=key)

    @flow
    def mine() -> Any:
        return run_plan(plan, options=RunOptions(endpoint=endpoint, cache="off"))

    result = mine()
    assert result.status == "completed"
    (request,) = fake_openai.requests(key)
    assert (request.body["max_tokens"], request.body["temperature"]) == (33, 0.4)


def test_row_4_the_agent_profile_beats_the_endpoint_block(fake_openai):
    endpoint = LLMEndpoint(base_url=fake_openai.base_url, default_model="endpoint-model")
    resolver = Resolver(RunOptions(endpoint=endpoint))
    assert resolver.model(AgentProfile(name="p", model="profile-model")) == "profile-model"


def test_row_5_the_endpoint_block_beats_the_built_in_default(fake_openai):
    endpoint = LLMEndpoint(
        base_url="https://api.openai.com/v1", api_key="sk-x", default_model="endpoint-model"
    )
    assert Resolver(RunOptions(endpoint=endpoint)).model(AgentProfile(name="p")) == "endpoint-model"
    bare = LLMEndpoint(base_url="https://api.openai.com/v1", api_key="sk-x")
    assert Resolver(RunOptions(endpoint=bare)).model(AgentProfile(name="p")) == "gpt-4o-mini"


def test_row_6_built_in_defaults_when_nothing_is_set():
    options = merge_options(None, {}, RunOptions())
    assert options == RunOptions()
    assert (options.workers(8), options.policy(), options.runner()) == (8, "partial", "thread")
    assert options.cache_options().mode == "on"


def test_merge_takes_each_field_from_the_highest_layer_that_sets_it():
    merged = merge_options(
        {"max_tokens": 5},
        RunOptions(max_tokens=9, temperature=0.1),
        {"temperature": 0.9, "max_workers": 3},
    )
    assert (merged.max_tokens, merged.temperature, merged.max_workers) == (5, 0.1, 3)


def test_bad_options_name_the_field():
    with pytest.raises(ValidationError, match="max_workers"):
        RunOptions(max_workers=0)
    with pytest.raises(ConfigurationError, match="tokens_per_minute"):
        RunOptions.of({"tokens_per_minute": -1})
    with pytest.raises(ConfigurationError, match="colour"):
        merge_options({"colour": "blue"})
