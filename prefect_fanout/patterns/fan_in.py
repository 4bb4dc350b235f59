"""Fan-in: parallel collectors, then one aggregator given everything they collected (seed 001)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect import flow

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.options import RunOptions
from prefect_fanout.patterns.engine import Call, PatternRun, check_agent_arg
from prefect_fanout.patterns.shapes import agent_list, item_prompt, keyed_inputs

AGGREGATE_PROMPT = "Combine the collected results below into one answer."


@flow(name="fanout-fan-in", log_prints=False)
def fan_in(
    sources: Any,
    *,
    collector: str | AgentProfile | list[str | AgentProfile],
    aggregator: str | AgentProfile,
    prompt: str | None = None,
    aggregate_prompt: str = AGGREGATE_PROMPT,
    agents: Mapping[str, AgentProfile] | None = None,
    options: RunOptions | None = None,
) -> Any:
    """Collect from every source in parallel, then aggregate all collected outputs in one call.

    The collector call of a source is named by its key (a mapping's key, else
    ``source-i``); the aggregator call (``aggregate``) gets ``aggregate_prompt``
    followed by every completed collector output in the documented
    ``## Upstream results`` / ``### <id>`` format, in source order. Under
    ``partial`` the aggregator gets the collectors that completed (none: the run
    fails); under ``all_or_nothing`` any collector failure fails the run and the
    aggregator is not called.

    Args:
        sources: A list of sources, or a mapping of id to source.
        collector: The collecting agent, or a list used round robin.
        aggregator: The aggregating agent.
        prompt: A template for each collector prompt (``{item}`` is the source).
        aggregate_prompt: The aggregator's prompt, before the collected results.
        agents: Extra profiles by name.
        options: The run's options (model, endpoint, max_workers (default 8),
            failure_policy, cache, max_tokens, temperature, timeout_seconds, limits,
            ``task_runner``: on ``dask``/``ray`` the collector calls go to the workers in
            chunks; see :class:`~prefect_fanout.options.RunOptions`).

    Returns:
        The final state carrying the :class:`PatternResult`; ``output`` is the
        aggregator's output, ``details["collected"]`` the collectors' by id.

    Raises:
        PatternArgumentError: ``sources`` is empty, or an agent argument is invalid.
    """
    pairs = keyed_inputs("sources", sources, "source")
    pool = agent_list("collector", collector)
    aggregator = check_agent_arg("aggregator", aggregator)
    run = PatternRun("fan-in", agents=agents, options=options)
    run.check([*pool, aggregator])
    calls = (
        Call(key, pool[index % len(pool)], item_prompt(source, prompt), tags=("fan-in:collect",))
        for index, (key, source) in enumerate(pairs)
    )
    with run.on_workers():  # dask, ray: the collectors go to the workers in chunks
        outcomes = run.run_calls(calls)
    done = [key for key, _ in pairs if key in outcomes and outcomes[key].ok]
    collected = {key: outcomes[key].result.output for key in done}  # type: ignore[union-attr]
    details: dict[str, Any] = {"collected": collected}
    if not done or run.stopped:
        run.skip("aggregate", aggregator, "not started: no collector output to aggregate")
        return run.finish(None, has_output=False, details=details)
    # Futures draw edges in the run graph; a call answered from the cache has only its result.
    context = {key: outcomes[key].future or outcomes[key].result for key in done}
    final = run.run_calls([Call("aggregate", aggregator, aggregate_prompt, context=context)])
    answer = final["aggregate"]
    output = answer.result.output if answer.ok else None  # type: ignore[union-attr]
    return run.finish(output, has_output=answer.ok, details=details)
