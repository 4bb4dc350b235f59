"""The agent call as a Prefect task run: cache across flow runs, locks, names and tags.

Runs against the session's real Prefect server and the fake OpenAI server.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort
from prefect.context import get_run_context
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, SecretStr

from prefect_fanout import AgentProfile, LLMEndpoint, call_agent
from prefect_fanout.call.door import submit_agent_call
from prefect_fanout.call.task import build_request, result_from_future
from prefect_fanout.errors import NonRetryableAPIError
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.options import CacheMode, RunOptions
from tests.fakeopenai import Error, Reply

pytestmark = pytest.mark.usefixtures("prefect_server")


def endpoint(fake) -> LLMEndpoint:
    return LLMEndpoint(base_url=fake.base_url, api_key=SecretStr("sk-test"))


def profile(**overrides) -> AgentProfile:
    settings = {"name": "t", "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.05}
    settings.update(overrides)
    return AgentProfile(**settings)


@flow
def one_call(
    prompt: str, base_url: str, agent: AgentProfile, model: str = "gpt-4o-mini", cache: str = "on"
):
    ep = LLMEndpoint(base_url=base_url, api_key=SecretStr("sk-test"))
    return call_agent(
        prompt,
        agent=agent,
        options=RunOptions(endpoint=ep, model=model, cache=cache),
    )


def test_cache_hits_across_flow_runs_make_zero_requests(fake_openai):
    prompt = f"{uuid.uuid4().hex} summarise"
    fake_openai.script(prompt, Reply("first answer", prompt_tokens=100, completion_tokens=20))
    first = one_call(prompt, fake_openai.base_url, profile())
    second = one_call(prompt, fake_openai.base_url, profile())
    assert fake_openai.count(prompt) == 1
    assert first.cached is False and second.cached is True
    assert second.output == "first answer"
    # The original usage stays visible; this run paid nothing.
    assert (second.prompt_tokens, second.completion_tokens) == (100, 20)
    assert second.cost_usd == first.cost_usd  # None: the fake is not OpenAI's price list
    assert second.run_cost_usd == 0.0


class SchemaA(BaseModel):
    x: int


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"agent": profile(system_prompt="You are terse.")},
        {"agent": profile(temperature=0.9)},
        {"agent": profile(output_schema=SchemaA)},
    ],
    ids=["model", "system-prompt", "temperature", "schema"],
)
def test_changing_what_determines_the_answer_makes_a_new_request(fake_openai, change):
    prompt = f"{uuid.uuid4().hex} question"
    one_call(prompt, fake_openai.base_url, profile())
    kwargs = {"agent": profile(), **change}
    one_call(prompt, fake_openai.base_url, **kwargs)
    assert fake_openai.count(prompt) == 2


def test_refresh_calls_again_and_off_never_stores(fake_openai):
    prompt = f"{uuid.uuid4().hex} question"
    one_call(prompt, fake_openai.base_url, profile())
    refreshed = one_call(prompt, fake_openai.base_url, profile(), cache=CacheMode.REFRESH)
    assert refreshed.cached is False
    assert fake_openai.count(prompt) == 2
    other = f"{uuid.uuid4().hex} uncached"
    one_call(other, fake_openai.base_url, profile(), cache="off")
    again = one_call(other, fake_openai.base_url, profile(), cache="off")
    assert again.cached is False
    assert fake_openai.count(other) == 2


def test_concurrent_identical_calls_make_one_request(fake_openai):
    prompt = f"{uuid.uuid4().hex} same question"
    fake_openai.script(prompt, Reply("only once", latency=0.5))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def four_at_once():
        ep = endpoint(fake_openai)
        request = build_request(
            prompt,
            agent=profile(),
            options=RunOptions(endpoint=ep, model="gpt-4o-mini"),
        )
        futures = [
            submit_agent_call(
                request,
                options=RunOptions(endpoint=ep),
            )
            for _ in range(4)
        ]
        return [result_from_future(f) for f in futures]

    results = four_at_once()
    assert fake_openai.count(prompt) == 1
    assert [r.output for r in results] == ["only once"] * 4
    assert sorted(r.cached for r in results) == [False, True, True, True]


def test_prefect_retries_do_not_multiply_the_attempt_budget(fake_openai):
    prompt = f"{uuid.uuid4().hex} flaky"
    fake_openai.script(prompt, Error(500), Error(503), Reply("ok"))
    result = one_call(prompt, fake_openai.base_url, profile(max_attempts=3))
    assert result.attempts == 3 and fake_openai.count(prompt) == 3
    prompt2 = f"{uuid.uuid4().hex} always failing"
    fake_openai.script(prompt2, *[Error(500) for _ in range(10)])
    with pytest.raises(Exception, match="3 attempt"):
        one_call(prompt2, fake_openai.base_url, profile(max_attempts=3))
    assert fake_openai.count(prompt2) == 3


def test_non_retryable_error_surfaces_from_the_flow(fake_openai):
    prompt = f"{uuid.uuid4().hex} bad"
    fake_openai.script(prompt, Error(400, message="bad parameter"))
    with pytest.raises(NonRetryableAPIError, match="bad parameter"):
        one_call(prompt, fake_openai.base_url, profile())
    assert fake_openai.count(prompt) == 1


def test_task_run_is_named_after_agent_and_item_and_carries_no_unlimited_tags(fake_openai):
    item = uuid.uuid4().hex[:8]

    @flow
    def named():
        call_agent(
            f"{item} hi",
            agent=profile(name="namer"),
            options=RunOptions(endpoint=endpoint(fake_openai), model="gpt-4o-mini"),
            item_id=item,
        )
        return get_run_context().flow_run.id

    flow_run_id = named()

    async def task_runs():
        async with get_client() as client:
            # Sort and limit are explicit: this server rejects nulls for them.
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=50,
            )

    import asyncio

    deadline = time.monotonic() + 30
    runs = []
    while time.monotonic() < deadline:
        runs = asyncio.run(task_runs())
        if runs and runs[0].state and runs[0].state.is_final():
            break
        time.sleep(0.2)  # polling interval, not synchronisation: the deadline bounds it
    assert [r.name for r in runs] == [f"namer:{item}"]
    # No concurrency limit names agent:namer or model:gpt-4o-mini, so the run carries no tags
    # (and asks for no slots); tests/test_tag_limits.py shows a limited tag is carried.
    assert runs[0].tags == []


def test_test_model_needs_no_server_and_no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    class Findings(BaseModel):
        topics: list[str]
        score: float

    @flow
    def offline():
        text = call_agent(
            "describe the sea",
            options=RunOptions(model="test", cache="off"),
        )
        structured = call_agent(
            "describe the sea",
            agent=AgentProfile(name="s", output_schema=Findings),
            options=RunOptions(model="test"),
        )
        return text, structured

    text, structured = offline()
    assert "describe the sea" in text.output and text.model == "test"
    assert text.output == offline()[0].output  # deterministic
    assert isinstance(structured.output, Findings)
    assert text.cost_usd == 0.0


def test_an_expired_answer_is_asked_again(fake_openai):
    prompt = f"{uuid.uuid4().hex} short-lived"

    @flow
    def twice(expiration: timedelta):
        ep = endpoint(fake_openai)
        options = RunOptions(endpoint=ep, model="gpt-4o-mini", cache_expiration=expiration)
        first = call_agent(prompt, agent=profile(), options=options)
        second = call_agent(prompt, agent=profile(), options=options)
        return first, second

    _, second = twice(timedelta(microseconds=1))
    assert second.cached is False
    assert fake_openai.count(prompt) == 2
    _, kept = twice(timedelta(hours=1))
    assert kept.cached is True
    assert fake_openai.count(prompt) == 3


def test_the_door_reads_a_budgeted_calls_stored_answer_once_and_settles_what_it_spent(
    fake_openai, monkeypatch
):
    """One door: a budgeted miss reads storage once, reserves, submits, settles on its end."""
    import prefect_fanout.call.door as door
    from prefect_fanout.call.path import CallPath

    reads: list[str] = []
    real_read = door.stored_answer

    def counted(request, options):  # the real read, counted
        reads.append(request.cache_key())
        return real_read(request, options)

    monkeypatch.setattr(door, "stored_answer", counted)
    prompts = [f"{uuid.uuid4().hex} budgeted {n}" for n in range(3)]
    for prompt in prompts:
        fake_openai.script(prompt, Reply("ok", prompt_tokens=10, completion_tokens=5))
    options = RunOptions(endpoint=endpoint(fake_openai), model="gpt-4o-mini", budget_tokens=100_000)

    path = CallPath.of(options)  # its meter outlives the flow runs: read after they end

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
    def three_calls():
        submitted = [path.submit(path.request(p, agent=profile())) for p in prompts]
        return [s if isinstance(s, AgentResult) else result_from_future(s) for s in submitted]

    results = three_calls()
    meter = path.budget
    assert [r.cached for r in results] == [False] * 3
    assert len(reads) == 3 and len(set(reads)) == 3  # one read a call, no second look
    assert meter.in_flight == 0  # every reservation settled when its task run ended
    assert meter.spent_tokens == 3 * 15

    reads.clear()
    again = three_calls()  # stored: one read each, no task run, free
    assert [r.cached for r in again] == [True] * 3 and len(reads) == 3
    assert meter.spent_tokens == 3 * 15
    assert sum(fake_openai.count(p) for p in prompts) == 3


def test_submit_agent_call_keeps_to_the_options_budget(fake_openai):
    from prefect_fanout.errors import BudgetExhausted

    prompt = f"{uuid.uuid4().hex} too dear"
    options = RunOptions(endpoint=endpoint(fake_openai), model="gpt-4o-mini", budget_tokens=5)

    @flow
    def one():
        request = build_request(prompt, agent=profile(), options=options)
        return submit_agent_call(request, options=options)

    with pytest.raises(BudgetExhausted):
        one()
    assert fake_openai.count(prompt) == 0
