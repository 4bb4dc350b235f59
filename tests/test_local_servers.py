"""Local OpenAI-compatible servers, emulated by the fake: structured-output styles, the
model that answered, pricing, truncation, extra_body, merged system prompts and the
usage of failed asks.

These run ``execute_request`` directly (no Prefect) against the real ``openai`` client.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_fanout.agents import resolver as resolver_module
from prefect_fanout.agents.profiles import BUILTIN_PROFILES, AgentProfile
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.errors import (
    ConfigurationError,
    NonRetryableAPIError,
    OutputValidationError,
    TruncatedOutputError,
)
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.execute import execute_request
from prefect_fanout.llm.pricing import cost_usd
from prefect_fanout.llm.transport import forget_learned_styles, learned_style
from prefect_fanout.options import RunOptions
from prefect_fanout.usage import CallRecord, Ledger
from tests.fakeopenai import FakeOpenAI, Reply, format_style
from tests.map_helpers import endpoint_for

LOG = logging.getLogger("tests.local_servers")

SCHEMA: dict[str, Any] = {
    "title": "Fact",
    "type": "object",
    "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["name", "year"],
    "additionalProperties": False,
}
VALID = json.dumps({"name": "Ada", "year": 1843})


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    forget_learned_styles()
    resolver_module.forget_served_models()
    yield
    forget_learned_styles()
    resolver_module.forget_served_models()


def profile(**fields: Any) -> AgentProfile:
    settings: dict[str, Any] = {
        "name": "x",
        "output_schema": SCHEMA,
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.02,
    }
    settings.update(fields)
    return AgentProfile(**settings)


def ask(
    fake: FakeOpenAI,
    prompt: str,
    agent: AgentProfile,
    model: str | None = "local-model",
    **endpoint_fields: Any,
):
    resolver = Resolver(RunOptions(endpoint=endpoint_for(fake, **endpoint_fields), model=model))
    request = resolver.request(prompt, agent=agent)
    return execute_request(request, resolver.transport(request.model), LOG)


def key() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------ styles


def test_auto_falls_back_once_on_a_500_naming_response_format_and_remembers(fake_openai):
    fake_openai.emulate(refused_formats={"json_schema"})
    first, second = key(), key()
    result = ask(fake_openai, f"{first} who?", profile())
    assert result.output == {"name": "", "year": 0} or set(result.output) == {"name", "year"}
    styles = [format_style(r.body) for r in fake_openai.requests(first)]
    assert styles == ["json_schema", "json_object+schema"]  # the 500 was not retried
    assert result.attempts == 2
    assert learned_style(fake_openai.base_url) == "json_object+schema"

    ask(fake_openai, f"{second} who?", profile())
    assert [format_style(r.body) for r in fake_openai.requests(second)] == ["json_object+schema"]


def test_concurrent_first_calls_send_the_refused_style_once(fake_openai):
    from concurrent.futures import ThreadPoolExecutor

    fake_openai.emulate(refused_formats={"json_schema"})
    run = key()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: ask(fake_openai, f"{run} {n}", profile()), range(8)))
    assert len(results) == 8
    styles = [format_style(r.body) for r in fake_openai.requests(run)]
    assert styles.count("json_schema") == 1 and styles.count("json_object+schema") == 8


def test_auto_walks_down_to_prompt_only_when_every_format_is_refused(fake_openai):
    fake_openai.emulate(refused_formats={"json_schema", "json_object+schema"}, refusal_status=400)
    k = key()
    fake_openai.script(k, Reply(VALID))  # only the prompt-only request reaches a reply
    result = ask(fake_openai, f"{k} who?", profile())
    assert result.output == {"name": "Ada", "year": 1843}
    sent = fake_openai.requests(k)
    assert [format_style(r.body) for r in sent] == ["json_schema", "json_object+schema", None]
    assert '"required": ["name", "year"]' in sent[-1].prompt  # the schema went in the prompt


def test_an_explicit_style_refused_by_the_server_fails_at_once_without_retries(fake_openai):
    fake_openai.emulate(refused_formats={"json_schema"})
    k = key()
    with pytest.raises(NonRetryableAPIError, match="response_format") as caught:
        ask(fake_openai, f"{k} who?", profile(structured_output="json_schema"))
    assert caught.value.attempts == 1 and fake_openai.count(k) == 1


@pytest.mark.parametrize(
    ("style", "expected_format"),
    [
        ("json_schema", {"type": "json_schema"}),
        ("json_object+schema", {"type": "json_object", "schema": SCHEMA}),
        ("json_object", {"type": "json_object"}),
        ("none", None),
    ],
)
def test_each_style_sends_its_own_request(fake_openai, style, expected_format):
    k = key()
    fake_openai.script(k, Reply(VALID))
    result = ask(fake_openai, f"{k} who?", profile(structured_output=style))
    assert result.output == {"name": "Ada", "year": 1843}
    (sent,) = fake_openai.requests(k)
    got = sent.body.get("response_format")
    if expected_format is None:
        assert got is None
    else:
        assert {k2: got[k2] for k2 in expected_format} == expected_format
    schema_in_prompt = "matches this JSON schema" in sent.prompt
    assert schema_in_prompt == (style in ("json_object", "none"))


def test_the_endpoint_sets_the_style_and_a_profile_overrides_it(fake_openai):
    k1, k2 = key(), key()
    fake_openai.script(k2, Reply(VALID))
    ask(fake_openai, f"{k1} who?", profile(), structured_output="json_object+schema")
    ask(
        fake_openai,
        f"{k2} who?",
        profile(structured_output="none"),
        structured_output="json_object+schema",
    )
    assert format_style(fake_openai.requests(k1)[0].body) == "json_object+schema"
    assert format_style(fake_openai.requests(k2)[0].body) is None


def test_an_unknown_style_is_a_configuration_error():
    with pytest.raises(ValueError, match="structured_output must be one of"):
        AgentProfile(name="x", structured_output="xml")


# ------------------------------------------------------------------ model and price


def test_the_model_the_server_reports_is_recorded_and_not_priced_from_the_table(fake_openai):
    fake_openai.emulate(reported_model="gemma-3-270m")
    result = ask(fake_openai, f"{key()} hi", profile(output_schema=None), model="gpt-4o-mini")
    assert result.model == "gemma-3-270m"
    assert result.cost_usd is None  # a local server is not OpenAI, whatever it answers to
    priced = ask(
        fake_openai,
        f"{key()} hi",
        profile(output_schema=None, input_price_per_million=1.0, output_price_per_million=2.0),
    )
    assert priced.cost_usd == pytest.approx(
        (priced.prompt_tokens * 1.0 + priced.completion_tokens * 2.0) / 1e6
    )


def test_the_price_table_applies_only_at_openais_base_url():
    assert cost_usd("gpt-4o-mini", 1000, 0, base_url="https://api.openai.com/v1") > 0
    assert cost_usd("gpt-4o-mini", 1000, 0, base_url="http://127.0.0.1:8080/v1") is None
    assert cost_usd("gpt-4o-mini", 1000, 0, 1.0, 1.0, base_url="http://127.0.0.1:1/v1") > 0


def test_with_no_model_configured_the_only_served_model_is_used(fake_openai):
    fake_openai.emulate(models=("gemma-3-270m",))
    k = key()
    result = ask(fake_openai, f"{k} hi", profile(output_schema=None), model=None)
    assert fake_openai.requests(k)[0].body["model"] == "gemma-3-270m"
    assert result.model == "gemma-3-270m"


def test_several_served_models_and_none_configured_is_a_configuration_error(fake_openai):
    fake_openai.emulate(models=("a-model", "b-model"))
    with pytest.raises(ConfigurationError, match="--model") as caught:
        ask(fake_openai, f"{key()} hi", profile(output_schema=None), model=None)
    assert "default_model" in str(caught.value) and "a-model, b-model" in str(caught.value)
    # the endpoint's default_model settles it
    k = key()
    ask(fake_openai, f"{k} hi", profile(output_schema=None), model=None, default_model="b-model")
    assert fake_openai.requests(k)[0].body["model"] == "b-model"


# ------------------------------------------------------------------ truncation


def test_a_text_answer_cut_at_max_tokens_completes_with_its_finish_reason(fake_openai, caplog):
    k = key()
    fake_openai.script(k, Reply("a long story that", finish_reason="length"))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        result = ask(fake_openai, f"{k} tell", profile(output_schema=None, max_tokens=4))
    assert result.finish_reason == "length" and result.output == "a long story that"
    assert "cut at max_tokens=4" in caplog.text
    record = CallRecord.from_result("i", result)
    assert record.finish_reason == "length"


def test_a_cut_structured_answer_fails_as_truncated_and_is_not_re_asked_unchanged(fake_openai):
    k = key()
    fake_openai.script(k, Reply('{"name": "Ad', finish_reason="length", completion_tokens=8))
    with pytest.raises(TruncatedOutputError, match="truncated at max_tokens=8") as caught:
        ask(fake_openai, f"{k} who?", profile(max_tokens=8))
    assert fake_openai.count(k) == 1
    error = caught.value
    assert isinstance(error, OutputValidationError)
    assert error.completion_tokens == 8 and error.finish_reason == "length"


def test_a_cut_structured_answer_is_re_asked_with_a_larger_budget_up_to_the_limit(fake_openai):
    k = key()
    fake_openai.script(
        k,
        Reply('{"name": "Ad', finish_reason="length"),
        Reply('{"name": "Ada", "ye', finish_reason="length"),
        Reply(VALID),
    )
    result = ask(fake_openai, f"{k} who?", profile(max_tokens=8, max_tokens_limit=64))
    assert result.output == {"name": "Ada", "year": 1843}
    assert [r.body["max_tokens"] for r in fake_openai.requests(k)] == [8, 16, 32]
    # the same question each time (a larger budget, not the cut answer fed back)
    assert len({json.dumps(r.body["messages"]) for r in fake_openai.requests(k)}) == 1


def test_built_in_agents_have_a_completion_budget():
    assert all(p.max_tokens for p in BUILTIN_PROFILES.values())


def test_max_tokens_and_temperature_overrides_reach_the_request(fake_openai):
    resolver = Resolver(
        RunOptions(endpoint=endpoint_for(fake_openai), model="m", max_tokens=77, temperature=0.0)
    )
    request = resolver.request("hi", agent="coder")
    assert (request.max_tokens, request.temperature) == (77, 0.0)


# ------------------------------------------------------------------ pass-through


def test_extra_body_is_sent_as_is_and_is_part_of_the_cache_key(fake_openai):
    k = key()
    extra = {"repeat_penalty": 1.3, "top_k": 40, "seed": 7, "stop": ["\n\n"]}
    ask(fake_openai, f"{k} hi", profile(output_schema=None, extra_body=extra))
    body = fake_openai.requests(k)[0].body
    assert {name: body[name] for name in extra} == extra
    resolver = Resolver(RunOptions(endpoint=endpoint_for(fake_openai), model="m"))
    plain = resolver.request("hi", agent=profile(output_schema=None)).cache_key()
    tuned = resolver.request("hi", agent=profile(output_schema=None, extra_body=extra))
    assert tuned.cache_key() != plain


def test_the_system_prompt_can_be_merged_into_the_first_user_message(fake_openai):
    k = key()
    agent = profile(output_schema=None, system_prompt="Be brief.", merge_system_prompt=True)
    ask(fake_openai, f"{k} hi", agent)
    messages = fake_openai.requests(k)[0].body["messages"]
    assert messages == [{"role": "user", "content": f"Be brief.\n\n{k} hi"}]
    # or for every agent of an endpoint
    k2 = key()
    ask(fake_openai, f"{k2} hi", profile(output_schema=None), merge_system_prompt=True)
    assert [m["role"] for m in fake_openai.requests(k2)[0].body["messages"]] == ["user"]


def test_agent_files_and_plans_take_extra_body():
    from prefect_fanout.agents.agentsfile import profiles_from_mapping

    agents = profiles_from_mapping({"x": {"extra_body": {"min_p": 0.05}}})
    assert agents["x"].extra_body == {"min_p": 0.05}


# ------------------------------------------------------------------ usage of failed asks


def test_the_usage_of_failed_asks_is_counted(fake_openai):
    k = key()
    fake_openai.script(
        k,
        Reply("not json", prompt_tokens=10, completion_tokens=5),
        Reply("still not", prompt_tokens=20, completion_tokens=6),
    )
    agent = profile(max_validation_retries=1, input_price_per_million=1.0)
    agent = agent.model_copy(update={"output_price_per_million": 1.0})
    with pytest.raises(OutputValidationError) as caught:
        ask(fake_openai, f"{k} who?", agent)
    error = caught.value
    assert (error.prompt_tokens, error.completion_tokens) == (30, 11)
    assert error.cost_usd == pytest.approx(41 / 1e6)
    record = CallRecord.from_error("i", "x", "local-model", error, message=str(error))
    ledger = Ledger.of_records([record])
    assert ledger.failed == 1 and ledger.completion_tokens == 11 and ledger.prompt_tokens == 30


def test_local_servers_get_a_longer_default_timeout_and_explicit_ones_win(fake_openai):
    local = Resolver(RunOptions(endpoint=endpoint_for(fake_openai), model="m"))
    assert local.request("hi", agent=profile(output_schema=None)).timeout_seconds == 600.0
    assert local.request("hi", agent=profile(timeout_seconds=5.0)).timeout_seconds == 5.0
    openai_endpoint = LLMEndpoint(api_key=SecretStr("sk-x"))
    remote = Resolver(RunOptions(endpoint=openai_endpoint, model="gpt-4o-mini"))
    assert remote.request("hi", agent=profile(output_schema=None)).timeout_seconds == 120.0
