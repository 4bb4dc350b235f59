"""prefect-fanout: parallel LLM-agent work as ordinary Prefect 3 flows.

Each agent call is a Prefect task run with retries and a content cache; plans
of dependent tasks become flows wired by futures; corpora are partitioned,
mapped over the task runner and reduced; fan-out, fan-in, pipelines and trees
of agent calls are flows too. Every shape takes its run-wide settings as one
:class:`RunOptions` (``options=``).

The public face is exactly ``__all__`` below (a test pins it). The rest is importable from
documented submodules: every error from :mod:`prefect_fanout.errors`, run options and cache
modes from :mod:`prefect_fanout.options`, requests from :mod:`prefect_fanout.llm.request`,
corpus items from :mod:`prefect_fanout.mapping.corpus`, pattern records from
:mod:`prefect_fanout.usage`; ``prefect_fanout.blocks`` is the module Prefect loads the block
types from. Importing this package changes nothing in Prefect.
"""

from __future__ import annotations

import importlib
from typing import Any

# The one list of public names, by the module each lives in. Imports are lazy so the
# `fanout` command line starts fast (type checkers see the names through __getattr__;
# import from the submodule named here for precise types).
_PUBLIC: dict[str, str] = {
    "AgentProfile": "prefect_fanout.agents.profiles",
    "AgentResult": "prefect_fanout.llm.result",
    "DispatchResult": "prefect_fanout.dispatch.result",
    "FanoutError": "prefect_fanout.errors",
    "Item": "prefect_fanout.mapping.corpus",
    "LLMEndpoint": "prefect_fanout.llm.endpoints",
    "MapSummary": "prefect_fanout.mapping.summary",
    "PatternResult": "prefect_fanout.patterns.result",
    "Plan": "prefect_fanout.plan.model",
    "RunOptions": "prefect_fanout.options",
    "TaskSpec": "prefect_fanout.plan.model",
    "agent_call": "prefect_fanout.call.task",
    "build_request": "prefect_fanout.call.task",
    "call_agent": "prefect_fanout.call.single",
    "dispatch_flow": "prefect_fanout.shipped.dispatch",
    "dispatch_plan": "prefect_fanout.shipped.dispatch",
    "fan_in": "prefect_fanout.patterns.fan_in",
    "fan_out": "prefect_fanout.patterns.fan_out",
    "load_agents_file": "prefect_fanout.agents.agentsfile",
    "load_plan": "prefect_fanout.plan.model",
    "map_corpus": "prefect_fanout.shipped.map",
    "map_flow": "prefect_fanout.shipped.map",
    "partition": "prefect_fanout.mapping.partition",
    "pattern_result_of": "prefect_fanout.patterns.engine",
    "pipeline": "prefect_fanout.patterns.pipeline",
    "result_from_future": "prefect_fanout.call.task",
    "run_plan": "prefect_fanout.dispatch.run",
    "submit_agent_call": "prefect_fanout.call.door",
    "tree": "prefect_fanout.patterns.tree",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_fanout' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
