"""Prices, profiles and endpoint resolution (no server needed)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.endpoints import LLMEndpoint, resolve_endpoint
from prefect_fanout.llm.pricing import cost_usd, price_for
from prefect_fanout.options import RunOptions


def test_known_models_and_dated_snapshots_are_priced():
    assert price_for("gpt-4o") == (2.50, 10.00)
    assert price_for("gpt-4o-2024-08-06") == (2.50, 10.00)
    assert price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert price_for("openai/gpt-4.1-mini") == (0.40, 1.60)


def test_unknown_price_is_none_never_zero():
    assert price_for("llama3:8b") is None
    assert cost_usd("llama3:8b", 100, 100) is None
    assert cost_usd("llama3:8b", 1_000_000, 0, input_price=2.0, output_price=1.0) == 2.0


def test_cost_adds_input_and_output():
    assert cost_usd("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(12.5)


def test_missing_configuration_names_the_three_fixes(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError) as info:
        resolve_endpoint(None)
    message = str(info.value)
    assert "--endpoint" in message and "LLMEndpoint" in message and "OPENAI_API_KEY" in message


def test_environment_endpoint(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1234/v1")
    endpoint = resolve_endpoint(None)
    assert endpoint.base_url == "http://127.0.0.1:1234/v1"
    assert endpoint.key_value() == "sk-env"
    explicit = LLMEndpoint(base_url="http://127.0.0.1:9/v1", api_key=SecretStr("k"))
    assert resolve_endpoint(explicit) is explicit


def test_keyless_local_server_from_base_url_only(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1")
    assert resolve_endpoint(None).key_value() == "not-needed"


def test_fanout_model_overrides_profiles_but_not_an_explicit_model(monkeypatch):
    monkeypatch.setenv("FANOUT_MODEL", "test")
    assert Resolver().model(AgentProfile(model="gpt-4o")) == "test"
    assert Resolver(RunOptions(model="gpt-4.1")).model(AgentProfile(model="gpt-4o")) == "gpt-4.1"
    monkeypatch.delenv("FANOUT_MODEL")
    endpoint = LLMEndpoint(default_model="served-model")
    assert Resolver(RunOptions(endpoint=endpoint)).model(AgentProfile()) == "served-model"
    assert Resolver(RunOptions(endpoint=endpoint)).model(AgentProfile(model="gpt-4o")) == "gpt-4o"


def test_prompt_template_renders_variables_and_names_missing_ones():
    profile = AgentProfile(name="t", prompt_template="Title: {title}\n{input}")
    assert profile.render_user_message("body", {"title": "T"}) == "Title: T\nbody"
    with pytest.raises(ConfigurationError, match=r"\{title\}"):
        profile.render_user_message("body", {})


def test_api_key_is_secret_in_repr_and_dump():
    endpoint = LLMEndpoint(api_key=SecretStr("sk-very-secret"))
    assert "sk-very-secret" not in repr(endpoint)
    assert "sk-very-secret" not in endpoint.model_dump_json()


def test_an_agents_own_batch_prices_price_its_batch_answers() -> None:
    from prefect_fanout.agents.resolver import Resolver
    from prefect_fanout.llm.pricing import batch_cost_usd, cost_usd
    from prefect_fanout.options import RunOptions

    online = cost_usd("gpt-4o-mini", 1_000_000, 1_000_000, base_url="https://api.openai.com/v1")
    assert (
        batch_cost_usd("gpt-4o-mini", 1_000_000, 1_000_000, base_url="https://api.openai.com/v1")
        == online / 2
    )
    own = batch_cost_usd(
        "gpt-4o-mini",
        1_000_000,
        2_000_000,
        base_url="https://api.openai.com/v1",
        batch_prices=(0.05, 0.25),
    )
    assert own == 0.05 + 2 * 0.25
    profile = AgentProfile(
        name="cheap", batch_input_price_per_million=0.05, batch_output_price_per_million=0.25
    )
    request = Resolver(RunOptions(model="test")).request("hi", agent=profile)
    assert (request.batch_input_price_per_million, request.batch_output_price_per_million) == (
        0.05,
        0.25,
    )
    plain = Resolver(RunOptions(model="test")).request("hi", agent=AgentProfile(name="p"))
    assert request.cache_key() == plain.cache_key()  # accounting only: never in the key
