"""Tests of the fake OpenAI server, driven through the real `openai` client over HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import PrefectServer
from tests.fakeopenai import (
    MODELS,
    Error,
    FakeOpenAI,
    Hang,
    Malformed,
    Reply,
    example_for_schema,
)


def client_for(fake: FakeOpenAI, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0, **kwargs)


def ask(client: openai.OpenAI, prompt: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model=kwargs.pop("model", "gpt-4o-mini"),
        messages=[{"role": "user", "content": prompt}],
        **kwargs,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


def call_or_error(client: openai.OpenAI, prompt: str) -> object:
    try:
        return ask(client, prompt)
    except openai.APIError as exc:
        return exc


@pytest.fixture
def client(fake_openai: FakeOpenAI) -> openai.OpenAI:
    return client_for(fake_openai)


def test_default_reply_echoes_last_user_message(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    completion = client.chat.completions.create(
        model="my-model",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {"role": "user", "content": [{"type": "text", "text": "hello fake world"}]},
        ],
        temperature=0.2,
        max_tokens=50,
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "my-model"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo: hello fake world"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 + 2 + 2 + 3
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 13
    assert fake_openai.total == 1


def test_scripted_replies_are_consumed_in_order(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    fake_openai.script(
        "alpha",
        Reply("first", prompt_tokens=7, completion_tokens=3, finish_reason="length"),
        Reply("second"),
    )
    first = ask(client, "task alpha please")
    assert first.choices[0].message.content == "first"
    assert first.choices[0].finish_reason == "length"
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (7, 3)
    assert first.usage.total_tokens == 10
    assert ask(client, "alpha again").choices[0].message.content == "second"
    assert ask(client, "alpha, exhausted").choices[0].message.content == "echo: alpha, exhausted"
    assert [r.key for r in fake_openai.requests()] == ["alpha"] * 3


def test_longest_key_wins_and_rescripting_replaces(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    fake_openai.script("doc", Reply("short key"), Reply("short key 2"))
    fake_openai.script("doc-7", Reply("long key"))
    assert ask(client, "summarise doc-7").choices[0].message.content == "long key"
    assert ask(client, "summarise doc-8").choices[0].message.content == "short key"
    fake_openai.script("doc", Reply("replaced"))
    assert ask(client, "summarise doc-9").choices[0].message.content == "replaced"
    assert ask(client, "summarise doc-10").choices[0].message.content == "echo: summarise doc-10"
    assert [r.key for r in fake_openai.requests()] == ["doc-7", "doc", "doc", "doc"]


def test_rate_limit_error_exposes_retry_after(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    fake_openai.script(
        "busy",
        Error(429, "slow down", code="rate_limit_exceeded", retry_after=2, retry_after_ms=1500),
        Error(429, retry_after="Wed, 21 Oct 2037 07:28:00 GMT"),
    )
    with pytest.raises(openai.RateLimitError) as raised:
        ask(client, "busy")
    error = raised.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "rate_limit_error"
    assert "slow down" in error.message
    assert error.response.headers["retry-after"] == "2"
    assert error.response.headers["retry-after-ms"] == "1500"

    with pytest.raises(openai.RateLimitError) as raised:
        ask(client, "busy")
    assert raised.value.response.headers["retry-after"] == "Wed, 21 Oct 2037 07:28:00 GMT"


def test_server_error_and_bad_request_with_code(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    fake_openai.script("boom", Error(500, "kaput"))
    fake_openai.script("huge", Error(400, "too long", code="context_length_exceeded"))
    with pytest.raises(openai.InternalServerError) as server_error:
        ask(client, "boom")
    assert server_error.value.status_code == 500
    assert server_error.value.type == "server_error"
    with pytest.raises(openai.BadRequestError) as bad_request:
        ask(client, "huge")
    assert bad_request.value.code == "context_length_exceeded"
    assert bad_request.value.type == "invalid_request_error"
    assert bad_request.value.response.json()["error"] == {
        "message": "too long",
        "type": "invalid_request_error",
        "code": "context_length_exceeded",
        "param": None,
    }
    assert ask(client, "boom").choices[0].message.content == "echo: boom"


def test_malformed_body_fails_to_parse(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    # openai parses application/json bodies with a bare json.loads, so a broken body surfaces
    # as json.JSONDecodeError (a ValueError), not as an openai.OpenAIError.
    fake_openai.script("garbled", Malformed())
    with pytest.raises(json.JSONDecodeError):
        ask(client, "garbled")
    assert ask(client, "garbled").choices[0].message.content == "echo: garbled"


def test_hang_times_out_and_reset_is_fast(fake_openai: FakeOpenAI) -> None:
    fake_openai.script("stuck", Hang())
    client = client_for(fake_openai, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client, "stuck")
    assert time.monotonic() - started < 5
    # The server notices the disconnect and ends the handler.
    wait_until(lambda: fake_openai.requests("stuck")[0].finished is not None)

    fake_openai.script("stuck", Hang(seconds=30))
    other = client_for(fake_openai, timeout=30)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(call_or_error(other, "stuck")))
    worker.start()
    wait_until(lambda: fake_openai.count("stuck") == 2)
    started = time.monotonic()
    fake_openai.reset()
    assert time.monotonic() - started < 1.5
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert isinstance(outcome[0], openai.InternalServerError)  # released hangs answer 504
    assert fake_openai.total == 0
    assert ask(client, "stuck").choices[0].message.content == "echo: stuck"


def test_stop_is_prompt_with_hung_requests() -> None:
    fake = FakeOpenAI().start()
    fake.script("forever", Hang(), Hang())
    client = client_for(fake, timeout=60)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ask(client, "forever")
        except openai.APIError as exc:
            errors.append(exc)

    workers = [threading.Thread(target=call) for _ in range(2)]
    for worker in workers:
        worker.start()
    wait_until(lambda: fake.total == 2)
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 2
    for worker in workers:
        worker.join(timeout=5)
        assert not worker.is_alive()
    assert len(errors) == 2


def test_json_schema_default_answer_is_valid(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    schema = {
        "type": "object",
        "$defs": {
            "Step": {
                "type": "object",
                "properties": {
                    "title": {"type": "string", "minLength": 12},
                    "depends_on": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                    "kind": {"enum": ["research", "write", "review"]},
                },
                "required": ["title", "kind"],
                "additionalProperties": False,
            }
        },
        "properties": {
            "note": {"anyOf": [{"type": "null"}, {"type": "string", "format": "date-time"}]},
            "plan": {
                "type": "object",
                "properties": {
                    "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "minItems": 1},
                    "confidence": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                    "final": {"type": "boolean"},
                    "version": {"const": 2},
                },
                "required": ["steps", "confidence", "version"],
            },
        },
        "required": ["plan"],
        "additionalProperties": False,
    }
    completion = ask(
        client,
        "make a plan",
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "plan", "schema": schema, "strict": False},
        },
    )
    document = json.loads(completion.choices[0].message.content or "")
    jsonschema.Draft202012Validator(schema).validate(document)
    assert list(document) == ["plan", "note"]  # required first, optional included
    assert document["plan"]["steps"][0]["kind"] == "research"
    assert isinstance(document["note"], str)

    json_mode = ask(client, "anything", response_format={"type": "json_object"})
    assert json.loads(json_mode.choices[0].message.content or "") == {}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "exclusiveMinimum": 5, "maximum": 9},
        {"type": "integer", "maximum": -3},
        {"type": "number", "minimum": 2.5},
        {"type": ["null", "string"], "maxLength": 3},
        {"type": "array", "items": {"type": "string", "format": "email"}, "minItems": 2},
        {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
        {"allOf": [{"properties": {"a": {"type": "string"}}}, {"properties": {"b": {}}}]},
        {
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {
                        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                        "next": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                    },
                    "required": ["next"],
                }
            },
            "$ref": "#/$defs/Node",
        },
    ],
)
def test_example_for_schema_edge_cases(schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema).validate(example_for_schema(schema))


def test_count_and_requests_record_everything(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    fake_openai.script("beta", Reply("b"))
    ask(client, "one beta")
    ask(client, "two beta", temperature=0)
    ask(client, "gamma")
    assert fake_openai.total == 3
    assert fake_openai.count("beta") == 2
    assert fake_openai.count("gamma") == 1
    assert fake_openai.count("delta") == 0
    first, second = fake_openai.requests("beta")
    assert (first.key, first.prompt) == ("beta", "one beta")
    assert second.key == "beta"  # still matches once its steps are used up (default reply)
    assert ask(client, "beta?").choices[0].message.content == "echo: beta?"
    assert second.body["temperature"] == 0
    assert second.body["messages"] == [{"role": "user", "content": "two beta"}]
    assert first.headers["authorization"] == "Bearer test"
    assert first.finished is not None and first.arrived <= first.finished
    prompts = [r.prompt for r in fake_openai.requests()]
    assert prompts == ["one beta", "two beta", "gamma", "beta?"]
    fake_openai.reset()
    assert (fake_openai.total, fake_openai.max_in_flight, fake_openai.requests()) == (0, 0, [])
    assert ask(client, "beta").choices[0].message.content == "echo: beta"


def test_max_in_flight_counts_concurrent_requests(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    fake_openai.script("parallel", *[Reply("done", latency=0.3)] * 3)
    barrier = threading.Barrier(3)
    answers: list[str | None] = []

    def call(index: int) -> None:
        barrier.wait()
        answers.append(ask(client, f"parallel {index}").choices[0].message.content)

    workers = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=10)
    assert answers == ["done"] * 3
    assert fake_openai.max_in_flight >= 3
    ask(client, "sequential")
    assert fake_openai.max_in_flight == 3


def test_default_latency_and_streaming(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    fake_openai.default_latency = 0.2
    ask(client, "slow")
    (record,) = fake_openai.requests("slow")
    assert record.finished is not None and record.finished - record.arrived >= 0.2

    fake_openai.default_latency = 0.0
    stream = ask(client, "streamed", stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: streamed"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 2


def test_models_health_and_invalid_requests(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == list(MODELS)
    root = fake_openai.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/health").json() == {"status": "ok"}

    url = f"{fake_openai.base_url}/chat/completions"
    no_body = httpx.post(url)
    assert no_body.status_code == 400
    assert no_body.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(url, content=b"{not json").status_code == 400
    no_messages = httpx.post(url, json={"model": "m"})
    assert no_messages.status_code == 400
    assert no_messages.json()["error"]["param"] == "messages"
    no_model = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}]})
    assert no_model.json()["error"]["param"] == "model"
    assert fake_openai.total == 4

    missing = httpx.get(f"{fake_openai.base_url}/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="m", input="x")


def test_standalone_module_serves(tmp_path: Any) -> None:
    from tests.conftest import free_port

    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakeopenai", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert f"http://127.0.0.1:{port}/v1" in process.stdout.readline()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        assert ask(client, "hi").choices[0].message.content == "echo: hi"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.server
def test_prefect_server_runs_a_flow(prefect_server: PrefectServer) -> None:
    from prefect import flow, task
    from prefect.client.orchestration import get_client

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow(name="fakeopenai-smoke")
    def smoke(x: int) -> int:
        return double(x) + 1

    state = smoke(20, return_state=True)
    assert state.is_completed()
    assert state.result() == 41
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None

    with get_client(sync_client=True) as prefect_client:
        assert str(prefect_client.api_url).rstrip("/") == prefect_server.api_url
        flow_run = prefect_client.read_flow_run(flow_run_id)
    assert flow_run.id == flow_run_id
    assert flow_run.state is not None and flow_run.state.is_completed()

    assert httpx.get(prefect_server.ui_url, timeout=10).status_code == 200
    inspect = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "inspect", str(flow_run_id)],
        env=prefect_server.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert inspect.returncode == 0, inspect.stderr
    assert str(flow_run_id) in inspect.stdout
