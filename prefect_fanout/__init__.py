"""prefect-fanout: parallel LLM-agent work as ordinary Prefect 3 flows.

Each agent call is a Prefect task run with retries and a content cache; plans
of dependent tasks become flows wired by futures; corpora are partitioned,
mapped over the task runner and reduced.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Public names and the module each lives in. Imports are lazy so the `fanout`
# command line starts fast; type checkers see the real imports below.
_EXPORTS: dict[str, str] = {
    "AgentCallError": "prefect_fanout.errors",
    "AgentProfile": "prefect_fanout.profiles",
    "AgentResult": "prefect_fanout.results",
    "BUILTIN_PROFILES": "prefect_fanout.profiles",
    "CacheMode": "prefect_fanout.cache",
    "CacheOptions": "prefect_fanout.cache",
    "CallRecord": "prefect_fanout.artifacts",
    "CallRequest": "prefect_fanout.request",
    "CallTimeoutError": "prefect_fanout.errors",
    "ConfigurationError": "prefect_fanout.errors",
    "CorpusError": "prefect_fanout.corpus",
    "DispatchResult": "prefect_fanout.dispatch_result",
    "FanoutError": "prefect_fanout.errors",
    "Item": "prefect_fanout.corpus",
    "LLMEndpoint": "prefect_fanout.endpoints",
    "MapJob": "prefect_fanout.mapjob",
    "MapSummary": "prefect_fanout.mapsummary",
    "NonRetryableAPIError": "prefect_fanout.errors",
    "OutputValidationError": "prefect_fanout.errors",
    "PartitionReport": "prefect_fanout.mapsummary",
    "PartitionSpec": "prefect_fanout.partition",
    "PartitionSpecError": "prefect_fanout.partition",
    "Plan": "prefect_fanout.plan",
    "PlanConfig": "prefect_fanout.plan",
    "PlanValidationError": "prefect_fanout.plan",
    "ProgressReporter": "prefect_fanout.artifacts",
    "ReduceReport": "prefect_fanout.mapsummary",
    "RetriesExhaustedError": "prefect_fanout.errors",
    "RetryAfterTooLongError": "prefect_fanout.errors",
    "RetryPolicy": "prefect_fanout.retry",
    "TaskOutcome": "prefect_fanout.dispatch_result",
    "TaskSpec": "prefect_fanout.plan",
    "TemplateFieldError": "prefect_fanout.itemprompts",
    "TreeReduce": "prefect_fanout.reduce",
    "agent_call": "prefect_fanout.call",
    "build_request": "prefect_fanout.call",
    "call_agent": "prefect_fanout.call",
    "cost_usd": "prefect_fanout.pricing",
    "create_blocks": "prefect_fanout.blocks",
    "critical_path": "prefect_fanout.plan",
    "dependency_levels": "prefect_fanout.plan",
    "dispatch_flow": "prefect_fanout.dispatch",
    "dispatch_plan": "prefect_fanout.dispatch",
    "execute_map": "prefect_fanout.mapreduce",
    "load_agents_file": "prefect_fanout.agentsfile",
    "load_dispatch_plan": "prefect_fanout.dispatch_agents",
    "load_items": "prefect_fanout.corpus",
    "load_plan": "prefect_fanout.plan",
    "map_corpus": "prefect_fanout.mapreduce",
    "parse_partition_spec": "prefect_fanout.partition",
    "partition": "prefect_fanout.partition",
    "prepare_map": "prefect_fanout.mapjob",
    "price_for": "prefect_fanout.pricing",
    "publish_run_artifacts": "prefect_fanout.artifacts",
    "resolve_agent": "prefect_fanout.profiles",
    "resolve_endpoint": "prefect_fanout.endpoints",
    "result_from_future": "prefect_fanout.call",
    "result_from_state": "prefect_fanout.call",
    "result_of": "prefect_fanout.dispatch",
    "run_map": "prefect_fanout.mapreduce",
    "run_plan": "prefect_fanout.dispatch",
    "submit_agent_call": "prefect_fanout.call",
    "tree_reduce": "prefect_fanout.reduce",
}

if TYPE_CHECKING:
    from prefect_fanout.agentsfile import load_agents_file
    from prefect_fanout.artifacts import CallRecord, ProgressReporter, publish_run_artifacts
    from prefect_fanout.blocks import create_blocks
    from prefect_fanout.cache import CacheMode, CacheOptions
    from prefect_fanout.call import (
        agent_call,
        build_request,
        call_agent,
        result_from_future,
        result_from_state,
        submit_agent_call,
    )
    from prefect_fanout.corpus import CorpusError, Item, load_items
    from prefect_fanout.dispatch import dispatch_flow, dispatch_plan, result_of, run_plan
    from prefect_fanout.dispatch_agents import load_dispatch_plan
    from prefect_fanout.dispatch_result import DispatchResult, TaskOutcome
    from prefect_fanout.endpoints import LLMEndpoint, resolve_endpoint
    from prefect_fanout.errors import (
        AgentCallError,
        CallTimeoutError,
        ConfigurationError,
        FanoutError,
        NonRetryableAPIError,
        OutputValidationError,
        RetriesExhaustedError,
        RetryAfterTooLongError,
    )
    from prefect_fanout.itemprompts import TemplateFieldError
    from prefect_fanout.mapjob import MapJob, prepare_map
    from prefect_fanout.mapreduce import execute_map, map_corpus, run_map
    from prefect_fanout.mapsummary import MapSummary, PartitionReport, ReduceReport
    from prefect_fanout.partition import (
        PartitionSpec,
        PartitionSpecError,
        parse_partition_spec,
        partition,
    )
    from prefect_fanout.plan import (
        Plan,
        PlanConfig,
        PlanValidationError,
        TaskSpec,
        critical_path,
        dependency_levels,
        load_plan,
    )
    from prefect_fanout.pricing import cost_usd, price_for
    from prefect_fanout.profiles import BUILTIN_PROFILES, AgentProfile, resolve_agent
    from prefect_fanout.reduce import TreeReduce, tree_reduce
    from prefect_fanout.request import CallRequest
    from prefect_fanout.results import AgentResult
    from prefect_fanout.retry import RetryPolicy

__all__ = [
    "BUILTIN_PROFILES",
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
    "MapJob",
    "MapSummary",
    "NonRetryableAPIError",
    "OutputValidationError",
    "PartitionReport",
    "PartitionSpec",
    "PartitionSpecError",
    "Plan",
    "PlanConfig",
    "PlanValidationError",
    "ProgressReporter",
    "ReduceReport",
    "RetriesExhaustedError",
    "RetryAfterTooLongError",
    "RetryPolicy",
    "TaskOutcome",
    "TaskSpec",
    "TemplateFieldError",
    "TreeReduce",
    "agent_call",
    "build_request",
    "call_agent",
    "cost_usd",
    "create_blocks",
    "critical_path",
    "dependency_levels",
    "dispatch_flow",
    "dispatch_plan",
    "execute_map",
    "load_agents_file",
    "load_dispatch_plan",
    "load_items",
    "load_plan",
    "map_corpus",
    "parse_partition_spec",
    "partition",
    "prepare_map",
    "price_for",
    "publish_run_artifacts",
    "resolve_agent",
    "resolve_endpoint",
    "result_from_future",
    "result_from_state",
    "result_of",
    "run_map",
    "run_plan",
    "submit_agent_call",
    "tree_reduce",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'prefect_fanout' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
