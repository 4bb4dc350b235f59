"""Real documents on real servers: inputs over the context (fail, truncate, chunk), the context
read from the server, errors that name their cause, and warnings about misconfigured servers.

The fake server emulates llama-server here: a context it enforces with llama-server's 400,
``/props``, ``/tokenize`` (one token per three characters, so a test can tell it counted), an
answering model that is not the one asked for, and answers with a chat template's end marker.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from prefect_fanout import fan_out, map_corpus
from prefect_fanout.agents import resolver as resolver_module
from prefect_fanout.agents.context import TokenCounter, split_text
from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.call.merge import merge_outputs
from prefect_fanout.errors import ConfigurationError, RetriesExhaustedError
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.execute import execute_request
from prefect_fanout.llm.notices import forget_notices
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.retry import RetryOptions
from prefect_fanout.llm.serverinfo import forget_server_info, server_context
from prefect_fanout.llm.transport import OpenAITransport, forget_learned_styles
from prefect_fanout.options import RunOptions
from tests.fakeopenai import FakeOpenAI, Reply, fake_tokens
from tests.map_helpers import endpoint_for, read_jsonl, tag, write_corpus

LOG = logging.getLogger("tests.long_inputs")
LONG_CHARS = 40_000


@pytest.fixture(autouse=True)
def _fresh_memory() -> Iterator[None]:
    for forget in (forget_server_info, forget_notices, forget_learned_styles):
        forget()
    resolver_module.forget_served_models()
    yield
    for forget in (forget_server_info, forget_notices, forget_learned_styles):
        forget()
    resolver_module.forget_served_models()


def long_text(run: str) -> str:
    """About 40,000 characters of lines, each naming its number (so chunks can be told apart)."""
    lines = [f"{run} line {n:05d}: the quick brown fox jumps over a dog." for n in range(900)]
    text = "\n".join(lines)
    assert len(text) >= LONG_CHARS
    return text[: LONG_CHARS + 100]


def corpus(tmp_path: Path, run: str) -> Path:
    records = [
        {"id": f"{run}-short-1", "text": f"{run} a short note"},
        {"id": f"{run}-long", "text": long_text(run)},
        {"id": f"{run}-short-2", "text": f"{run} another short note"},
    ]
    return write_corpus(tmp_path / "items.jsonl", records)


def rows_by_id(out: Path) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in read_jsonl(out / "final.jsonl")}


# ------------------------------------------------------------------------------ map, end to end


@pytest.mark.server
def test_fail_fails_only_the_long_item_before_any_request(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    fake_openai.emulate(context_tokens=4096)
    summary = map_corpus(
        corpus(tmp_path, run),
        agent="default",
        partition="count:1",
        output_dir=tmp_path / "out",
        options=RunOptions(endpoint=endpoint_for(fake_openai, context_tokens=4096), max_tokens=200),
    )
    rows = rows_by_id(tmp_path / "out")
    failed = rows[f"{run}-long"]
    assert failed["status"] == "failed"
    assert "InputTooLongError" in failed["error"]
    assert f"{run}-long" in failed["error"]  # its id
    assert "context of 4096 tokens" in failed["error"]
    tokens = int(failed["error"].split("the input is ")[1].split(" tokens")[0])
    assert tokens > 4096
    assert [rows[f"{run}-short-{n}"]["status"] for n in (1, 2)] == ["completed", "completed"]
    assert fake_openai.count(run) == 2  # the long item never reached the server
    assert fake_openai.count(f"{run} line 00001") == 0
    assert (summary.completed, summary.failed) == (2, 1)


@pytest.mark.server
@pytest.mark.parametrize("runner", ["thread", "dask"])
def test_truncate_cuts_the_long_item_to_fit_and_says_so(
    runner: str, prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """Also on Dask, where a map otherwise sends its calls to the workers in chunks."""
    if runner == "dask":
        pytest.importorskip("prefect_dask", reason="the dask extra is not installed")
    run = tag()
    fake_openai.emulate(context_tokens=4096, props=True, tokenize=True)
    summary = map_corpus(
        corpus(tmp_path, run),
        agent="default",
        partition="count:1",
        output_dir=tmp_path / "out",
        options=RunOptions(
            endpoint=endpoint_for(fake_openai),
            max_tokens=200,
            long_inputs="truncate",
            task_runner=runner,
        ),
    )
    rows = rows_by_id(tmp_path / "out")
    cut = rows[f"{run}-long"]
    assert cut["status"] == "completed" and cut["truncated"] is True
    assert "truncated" not in rows[f"{run}-short-1"]
    assert fake_openai.count(run) == 3  # one request per item
    sent = fake_openai.requests(f"{run} line 00000")[0]
    prompt_tokens = sum(fake_tokens(m["content"]) + 4 for m in sent.body["messages"])
    assert prompt_tokens + 200 <= 4096  # counted by the server's /tokenize, it fits
    assert len(sent.prompt) < LONG_CHARS
    assert summary.completed == 3


@pytest.mark.server
def test_chunk_answers_a_long_item_in_several_calls_and_one_row_and_a_rerun_asks_nothing(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    run = tag()
    fake_openai.emulate(context_tokens=4096, props=True, tokenize=True)  # read from /props
    source = corpus(tmp_path, run)
    # each chunk's answer is short, as a max_tokens of 200 makes it (the fake's echo is not)
    fake_openai.script("[Part ", *[Reply(f"{run} findings of one part") for _ in range(40)])
    options = RunOptions(endpoint=endpoint_for(fake_openai), max_tokens=200, long_inputs="chunk")
    summary = map_corpus(
        source, agent="default", partition="count:1", output_dir=tmp_path / "out", options=options
    )
    rows = rows_by_id(tmp_path / "out")
    assert list(rows) == [f"{run}-short-1", f"{run}-long", f"{run}-short-2"]  # one row each
    combined = rows[f"{run}-long"]
    assert combined["status"] == "completed"
    chunk_requests = fake_openai.requests("[Part ")
    count = combined["chunks"]
    assert count >= 4 and len(chunk_requests) == count  # 40,000 chars / (4096 - 200) tokens
    for number in range(1, count + 1):
        assert fake_openai.count(f"[Part {number} of {count} of a longer input") == 1
    assert fake_openai.count(long_text(run)[-30:]) >= 1  # the end of the text was read
    combines = fake_openai.requests("Combine the")
    assert len(combines) == 1  # the short answers fit one combine call
    assert combines[0].prompt.count(f"{run} findings of one part") == count
    assert combined["output"] == "echo: " + combines[-1].prompt  # the last combine's answer
    assert fake_openai.total == 2 + count + len(combines)  # nothing over the context: no 400
    assert summary.completed == 3 and summary.failed == 0

    before = fake_openai.total
    again = map_corpus(
        source, agent="default", partition="count:1", output_dir=tmp_path / "out", options=options
    )
    assert fake_openai.total == before  # every chunk and the combine came from the cache
    assert again.completed == 3
    assert rows_by_id(tmp_path / "out")[f"{run}-long"]["output"] == combined["output"]


@pytest.mark.server
def test_a_pattern_chunks_a_long_item_and_fails_none(
    prefect_server: Any, fake_openai: FakeOpenAI
) -> None:
    run = tag()
    fake_openai.emulate(context_tokens=4096, props=True, tokenize=True)
    fake_openai.script("[Part ", *[Reply(f"{run} part findings") for _ in range(40)])
    result = fan_out(
        [f"{run} short", long_text(run)],
        agent="default",
        options=RunOptions(endpoint=endpoint_for(fake_openai), max_tokens=200, long_inputs="chunk"),
    )
    assert result.status == "completed"
    assert result.output[0] == f"echo: {run} short"
    assert result.output[1] == "echo: " + fake_openai.requests("Combine the")[-1].prompt
    assert fake_openai.count("[Part 1 of ") == 1


@pytest.mark.server
def test_call_agent_truncates_a_long_input_as_its_option_says_and_fails_one_by_default(
    prefect_server: Any, fake_openai: FakeOpenAI
) -> None:
    """One call takes the same door as every shape: long_inputs applies to it too."""
    from prefect_fanout import call_agent

    run = tag()
    fake_openai.emulate(context_tokens=4096, props=True, tokenize=True)
    options = RunOptions(endpoint=endpoint_for(fake_openai), max_tokens=200)
    cut = call_agent(long_text(run), options=options.model_copy(update={"long_inputs": "truncate"}))
    assert cut.truncated and len(fake_openai.requests(run)) == 1
    with pytest.raises(Exception, match="context"):
        call_agent(f"{run} again " + long_text(run), options=options)
    assert len(fake_openai.requests(f"{run} again")) == 0  # refused before any request


@pytest.mark.server
def test_a_dispatch_task_whose_prompt_is_over_the_context_is_exit_2_before_running(
    prefect_server: Any, fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    from tests.test_cli_dispatch import env_for, fanout

    fake_openai.emulate(context_tokens=2048, props=True)
    plan = {
        "tasks": [
            {"task_id": "short", "description": "hello"},
            {"task_id": "huge", "description": long_text(tag())},
        ]
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    done = fanout("dispatch", str(path), env=env_for(prefect_server, fake_openai))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "plan task 'huge'" in done.stderr and "context of 2048 tokens" in done.stderr
    assert fake_openai.total == 0  # nothing was asked


# ------------------------------------------------------------------------------ pure parts


def test_split_text_covers_the_text_in_overlapping_pieces_that_fit() -> None:
    counter = TokenCounter("some-local-model")  # chars/4
    text = long_text("x")
    pieces = split_text(text, 1000, 100, counter)
    assert len(pieces) >= 10
    assert all(counter.count(p) <= 1000 for p in pieces)
    assert pieces[0] == text[: len(pieces[0])]
    assert text.endswith(pieces[-1])
    for left, right in zip(pieces, pieces[1:], strict=False):
        assert right[:40] in left  # each piece starts inside the one before: they overlap


def test_structured_chunk_answers_merge_field_by_field_within_the_schema() -> None:
    schema = {
        "type": "object",
        "properties": {
            "topics": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "summary": {"type": "string"},
            "counts": {"type": "object", "properties": {"n": {"type": "integer"}}},
        },
        "required": ["topics", "summary"],
    }
    request = CallRequest(
        agent="a", base_url="http://x/v1", model="m", messages=[], output_schema=schema
    )
    merged = merge_outputs(
        [
            {"topics": ["a", "b"], "summary": "", "counts": {"n": 1}},
            {"topics": ["b", "c", "d"], "summary": "second"},
        ],
        request,
    )
    assert merged == {"topics": ["a", "b", "c"], "summary": "second", "counts": {"n": 1}}


# ------------------------------------------------------------------------------ the server's word


def test_the_context_is_read_from_llama_servers_props(fake_openai: FakeOpenAI) -> None:
    fake_openai.emulate(context_tokens=3000, props=True)
    assert server_context(endpoint_for(fake_openai), "gpt-4o-mini") == 3000


def test_the_context_is_read_from_vllms_max_model_len(fake_openai: FakeOpenAI) -> None:
    fake_openai.emulate(max_model_len=5000)
    assert server_context(endpoint_for(fake_openai), "gpt-4o-mini") == 5000


def test_a_server_that_does_not_say_leaves_the_context_unknown(fake_openai: FakeOpenAI) -> None:
    assert server_context(endpoint_for(fake_openai), "gpt-4o-mini") is None


def test_the_profile_beats_the_endpoint_which_beats_the_server(fake_openai: FakeOpenAI) -> None:
    fake_openai.emulate(context_tokens=3000, props=True)
    resolver = Resolver(RunOptions(endpoint=endpoint_for(fake_openai, context_tokens=2000)))
    assert resolver.request("hi").context_tokens == 2000
    profile = AgentProfile(name="p", context_tokens=1000, long_inputs="chunk")
    assert resolver.request("hi", agent=profile).context_tokens == 1000
    assert resolver.request("hi", agent=profile).long_inputs == "chunk"
    assert (
        Resolver(RunOptions(endpoint=endpoint_for(fake_openai))).request("hi").context_tokens
        == 3000
    )


def test_the_server_tokenizer_counts_where_it_has_one(fake_openai: FakeOpenAI) -> None:
    fake_openai.emulate(tokenize=True)
    counter = TokenCounter("local", endpoint_for(fake_openai))
    assert counter.count("x" * 300) == 100  # the fake's 3 chars per token, not chars/4
    assert counter.name == "server /tokenize"
    assert TokenCounter("local").count("x" * 300) == 75


def test_long_inputs_is_a_run_option_and_refuses_unknown_values() -> None:
    assert RunOptions(long_inputs="chunk").long_inputs == "chunk"
    with pytest.raises(ConfigurationError, match="long_inputs"):
        RunOptions.of({"long_inputs": "squeeze"})


# ------------------------------------------------------------------------------ errors and warnings


def request_for(base_url: str, model: str = "gpt-4o-mini", prompt: str = "hi") -> CallRequest:
    return CallRequest(
        agent="a",
        item_id="i1",
        base_url=base_url,
        model=model,
        messages=[{"role": "user", "content": prompt}],
        retry=RetryOptions(max_attempts=2, backoff_initial_seconds=0.01, backoff_max_seconds=0.02),
    )


def test_connection_refused_names_the_url_and_asks_whether_a_server_runs_there() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nothing listens there
    base = f"http://127.0.0.1:{port}/v1"
    transport = OpenAITransport(LLMEndpoint(base_url=base, api_key=SecretStr("sk-x")))
    with pytest.raises(RetriesExhaustedError) as caught:
        execute_request(request_for(base), transport, LOG)
    message = str(caught.value)
    assert base in message
    assert "is a server running there?" in message
    assert "OPENAI_BASE_URL" in message


def test_another_model_answering_warns_once(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.emulate(reported_model="gemma-3-270m")
    transport = OpenAITransport(endpoint_for(fake_openai))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for n in range(3):
            request = request_for(fake_openai.base_url, "llama-3-8b", f"q{n}")
            execute_request(request, transport, LOG)
    warnings = [r.getMessage() for r in caplog.records if "asked for model" in r.getMessage()]
    assert len(warnings) == 1
    assert "'llama-3-8b'" in warnings[0] and "'gemma-3-270m'" in warnings[0]


def test_a_dated_snapshot_of_the_model_asked_is_no_mismatch(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    fake_openai.emulate(reported_model="gpt-4o-mini-2024-07-18")
    transport = OpenAITransport(endpoint_for(fake_openai))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        execute_request(request_for(fake_openai.base_url), transport, LOG)
    assert not [r for r in caplog.records if "asked for model" in r.getMessage()]


def test_a_chat_template_end_marker_in_answers_warns_once_with_the_fix(
    fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    run = tag()
    fake_openai.script(run, Reply("an answer<|im_end|>"), Reply("more<|im_end|>\n<|im_end|>"))
    transport = OpenAITransport(endpoint_for(fake_openai))
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for n in range(2):
            execute_request(request_for(fake_openai.base_url, prompt=f"{run} {n}"), transport, LOG)
    warnings = [r.getMessage() for r in caplog.records if "end marker" in r.getMessage()]
    assert len(warnings) == 1
    assert "<|im_end|>" in warnings[0] and "--chat-template" in warnings[0]


def test_the_fake_refuses_a_request_over_its_context_as_llama_server_does(
    fake_openai: FakeOpenAI,
) -> None:
    import openai

    fake_openai.emulate(context_tokens=100)
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x" * 600}], max_tokens=10
        )
    assert "exceeds the available context size" in str(caught.value)
    assert json.loads(caught.value.response.text)["error"]["type"] == "exceed_context_size_error"
