"""Per-call tags cost no slot request, and Prefect's tag concurrency limits still bound calls."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr

from prefect_fanout import (
    AgentProfile,
    LLMEndpoint,
    build_request,
    result_from_future,
    submit_agent_call,
)
from prefect_fanout.call.tags import LIMITED_TAGS, LimitNames, run_tags
from prefect_fanout.options import RunOptions
from tests.fakeopenai import Reply

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_a_call_task_run_carries_only_the_tags_a_limit_uses():
    limited = LimitNames()
    tags = {f"agent:{uuid.uuid4().hex}", "model:gpt-4o", "fanout:map", "partition:0001"}
    assert run_tags(tags, limited) == set()  # no limit: no tags, so no slot request per run


def test_without_an_api_every_tag_is_kept(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # nothing listens there
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert run_tags({"agent:a", "model:m"}, LimitNames()) == {"agent:a", "model:m"}


def test_importing_the_library_patches_nothing_in_prefect():
    script = (
        "import prefect.task_engine as e; before = e._concurrency; import prefect_fanout.flows; "
        "import prefect_fanout.call.task; print(before is e._concurrency)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]


def test_a_tag_concurrency_limit_created_with_the_prefect_cli_bounds_calls(
    fake_openai, prefect_server
):
    agent = f"limited-{uuid.uuid4().hex[:8]}"
    created = subprocess.run(
        [sys.executable, "-m", "prefect", "concurrency-limit", "create", f"agent:{agent}", "1"],
        env=prefect_server.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    assert run_tags({f"agent:{agent}", "model:gpt-4o-mini"}, LimitNames()) == {f"agent:{agent}"}
    LIMITED_TAGS.refresh()  # a flow of our own, not a dispatch or map run: read the limits now

    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr("sk-test"))
    profile = AgentProfile(name=agent)
    keys = [f"{uuid.uuid4().hex} limited call {i}" for i in range(3)]
    for key in keys:
        fake_openai.script(key, Reply("ok", latency=0.3))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
    def three_calls():
        futures = [
            submit_agent_call(
                build_request(
                    k,
                    agent=profile,
                    options=RunOptions(endpoint=endpoint, model="gpt-4o-mini"),
                ),
                options=RunOptions(endpoint=endpoint),
            )
            for k in keys
        ]
        return [result_from_future(f) for f in futures]

    results = three_calls()
    assert [r.output for r in results] == ["ok"] * 3
    records = sorted(fake_openai.requests(" limited call "), key=lambda r: r.arrived)
    assert len(records) == 3
    # With the limit of 1, no two calls of this agent were ever at the server together.
    for earlier, later in zip(records, records[1:], strict=False):
        assert earlier.finished is not None and earlier.finished <= later.arrived
