"""Prompts and inputs the patterns build: items as text, agent lists, stage ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect_fanout.errors import PatternArgumentError
from prefect_fanout.llm.request import output_as_text
from prefect_fanout.patterns.engine import Agent, agent_name, check_agent_arg

ITEM_FIELD = "{item}"


def item_prompt(item: Any, prompt: str | None) -> str:
    """The prompt of one item: the item as text, or ``prompt`` with ``{item}`` replaced.

    A ``prompt`` without ``{item}`` gets the item appended after a blank line.
    """
    text = output_as_text(item)
    if prompt is None:
        return text
    if ITEM_FIELD in prompt:
        return prompt.replace(ITEM_FIELD, text)
    return f"{prompt.rstrip()}\n\n{text}"


def agent_list(argument: str, value: Any) -> list[Agent]:
    """One agent or a non-empty list of agents, checked.

    Raises:
        PatternArgumentError: Empty, or an entry that is not an agent.
    """
    if isinstance(value, (list, tuple)):
        if not value:
            raise PatternArgumentError(argument, "is an empty list of agents")
        return [check_agent_arg(f"{argument}[{i}]", entry) for i, entry in enumerate(value)]
    return [check_agent_arg(argument, value)]


def keyed_inputs(argument: str, values: Any, prefix: str) -> list[tuple[str, Any]]:
    """``(id, value)`` pairs: a mapping's keys, else ``PREFIX-0``, ``PREFIX-1``...

    Raises:
        PatternArgumentError: Not a list or mapping, or empty.
    """
    if isinstance(values, Mapping):
        pairs = [(str(key), value) for key, value in values.items()]
    elif isinstance(values, Sequence) and not isinstance(values, (str, bytes)):
        pairs = [(f"{prefix}-{index}", value) for index, value in enumerate(values)]
    else:
        raise PatternArgumentError(
            argument, f"expected a list or a mapping, got {type(values).__name__}"
        )
    if not pairs:
        raise PatternArgumentError(argument, "is empty")
    return pairs


def stage_ids(stage: int, agents: list[Agent]) -> list[str]:
    """The call ids of one pipeline stage: ``s1.enricher``, or ``s1.enricher.2`` when repeated."""
    names = [agent_name(agent) for agent in agents]
    return [
        f"s{stage}.{name}" if names.count(name) == 1 else f"s{stage}.{name}.{position}"
        for position, name in enumerate(names)
    ]
