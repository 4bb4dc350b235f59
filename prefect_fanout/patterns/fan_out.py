"""Fan-out: one agent call per item, agents taken round robin (seed 001, pattern 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefect import flow

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.errors import PatternArgumentError
from prefect_fanout.options import RunOptions
from prefect_fanout.patterns.engine import Call, PatternRun
from prefect_fanout.patterns.shapes import agent_list, item_prompt


@flow(name="fanout-fan-out", log_prints=False)
def fan_out(
    items: Sequence[Any],
    agent: str | AgentProfile | list[str | AgentProfile] = "default",
    *,
    agents: Mapping[str, AgentProfile] | None = None,
    prompt: str | None = None,
    options: RunOptions | None = None,
) -> Any:
    """Make one agent call per item, in parallel, and return every output in item order.

    The call of item ``i`` is ``item-i``, answered by ``agent[i % len(agent)]``
    when ``agent`` is a list (round robin). Under ``partial`` a failed item's
    output is None and the others go on; under ``all_or_nothing`` the first
    failure stops every call not yet started and the run fails.

    Args:
        items: The items; strings as they are, anything else as JSON.
        agent: An agent (name or profile), or a list of agents used round robin.
        agents: Extra profiles by name.
        prompt: A template for each item's prompt; ``{item}`` is replaced by the
            item (without it the item is appended).
        options: The run's options (model, endpoint, max_workers (default 8),
            failure_policy, cache, max_tokens, temperature, timeout_seconds, limits,
            ``batch``: the calls through the Batch API first (README "Batch mode");
            ``task_runner`` ``dask``/``ray`` (with ``dask_address``/``ray_address``,
            ``chunk_size``): the calls go to the workers in chunks, as a map's do; see
            :class:`~prefect_fanout.options.RunOptions`).

    Returns:
        The final state carrying the :class:`PatternResult` (called directly:
        the result; a failed run raises, see ``pattern_result_of``).

    Raises:
        PatternArgumentError: ``items`` is empty or not a list, ``agent`` is not
            an agent.
    """
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Sequence):
        raise PatternArgumentError("items", f"expected a list, got {type(items).__name__}")
    if not items:
        raise PatternArgumentError("items", "is empty")
    pool = agent_list("agent", agent)
    run = PatternRun("fan-out", agents=agents, options=options)
    run.check(pool)
    keys = [f"item-{index}" for index in range(len(items))]
    calls = [
        Call(key, pool[index % len(pool)], item_prompt(item, prompt))
        for index, (key, item) in enumerate(zip(keys, items, strict=True))
    ]
    if run.options.batch:  # batch mode: the Batch API answers first, failed lines go online
        run.answer_in_batches(calls)
    with run.on_workers():  # dask, ray: the calls go to the workers in chunks
        outcomes = run.run_calls(calls)
    outputs = [
        outcomes[key].result.output if key in outcomes and outcomes[key].ok else None  # type: ignore[union-attr]
        for key in keys
    ]
    done = sum(1 for key in keys if key in outcomes and outcomes[key].ok)
    details: dict[str, Any] = {"ids": keys}
    if run.batch is not None:
        details["batch"] = run.batch.model_dump(mode="json")
    return run.finish(outputs, has_output=done > 0, details=details)
