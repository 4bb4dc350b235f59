"""Per-call tags stay cheap, and Prefect's tag concurrency limits still bound agent calls."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import SecretStr

from prefect_fanout import AgentProfile, LLMEndpoint
from prefect_fanout.call.tagslots import LimitNames, narrow
from prefect_fanout.call.task import build_request, result_from_future, submit_agent_call
from tests.fakeopenai import Reply

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_tags_without_a_limit_ask_for_no_slots():
    names = [f"tag:agent:{uuid.uuid4().hex}", "tag:model:gpt-4o", "tag:users-own"]
    assert narrow(names, LimitNames()) == ["tag:users-own"]


def test_the_private_prefect_name_narrowing_relies_on_still_exists():
    # tagslots.install replaces prefect.task_engine._concurrency (no public hook exists in
    # Prefect 3.8). If Prefect renames or reshapes it, this fails and install must change.
    import inspect

    import prefect.task_engine as engine

    original = getattr(engine, "_concurrency", None)
    assert callable(original)
    first = next(iter(inspect.signature(original).parameters))
    assert first == "names"


def test_narrowing_is_opt_in_and_routes_slot_requests_when_enabled():
    script = (
        "import prefect.task_engine as e, prefect_fanout.flows as f; "
        "from prefect_fanout.call import tagslots; before = e._concurrency; "
        "tagslots.install(); tagslots.install(); "
        "print(before is not e._concurrency, tagslots._original is before)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


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
    assert narrow([f"tag:agent:{agent}"], LimitNames()) == [f"tag:agent:{agent}"]

    endpoint = LLMEndpoint(base_url=fake_openai.base_url, api_key=SecretStr("sk-test"))
    profile = AgentProfile(name=agent)
    keys = [f"{uuid.uuid4().hex} limited call {i}" for i in range(3)]
    for key in keys:
        fake_openai.script(key, Reply("ok", latency=0.3))

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
    def three_calls():
        futures = [
            submit_agent_call(
                build_request(k, agent=profile, endpoint=endpoint, model="gpt-4o-mini"),
                endpoint=endpoint,
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
