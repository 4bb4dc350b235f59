"""Pipeline with branches: stages in order, each one agent or several in parallel (seed 001)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import flow

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.errors import PatternArgumentError
from prefect_fanout.options import RunOptions
from prefect_fanout.patterns.engine import Agent, Call, PatternRun
from prefect_fanout.patterns.shapes import agent_list, item_prompt, stage_ids

Stage = str | AgentProfile | list[str | AgentProfile]


def check_stages(stages: Any) -> list[list[Agent]]:
    """The stages as lists of agents.

    Raises:
        PatternArgumentError: ``stages`` is empty or not a list, or a stage is
            an empty list or holds something that is not an agent.
    """
    if isinstance(stages, (str, AgentProfile)) or not isinstance(stages, Sequence):
        raise PatternArgumentError("stages", f"expected a list of stages, got {stages!r}")
    if not stages:
        raise PatternArgumentError("stages", "is empty: a pipeline needs at least one stage")
    return [agent_list(f"stages[{index}]", stage) for index, stage in enumerate(stages)]


@flow(name="fanout-pipeline", log_prints=False)
def pipeline(
    item: Any,
    stages: Sequence[Stage],
    *,
    prompt: str | None = None,
    agents: Mapping[str, AgentProfile] | None = None,
    options: RunOptions | None = None,
) -> Any:
    """Run an item through stages; a stage of several agents runs them in parallel.

    Every call's prompt is the item (through ``prompt``, ``{item}`` replaced);
    from the second stage on, every call also gets all outputs of the previous
    stage as ``## Upstream results`` / ``### s<k>.<agent>``. Call ids are
    ``s<k>.<agent>`` (``s<k>.<agent>.<position>`` for an agent listed twice in a
    stage). Under ``partial`` a stage goes on with the previous stage's outputs
    that completed and the pipeline stops (failed) only when a stage has none;
    under ``all_or_nothing`` the first failure stops it.

    Args:
        item: The input (a string as it is, anything else as JSON).
        stages: Agents in order; a list in place of an agent is a parallel stage.
        prompt: A template for every call's prompt (``{item}`` is the item).
        agents: Extra profiles by name.
        options: The run's options (model, endpoint, max_workers (default 8),
            failure_policy, cache, max_tokens, temperature, timeout_seconds, limits; see
            :class:`~prefect_fanout.options.RunOptions`).

    Returns:
        The final state carrying the :class:`PatternResult`: ``output`` is the
        last stage's output (a list of outputs when it has several agents);
        ``details["stages"]`` holds every stage's outputs by call id.

    Raises:
        PatternArgumentError: ``stages`` is empty, a stage is empty or not an agent.
    """
    plan = check_stages(stages)
    run = PatternRun("pipeline", agents=agents, options=options)
    run.check([agent for stage in plan for agent in stage])
    text = item_prompt(item, prompt)
    previous: dict[str, Any] = {}  # call id -> future of the previous stage's completed calls
    outputs_by_stage: list[dict[str, Any]] = []
    last_ids: list[str] = []
    for number, stage in enumerate(plan, start=1):
        ids = stage_ids(number, stage)
        if run.stopped or (number > 1 and not previous):
            for key, agent in zip(ids, stage, strict=True):
                run.skip(key, agent, "not started: the previous stage produced no output")
            last_ids = []
            continue
        calls = [
            Call(key, agent, text, context=previous or None, tags=(f"pipeline:stage-{number}",))
            for key, agent in zip(ids, stage, strict=True)
        ]
        outcomes = run.run_calls(calls)
        done = [key for key in ids if key in outcomes and outcomes[key].ok]
        outputs_by_stage.append({key: outcomes[key].result.output for key in done})  # type: ignore[union-attr]
        previous = {key: outcomes[key].future or outcomes[key].result for key in done}
        last_ids = done
    has_output = bool(last_ids) and len(outputs_by_stage) == len(plan)
    final = outputs_by_stage[-1] if has_output else {}
    output: Any = None
    if has_output:
        output = final[last_ids[0]] if len(plan[-1]) == 1 else [final[k] for k in last_ids]
    return run.finish(output, has_output=has_output, details={"stages": outputs_by_stage})
