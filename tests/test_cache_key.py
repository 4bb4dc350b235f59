"""The cache key: what is in it, what is not, and why (no server needed)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, SecretStr

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.call.task import build_request
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.request import KEY_FIELDS, NOT_KEY_FIELDS, CallRequest
from prefect_fanout.options import RunOptions

ENDPOINT = LLMEndpoint(base_url="http://127.0.0.1:9/v1", api_key=SecretStr("sk-secret-1"))


def key_of(prompt: str = "hello", **kwargs: object) -> str:
    agent = kwargs.pop("agent", AgentProfile(name="a"))
    endpoint = kwargs.pop("endpoint", ENDPOINT)
    return build_request(
        prompt,
        agent=agent,
        options=RunOptions(endpoint=endpoint, model=kwargs.pop("model", "m")),
        **kwargs,
    ).cache_key()


def test_every_request_field_is_either_in_the_key_or_deliberately_excluded():
    fields = set(CallRequest.model_fields)
    assert KEY_FIELDS.isdisjoint(NOT_KEY_FIELDS)
    assert fields == KEY_FIELDS | NOT_KEY_FIELDS, (
        f"classify new fields: {sorted(fields - KEY_FIELDS - NOT_KEY_FIELDS)}"
    )


def test_key_is_stable():
    assert key_of() == key_of()


class Schema1(BaseModel):
    a: int


class Schema2(BaseModel):
    b: str


def test_what_changes_the_answer_changes_the_key():
    base = key_of()
    assert key_of(model="other") != base
    assert key_of(agent=AgentProfile(name="a", system_prompt="different")) != base
    assert key_of(agent=AgentProfile(name="a", temperature=0.7)) != base
    assert key_of(agent=AgentProfile(name="a", max_tokens=10)) != base
    assert key_of(agent=AgentProfile(name="a", output_schema=Schema1)) != base
    assert key_of(agent=AgentProfile(name="a", output_schema=Schema1)) != key_of(
        agent=AgentProfile(name="a", output_schema=Schema2)
    )
    assert key_of(agent=AgentProfile(name="a", prompt_template="Q: {input}")) != base
    assert key_of(system="override") != base
    other_url = LLMEndpoint(base_url="http://127.0.0.1:10/v1", api_key=SecretStr("sk-secret-1"))
    assert key_of(endpoint=other_url) != base


def test_what_does_not_change_the_answer_keeps_the_key():
    base = key_of()
    other_key = LLMEndpoint(base_url="http://127.0.0.1:9/v1", api_key=SecretStr("sk-other"))
    assert key_of(endpoint=other_key) == base
    assert key_of(item_id="item-7") == base
    assert key_of(agent=AgentProfile(name="a", max_attempts=9, timeout_seconds=3)) == base
    assert key_of(agent=AgentProfile(name="a", input_price_per_million=9.0)) == base
    assert key_of(tags=("partition:x",)) == base


def test_key_never_contains_the_api_key_or_the_flow_run():
    request = build_request(
        "hello",
        agent="default",
        options=RunOptions(endpoint=ENDPOINT, model="m"),
    )
    assert "sk-secret-1" not in request.model_dump_json()
    assert request.cache_key().startswith("fanout-")


def test_upstream_context_is_part_of_the_key():
    request = build_request(
        "hello",
        agent="default",
        options=RunOptions(endpoint=ENDPOINT, model="m"),
    )
    with_a = request.with_context({"up": "answer A"})
    with_b = request.with_context({"up": "answer B"})
    assert len({request.cache_key(), with_a.cache_key(), with_b.cache_key()}) == 3
    assert "## Upstream results\n\n### up\nanswer A" in with_a.prompt


@given(st.text(max_size=200), st.text(max_size=200))
def test_two_different_prompts_never_share_a_key(first: str, second: str):
    if first != second:
        assert key_of(first) != key_of(second)


def test_equivalent_base_urls_share_one_key():
    def key_at(url: str) -> str:
        endpoint = LLMEndpoint(base_url=url, api_key=SecretStr("sk-secret-1"))
        return key_of(endpoint=endpoint)

    same = {
        key_at(url)
        for url in (
            "http://127.0.0.1:9/v1",
            "http://127.0.0.1:9/v1/",
            "http://localhost:9/v1",
            "HTTP://LOCALHOST:9/v1/",
        )
    }
    assert len(same) == 1
    assert key_at("http://127.0.0.1:10/v1") not in same  # another port is another server
    assert key_at("http://127.0.0.1:9/V1") not in same  # paths keep their case
