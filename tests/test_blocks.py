"""Block types and named block documents: standard suite, registration, create_blocks.py."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import BlockType
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import HttpUrl, SecretStr, TypeAdapter

from prefect_fanout import blocks
from prefect_fanout.agents.profiles import BUILTIN_PROFILES
from prefect_fanout.blocks import (
    DEFAULT_LOCAL_BASE_URL,
    AgentProfile,
    LLMEndpoint,
    local_endpoint,
    openai_endpoint,
)
from prefect_fanout.options import RunOptions

REPO = Path(__file__).resolve().parents[1]
CREATE_BLOCKS = REPO / "blocks" / "create_blocks.py"


class _OfflineLogo:
    """Replace the suite's logo test: it downloads the logo, and tests have no network.

    What can be checked offline is checked: the logo URL is set and is an http(s)
    URL, the only kind Prefect's client accepts when it registers a block type
    (a ``data:`` URL would make ``prefect block register`` fail).
    """

    def test_has_a_valid_image(self, block: type) -> None:
        logo_url = block._logo_url
        assert logo_url, f"{block.__name__} has no _logo_url"
        TypeAdapter(HttpUrl).validate_python(str(logo_url))


class TestLLMEndpointStandard(_OfflineLogo, BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[LLMEndpoint]:
        return LLMEndpoint


class TestAgentProfileStandard(_OfflineLogo, BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[AgentProfile]:
        return AgentProfile


def test_module_exports_both_block_types() -> None:
    from prefect.blocks.core import Block

    found = {name for name in dir(blocks) if Block.is_block_class(getattr(blocks, name))}
    assert found == {"AgentProfile", "LLMEndpoint"}
    assert sorted(blocks.__all__) == blocks.__all__


def test_collections_entry_point_loads_this_module() -> None:
    from importlib.metadata import entry_points

    ours = [ep for ep in entry_points(group="prefect.collections") if ep.name == "prefect_fanout"]
    assert [ep.value for ep in ours] == ["prefect_fanout.blocks"]
    assert ours[0].load() is blocks


def test_openai_endpoint_needs_a_key() -> None:
    assert openai_endpoint({}) is None
    assert openai_endpoint({"OPENAI_API_KEY": ""}) is None
    endpoint = openai_endpoint({"OPENAI_API_KEY": "sk-abc", "OPENAI_ORG_ID": "org-1"})
    assert endpoint is not None
    assert endpoint.base_url == "https://api.openai.com/v1"
    assert endpoint.key_value() == "sk-abc"
    assert endpoint.organization == "org-1"
    assert "sk-abc" not in repr(endpoint)


def test_local_endpoint_defaults_to_ollama() -> None:
    endpoint = local_endpoint({})
    assert endpoint.base_url == DEFAULT_LOCAL_BASE_URL == "http://127.0.0.1:11434/v1"
    assert endpoint.api_key is None
    custom = local_endpoint(
        {"FANOUT_LOCAL_BASE_URL": "http://127.0.0.1:8000/v1", "FANOUT_LOCAL_MODEL": "qwen"}
    )
    assert (custom.base_url, custom.default_model) == ("http://127.0.0.1:8000/v1", "qwen")


# ----------------------------------------------------------------------------- with a server


async def _documents(slug: str) -> dict[str, int]:
    """Names of the block documents of one block type, with how often each occurs."""
    async with get_client() as client:
        docs = await client.read_block_documents_by_type(block_type_slug=slug)
    names: dict[str, int] = {}
    for doc in docs:
        names[doc.name] = names.get(doc.name, 0) + 1
    return names


@pytest.mark.server
def test_prefect_block_register_module(prefect_server) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_fanout.blocks"],
        env=prefect_server.env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully registered 2 blocks" in done.stdout
    assert "Fanout LLM Endpoint" in done.stdout and "Fanout Agent Profile" in done.stdout

    async def read_types() -> list[BlockType]:
        async with get_client() as client:
            return [
                await client.read_block_type_by_slug(slug)
                for slug in ("fanout-llm-endpoint", "fanout-agent-profile")
            ]

    from prefect.utilities.asyncutils import run_coro_as_sync

    types = run_coro_as_sync(read_types())
    assert [t.name for t in types] == ["Fanout LLM Endpoint", "Fanout Agent Profile"]


def _run_create_blocks(prefect_server, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = prefect_server.env(**env)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "FANOUT_LOCAL_MODEL"):
        if name not in env:
            base.pop(name, None)
    return subprocess.run(
        [sys.executable, str(CREATE_BLOCKS), *args],
        env=base,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.server
def test_create_blocks_twice_updates_in_place(prefect_server) -> None:
    from prefect.utilities.asyncutils import run_coro_as_sync

    first = _run_create_blocks(
        prefect_server,
        OPENAI_API_KEY="sk-first-0000",
        FANOUT_LOCAL_BASE_URL="http://127.0.0.1:1111/v1",
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert "fanout-llm-endpoint/openai" in first.stdout
    assert "sk-first" not in first.stdout + first.stderr

    second = _run_create_blocks(
        prefect_server,
        "--local-model",
        "qwen2.5",
        OPENAI_API_KEY="sk-second-1111",
        FANOUT_LOCAL_BASE_URL="http://127.0.0.1:2222/v1",
    )
    assert second.returncode == 0, second.stdout + second.stderr
    for line in ("openai", "local", "default", "coder", "debug"):
        assert any(
            row.startswith("updated") and row.split()[1].endswith(f"/{line}")
            for row in second.stdout.splitlines()
        ), second.stdout

    endpoints = run_coro_as_sync(_documents("fanout-llm-endpoint"))
    profiles = run_coro_as_sync(_documents("fanout-agent-profile"))
    assert endpoints.get("openai") == 1 and endpoints.get("local") == 1, endpoints
    assert {name: profiles.get(name) for name in BUILTIN_PROFILES} == {
        name: 1 for name in BUILTIN_PROFILES
    }

    local = LLMEndpoint.load("local")
    assert (local.base_url, local.default_model) == ("http://127.0.0.1:2222/v1", "qwen2.5")
    remote = LLMEndpoint.load("openai")
    assert remote.key_value() == "sk-second-1111"
    coder = AgentProfile.load("coder")
    assert coder.system_prompt == BUILTIN_PROFILES["coder"].system_prompt
    assert coder.temperature == BUILTIN_PROFILES["coder"].temperature

    async def stored_without_secrets() -> str:
        async with get_client() as client:
            doc = await client.read_block_document_by_name(
                "openai", "fanout-llm-endpoint", include_secrets=False
            )
        return str(doc.data)

    assert "sk-second" not in run_coro_as_sync(stored_without_secrets())


@pytest.mark.server
def test_create_blocks_skips_openai_without_a_key(prefect_server, monkeypatch, capsys) -> None:
    # In-process (the script's main()), to spare a second Prefect import in a subprocess.
    import runpy

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    main = runpy.run_path(str(CREATE_BLOCKS))["main"]
    assert main(["--only", "endpoints", "--local-base-url", "http://127.0.0.1:3333/v1"]) == 0
    out = capsys.readouterr().out
    assert "skipped  fanout-llm-endpoint/openai (OPENAI_API_KEY is not set)" in out
    assert "fanout-llm-endpoint/local (http://127.0.0.1:3333/v1" in out
    assert "fanout-agent-profile" not in out


@pytest.mark.server
def test_flow_uses_endpoint_block_by_name(prefect_server, fake_openai, monkeypatch) -> None:
    from prefect_fanout.flows import call_flow

    monkeypatch.delenv("FANOUT_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    name = f"fake-{uuid.uuid4().hex[:8]}"
    LLMEndpoint(
        base_url=fake_openai.base_url,
        api_key=SecretStr("sk-block-key-42"),
        default_model="fake-model",
    ).save(name, overwrite=True)
    marker = f"block-by-name {uuid.uuid4().hex}"

    result = call_flow(
        prompt=marker,
        options=RunOptions(endpoint=name, cache="off"),
    )

    assert result.output == f"echo: {marker}"
    assert result.model == "fake-model"
    requests = fake_openai.requests(marker)
    assert len(requests) == 1
    assert requests[0].headers.get("authorization") == "Bearer sk-block-key-42"
    assert requests[0].body["model"] == "fake-model"
