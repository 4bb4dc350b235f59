"""prefect-fanout: parallel LLM-agent work as ordinary Prefect 3 flows.

Each agent call is a Prefect task run with retries and a content cache; plans
of dependent tasks become flows wired by futures; corpora are partitioned,
mapped over the task runner and reduced; fan-out, fan-in, pipelines and trees
of agent calls are flows too (``fan_out``, ``fan_in``, ``pipeline``, ``tree``).

The public API is exactly the names in ``__all__`` (a test pins the list).
Everything else lives in sub-packages by concept (``call``, ``agents``,
``plan``, ``dispatch``, ``mapping``, ``ui``, ``cli``) and may change without
notice; ``prefect_fanout.blocks`` is public too, as the module Prefect loads
the block types from. Importing this package changes nothing in Prefect.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AgentCallError",
    "AgentProfile",
    "AgentResult",
    "CacheMode",
    "CacheOptions",
    "CallRecord",
    "CallRequest",
    "CallTimeoutError",
    "ConfigurationError",
    "CorpusError",
    "DispatchResult",
    "FanoutError",
    "Item",
    "LLMEndpoint",
    "MapSummary",
    "NonRetryableAPIError",
    "OutputValidationError",
    "PartitionSpecError",
    "PatternArgumentError",
    "PatternMetrics",
    "PatternResult",
    "Plan",
    "PlanValidationError",
    "RetriesExhaustedError",
    "RetryAfterTooLongError",
    "RetryOptions",
    "TaskSpec",
    "agent_call",
    "build_request",
    "call_agent",
    "dispatch_flow",
    "dispatch_plan",
    "fan_in",
    "fan_out",
    "load_agents_file",
    "load_items",
    "load_plan",
    "map_corpus",
    "map_flow",
    "partition",
    "pattern_result_of",
    "pipeline",
    "result_from_future",
    "run_plan",
    "submit_agent_call",
    "tree",
]

# Where each public name lives. Imports are lazy so the `fanout` command line starts
# fast; type checkers see the real imports below.
_EXPORTS: dict[str, str] = {
    # the call
    "AgentResult": "prefect_fanout.llm.result",
    "CacheMode": "prefect_fanout.call.cache",
    "CacheOptions": "prefect_fanout.call.cache",
    "CallRequest": "prefect_fanout.llm.request",
    "RetryOptions": "prefect_fanout.llm.retry",
    "agent_call": "prefect_fanout.call.task",
    "build_request": "prefect_fanout.call.task",
    "call_agent": "prefect_fanout.call.task",
    "result_from_future": "prefect_fanout.call.task",
    "submit_agent_call": "prefect_fanout.call.task",
    # agents and endpoints
    "AgentProfile": "prefect_fanout.agents.profiles",
    "LLMEndpoint": "prefect_fanout.llm.endpoints",
    "load_agents_file": "prefect_fanout.agents.agentsfile",
    # plans and dispatch
    "DispatchResult": "prefect_fanout.dispatch.result",
    "Plan": "prefect_fanout.plan.model",
    "TaskSpec": "prefect_fanout.plan.model",
    "dispatch_flow": "prefect_fanout.flows",
    "dispatch_plan": "prefect_fanout.flows",
    "load_plan": "prefect_fanout.plan.model",
    "run_plan": "prefect_fanout.dispatch.run",
    # corpora: partition -> map -> reduce
    "Item": "prefect_fanout.mapping.corpus",
    "MapSummary": "prefect_fanout.mapping.summary",
    "load_items": "prefect_fanout.mapping.corpus",
    "map_corpus": "prefect_fanout.flows",
    "map_flow": "prefect_fanout.flows",
    "partition": "prefect_fanout.mapping.partition",
    # patterns: fan-out, fan-in, pipeline, tree
    "CallRecord": "prefect_fanout.usage",
    "PatternMetrics": "prefect_fanout.patterns.result",
    "PatternResult": "prefect_fanout.patterns.result",
    "fan_in": "prefect_fanout.patterns.fan_in",
    "fan_out": "prefect_fanout.patterns.fan_out",
    "pattern_result_of": "prefect_fanout.patterns.engine",
    "pipeline": "prefect_fanout.patterns.pipeline",
    "tree": "prefect_fanout.patterns.tree",
    # errors
    "PatternArgumentError": "prefect_fanout.errors",
    "AgentCallError": "prefect_fanout.errors",
    "CallTimeoutError": "prefect_fanout.errors",
    "ConfigurationError": "prefect_fanout.errors",
    "CorpusError": "prefect_fanout.errors",
    "FanoutError": "prefect_fanout.errors",
    "NonRetryableAPIError": "prefect_fanout.errors",
    "OutputValidationError": "prefect_fanout.errors",
    "PartitionSpecError": "prefect_fanout.errors",
    "PlanValidationError": "prefect_fanout.errors",
    "RetriesExhaustedError": "prefect_fanout.errors",
    "RetryAfterTooLongError": "prefect_fanout.errors",
}

if TYPE_CHECKING:
    from prefect_fanout.agents.agentsfile import load_agents_file
    from prefect_fanout.agents.profiles import AgentProfile
    from prefect_fanout.call.cache import CacheMode, CacheOptions
    from prefect_fanout.call.task import (
        agent_call,
        build_request,
        call_agent,
        result_from_future,
        submit_agent_call,
    )
    from prefect_fanout.dispatch.result import DispatchResult
    from prefect_fanout.dispatch.run import run_plan
    from prefect_fanout.errors import (
        AgentCallError,
        CallTimeoutError,
        ConfigurationError,
        CorpusError,
        FanoutError,
        NonRetryableAPIError,
        OutputValidationError,
        PartitionSpecError,
        PatternArgumentError,
        PlanValidationError,
        RetriesExhaustedError,
        RetryAfterTooLongError,
    )
    from prefect_fanout.flows import dispatch_flow, dispatch_plan, map_corpus, map_flow
    from prefect_fanout.llm.endpoints import LLMEndpoint
    from prefect_fanout.llm.request import CallRequest
    from prefect_fanout.llm.result import AgentResult
    from prefect_fanout.llm.retry import RetryOptions
    from prefect_fanout.mapping.corpus import Item, load_items
    from prefect_fanout.mapping.partition import partition
    from prefect_fanout.mapping.summary import MapSummary
    from prefect_fanout.patterns.engine import pattern_result_of
    from prefect_fanout.patterns.fan_in import fan_in
    from prefect_fanout.patterns.fan_out import fan_out
    from prefect_fanout.patterns.pipeline import pipeline
    from prefect_fanout.patterns.result import PatternMetrics, PatternResult
    from prefect_fanout.patterns.tree import tree
    from prefect_fanout.plan.model import Plan, TaskSpec, load_plan
    from prefect_fanout.usage import CallRecord


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_fanout' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
