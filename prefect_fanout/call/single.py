"""One agent call on its own: :func:`call_agent`, a Prefect task run whose result comes back.

It takes the run's options like every shape does. With a budget (``budget_tokens``,
``budget_usd``, ``budget_name``) the call's estimate is reserved first, as a run's calls are
(:mod:`prefect_fanout.budget.meter`): a call that does not fit raises
:class:`~prefect_fanout.errors.BudgetExhausted` without asking, and what the call spent is
counted (on the Prefect server for a named budget, so calls in a loop or in other processes
stop together). A cache hit is free and needs no room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Prompt
from prefect_fanout.call.path import CallPath
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.options import RunOptions

__all__ = ["call_agent"]


def call_agent(
    prompt: Prompt,
    *,
    agent: str | AgentProfile = "default",
    system: str | None = None,
    item_id: str | None = None,
    agents: Mapping[str, AgentProfile] | None = None,
    variables: Mapping[str, Any] | None = None,
    tags: Iterable[str] = (),
    options: RunOptions | None = None,
) -> AgentResult:
    """Make one agent call as a Prefect task run and return its result.

    Call it inside a flow (or alone: Prefect then runs the task by itself).

    Args:
        prompt: The user prompt or a list of chat messages.
        agent: An agent name (built-in, saved block) or an :class:`AgentProfile`.
        system: A system prompt overriding the profile's.
        item_id: The item or task id, shown in the run name.
        agents: Extra profiles by name.
        variables: Values for the profile's prompt template.
        tags: Extra tags for the task run.
        options: The run's options: model, endpoint (None: ``OPENAI_API_KEY`` /
            ``OPENAI_BASE_URL``), cache, max_tokens, temperature, timeout_seconds,
            the endpoint limits and the budget (see
            :class:`~prefect_fanout.options.RunOptions`).

    Returns:
        The :class:`AgentResult`; ``cached`` is true when it came from the cache.

    Raises:
        ConfigurationError: No endpoint is configured, the agent is unknown, the budget
            is below what this call may spend, or ``options.dry_run`` is set (one call
            has no dry-run report: the shapes have one).
        BudgetExhausted: The budget (a named one others spend too) has no room left for
            this call; nothing was asked.
        AgentCallError: The call failed for good.

    """
    options = options or RunOptions()
    if options.dry_run:
        raise ConfigurationError(
            "dry_run: call_agent makes one call and has no dry-run report (fanout map, "
            "fanout dispatch and the pattern flows have one)"
        )
    path = CallPath.of(options, agents)
    request = path.request(
        prompt, agent=agent, system=system, variables=variables, item_id=item_id, tags=tags
    )
    result = path.submit(request, in_place=True)  # a long input's error comes back as a value
    if isinstance(result, BaseException):
        raise result
    assert isinstance(result, AgentResult)
    return result
