"""Flows the library ships (the CLI runs them; ``flows/`` composes them for deployments)."""

from __future__ import annotations

from prefect import flow

from prefect_fanout.call.result import AgentResult
from prefect_fanout.call.task import call_agent


@flow(name="fanout-call", log_prints=False)
def call_flow(
    prompt: str,
    agent: str = "default",
    model: str | None = None,
    system: str | None = None,
    endpoint: str | None = None,
    cache: str = "on",
) -> AgentResult:
    """Make one agent call as a task run of this flow.

    Args:
        prompt: The user prompt.
        agent: The agent's name (built-in or a saved AgentProfile block).
        model: A model overriding the agent's (``test`` runs offline).
        system: A system prompt overriding the agent's.
        endpoint: A saved LLMEndpoint block's name; None uses OPENAI_* variables.
        cache: ``on``, ``refresh`` or ``off``.

    Returns:
        The call's result.
    """
    return call_agent(
        prompt, agent=agent, model=model, system=system, endpoint=endpoint, cache=cache
    )
