"""The flows prefect-fanout ships, and the Python entry points that run them.

Every shipped flow is a module-level ``@flow`` with real parameters, so each can
be deployed (``deployments/prefect.yaml`` names them by entrypoint) and rerun
from the UI:

- ``fanout-call`` (:func:`call_flow`): one agent call;
- ``fanout-dispatch`` (:func:`dispatch_flow`): a plan, given as a file path or
  a :class:`~prefect_fanout.Plan`;
- ``fanout-map`` (:func:`map_flow`): partition -> map -> merge -> reduce over a
  corpus path.

:func:`dispatch_plan` and :func:`map_corpus` are the Python entry points: they
check everything first (bad input raises a :class:`~prefect_fanout.FanoutError`
before any flow run starts), then run the flow, or run inside the caller's
flow run when there is one (``map_corpus``).

The map's and the dispatch's flows live in :mod:`prefect_fanout.shipped` (a command
imports only its own); this module gathers them and stays the deployments' entrypoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from prefect_fanout.call.single import call_agent
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.mapping.deployed import run_partition_chunk
from prefect_fanout.options import RunOptions
from prefect_fanout.shipped.dispatch import dispatch_flow, dispatch_plan, run_dispatch_flow
from prefect_fanout.shipped.map import map_corpus, map_flow, run_map_flow
from prefect_fanout.shipped.reporting import INLINE_PARAMETER_BYTES, stash

__all__ = [
    "INLINE_PARAMETER_BYTES",
    "call_flow",
    "partition_flow",
    "dispatch_flow",
    "dispatch_plan",
    "map_corpus",
    "map_flow",
    "run_dispatch_flow",
    "run_map_flow",
    "stash",
]


@flow(name="fanout-call", log_prints=False)
def call_flow(
    prompt: str | None = None,
    agent: str = "default",
    system: str | None = None,
    prompt_path: str | None = None,
    options: RunOptions | None = None,
) -> AgentResult:
    """Make one agent call as a task run of this flow.

    Args:
        prompt: The user prompt (or give ``prompt_path``).
        agent: The agent's name (built-in or a saved AgentProfile block).
        system: A system prompt overriding the agent's.
        prompt_path: A file holding the prompt (large prompts travel this way).
        options: The run's options (model, endpoint, cache, max_tokens, temperature,
            timeout_seconds, limits; see :class:`~prefect_fanout.options.RunOptions`).

    Returns:
        The call's result.
    """
    if prompt_path is not None:
        prompt = Path(prompt_path).read_text(encoding="utf-8")
    if prompt is None:
        raise ConfigurationError("fanout-call needs a prompt or a prompt_path")
    return call_agent(prompt, agent=agent, system=system, options=options)


@flow(name="fanout-partition", log_prints=False, validate_parameters=True)
def partition_flow(
    chunk_file: str, options: RunOptions | None = None, threads: int = 8
) -> dict[str, Any]:
    """Run one chunk of a map's calls: what a map with ``partition_deployment`` starts.

    Deploy it on a work pool (``deployments/prefect.yaml``, entry ``partition``); a map
    run with ``--partition-deployment fanout-partition/partition`` starts one flow run
    per chunk and reads the answers from result storage (README "Task runners").

    Args:
        chunk_file: The chunk's calls, written by the map in its output directory.
        options: The map's options (endpoint as a block name, or ``OPENAI_*`` here).
        threads: Calls in flight at most.

    Returns:
        Counts of the chunk's calls: completed, failed, cached.
    """
    return run_partition_chunk(chunk_file, options, threads)
