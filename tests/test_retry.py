"""Retries of the agent call, driven by the real openai client against the fake server.

These run `execute_request` directly (no Prefect) so each case is fast; the
Prefect-level behaviour is in test_call_task.py.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from pydantic import BaseModel, SecretStr

from prefect_fanout import build_request
from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.errors import (
    CallTimeoutError,
    NonRetryableAPIError,
    OutputValidationError,
    RetriesExhaustedError,
    RetryAfterTooLongError,
)
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.execute import execute_request
from prefect_fanout.llm.pricing import cost_usd
from prefect_fanout.llm.transport import OpenAITransport
from prefect_fanout.options import RunOptions
from tests.conftest import free_port
from tests.fakeopenai import Error, FakeOpenAI, Hang, Malformed, Reply

LOG = logging.getLogger("tests.retry")


def fast_profile(**overrides: object) -> AgentProfile:
    settings: dict[str, object] = {
        "name": "t",
        "backoff_initial_seconds": 0.01,
        "backoff_max_seconds": 0.05,
        "max_attempts": 4,
    }
    settings.update(overrides)
    return AgentProfile(**settings)


def endpoint_for(fake: FakeOpenAI) -> LLMEndpoint:
    return LLMEndpoint(base_url=fake.base_url, api_key=SecretStr("sk-test-secret"))


def run(
    fake: FakeOpenAI, prompt: str, profile: AgentProfile | None = None, model: str = "gpt-4o-mini"
):
    endpoint = endpoint_for(fake)
    request = build_request(
        prompt,
        agent=profile or fast_profile(),
        options=RunOptions(endpoint=endpoint, model=model),
    )
    return execute_request(request, OpenAITransport(endpoint), LOG)


def token() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
@pytest.mark.parametrize("failures", [1, 3])
def test_transient_errors_make_exactly_k_plus_one_requests(fake_openai, status, failures):
    key = token()
    fake_openai.script(key, *[Error(status) for _ in range(failures)], Reply("fine"))
    result = run(fake_openai, f"{key} hello")
    assert fake_openai.count(key) == failures + 1
    assert result.attempts == failures + 1
    assert result.output == "fine"


@pytest.mark.parametrize(
    "error",
    [
        Error(400),
        Error(401),
        Error(403),
        Error(404),
        Error(422),
        Error(400, code="context_length_exceeded", message="maximum context length"),
        Error(429, code="insufficient_quota", message="quota"),
    ],
    ids=["400", "401", "403", "404", "422", "context-length", "quota"],
)
def test_permanent_errors_make_exactly_one_request(fake_openai, error):
    key = token()
    fake_openai.script(key, error, Reply("never reached"))
    with pytest.raises(NonRetryableAPIError) as info:
        run(fake_openai, f"{key} hello")
    assert fake_openai.count(key) == 1
    assert f"HTTP {error.status}" in str(info.value)
    assert "not retried" in str(info.value)


def test_budget_is_exact_when_failures_outlast_it(fake_openai):
    key = token()
    fake_openai.script(key, *[Error(500) for _ in range(10)])
    with pytest.raises(RetriesExhaustedError) as info:
        run(fake_openai, f"{key} hello", fast_profile(max_attempts=3))
    assert fake_openai.count(key) == 3
    assert info.value.attempts == 3
    assert "3 attempt(s)" in str(info.value) and "HTTP 500" in str(info.value)


def test_retry_after_seconds_is_honoured(fake_openai):
    key = token()
    fake_openai.script(key, Error(429, retry_after=1), Reply("ok"))
    started = time.monotonic()
    run(fake_openai, f"{key} hello")
    records = fake_openai.requests(key)
    assert len(records) == 2
    assert records[1].arrived - records[0].finished >= 1.0 - 0.02
    assert time.monotonic() - started >= 1.0


def test_retry_after_ms_takes_precedence(fake_openai):
    key = token()
    fake_openai.script(key, Error(503, retry_after_ms=400, retry_after=30), Reply("ok"))
    run(fake_openai, f"{key} hello", fast_profile(max_retry_after_seconds=5))
    first, second = fake_openai.requests(key)
    gap = second.arrived - first.finished
    assert 0.38 <= gap < 5


def test_retry_after_longer_than_cap_fails_fast(fake_openai):
    key = token()
    fake_openai.script(key, Error(429, retry_after=120), Reply("ok"))
    started = time.monotonic()
    with pytest.raises(RetryAfterTooLongError) as info:
        run(fake_openai, f"{key} hello", fast_profile(max_retry_after_seconds=5))
    assert time.monotonic() - started < 5
    assert fake_openai.count(key) == 1
    assert "120.0s" in str(info.value) and "cap of 5.0s" in str(info.value)


def test_hung_call_ends_with_a_timeout_error(fake_openai):
    key = token()
    fake_openai.script(key, Hang(30), Hang(30))
    with pytest.raises(CallTimeoutError) as info:
        run(fake_openai, f"{key} hello", fast_profile(timeout_seconds=0.5, max_attempts=2))
    assert fake_openai.count(key) == 2
    assert "timed out after 0.5s" in str(info.value)


def test_timeout_is_retried_then_succeeds(fake_openai):
    key = token()
    fake_openai.script(key, Hang(30), Reply("after hang"))
    result = run(fake_openai, f"{key} hello", fast_profile(timeout_seconds=0.5))
    assert result.output == "after hang" and result.attempts == 2


def test_connection_refused_is_retried_up_to_the_budget():
    endpoint = LLMEndpoint(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key=SecretStr("k"))
    profile = fast_profile(max_attempts=2)
    request = build_request(
        "hello",
        agent=profile,
        options=RunOptions(endpoint=endpoint, model="gpt-4o-mini"),
    )
    with pytest.raises(RetriesExhaustedError) as info:
        execute_request(request, OpenAITransport(endpoint), LOG)
    assert info.value.attempts == 2
    assert "connection error" in str(info.value)


def test_malformed_body_is_a_clear_error(fake_openai):
    key = token()
    fake_openai.script(key, Malformed())
    with pytest.raises(NonRetryableAPIError) as info:
        run(fake_openai, f"{key} hello")
    assert fake_openai.count(key) == 1
    assert "malformed response" in str(info.value)


class Verdict(BaseModel):
    label: str
    score: int


def test_structured_output_is_requested_and_validated(fake_openai):
    key = token()
    result = run(fake_openai, f"{key} classify", fast_profile(output_schema=Verdict))
    assert isinstance(result.output, Verdict)
    body = fake_openai.requests(key)[0].body
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"] == Verdict.model_json_schema()


def test_invalid_structured_output_is_reasked_with_the_error(fake_openai):
    key = token()
    fake_openai.script(key, Reply('{"label": "x"}'), Reply('{"label": "x", "score": 3}'))
    result = run(fake_openai, f"{key} classify", fast_profile(output_schema=Verdict))
    assert result.output == Verdict(label="x", score=3)
    assert result.attempts == 2
    reask = fake_openai.requests(key)[1].body["messages"]
    assert reask[-2] == {"role": "assistant", "content": '{"label": "x"}'}
    assert "score" in reask[-1]["content"] and "did not validate" in reask[-1]["content"]


def test_reask_loop_is_bounded_and_quotes_the_last_answer(fake_openai):
    key = token()
    fake_openai.script(key, *[Reply(f"not json {i}") for i in range(10)])
    with pytest.raises(OutputValidationError) as info:
        run(
            fake_openai,
            f"{key} classify",
            fast_profile(output_schema=Verdict, max_validation_retries=2),
        )
    assert fake_openai.count(key) == 3
    assert "not json 2" in str(info.value)


def test_json_schema_from_a_file_validates_into_a_dict(fake_openai):
    key = token()
    schema = {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["tags"],
    }
    fake_openai.script(key, Reply('{"tags": 5}'), Reply('{"tags": ["a"]}'))
    result = run(fake_openai, f"{key} tag", fast_profile(output_schema=schema))
    assert result.output == {"tags": ["a"]}
    assert "tags" in fake_openai.requests(key)[1].body["messages"][-1]["content"]


def test_usage_comes_from_the_server_and_the_table_prices_only_openai(fake_openai):
    key = token()
    fake_openai.script(key, Reply("x", prompt_tokens=1000, completion_tokens=500))
    result = run(fake_openai, f"{key} hi", model="gpt-4o-mini")
    assert (result.prompt_tokens, result.completion_tokens) == (1000, 500)
    # a server that is not OpenAI's is not priced from OpenAI's table, whatever the name
    assert result.cost_usd is None
    at_openai = cost_usd("gpt-4o-mini", 1000, 500, base_url="https://api.openai.com/v1")
    assert at_openai == pytest.approx((1000 * 0.15 + 500 * 0.60) / 1e6)
    assert result.latency_s > 0 and result.cached is False


def test_unknown_model_price_is_null_not_zero(fake_openai):
    key = token()
    result = run(fake_openai, f"{key} hi", model="my-local-llama")
    assert result.prompt_tokens > 0
    assert result.cost_usd is None


def test_profile_price_overrides_the_table(fake_openai):
    key = token()
    fake_openai.script(key, Reply("x", prompt_tokens=2_000_000, completion_tokens=1_000_000))
    profile = fast_profile(input_price_per_million=1.0, output_price_per_million=2.0)
    result = run(fake_openai, f"{key} hi", profile, model="my-local-llama")
    assert result.cost_usd == pytest.approx(4.0)


def test_api_key_never_reaches_the_request_model(fake_openai):
    key = token()
    endpoint = endpoint_for(fake_openai)
    request = build_request(
        f"{key} hi",
        agent=fast_profile(),
        options=RunOptions(endpoint=endpoint, model="gpt-4o"),
    )
    assert "sk-test-secret" not in request.model_dump_json()
    execute_request(request, OpenAITransport(endpoint), LOG)
    headers = fake_openai.requests(key)[0].headers
    assert headers.get("authorization") == "Bearer sk-test-secret"
