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
    "AgentProfile": "prefect_fanout.agents.profiles",
    "AgentResult": "prefect_fanout.call.result",
    "BUILTIN_PROFILES": "prefect_fanout.agents.profiles",
    "CacheMode": "prefect_fanout.call.cache",
    "CacheOptions": "prefect_fanout.call.cache",
    "CallRecord": "prefect_fanout.ui.artifacts",
    "CallRequest": "prefect_fanout.call.request",
    "CallTimeoutError": "prefect_fanout.errors",
    "ConfigurationError": "prefect_fanout.errors",
    "CorpusError": "prefect_fanout.mapping.corpus",
    "DispatchResult": "prefect_fanout.dispatch.result",
    "FanoutError": "prefect_fanout.errors",
    "Item": "prefect_fanout.mapping.corpus",
    "LLMEndpoint": "prefect_fanout.agents.endpoints",
    "MapJob": "prefect_fanout.mapping.job",
    "MapSummary": "prefect_fanout.mapping.summary",
    "NonRetryableAPIError": "prefect_fanout.errors",
    "OutputValidationError": "prefect_fanout.errors",
    "PartitionReport": "prefect_fanout.mapping.summary",
    "PartitionSpec": "prefect_fanout.mapping.partition",
    "PartitionSpecError": "prefect_fanout.mapping.partition",
    "Plan": "prefect_fanout.plan.model",
    "PlanConfig": "prefect_fanout.plan.model",
    "PlanValidationError": "prefect_fanout.plan.model",
    "ProgressReporter": "prefect_fanout.ui.artifacts",
    "ReduceReport": "prefect_fanout.mapping.summary",
    "RetriesExhaustedError": "prefect_fanout.errors",
    "RetryAfterTooLongError": "prefect_fanout.errors",
    "RetryPolicy": "prefect_fanout.call.retry",
    "TaskOutcome": "prefect_fanout.dispatch.result",
    "TaskSpec": "prefect_fanout.plan.model",
    "TemplateFieldError": "prefect_fanout.mapping.prompts",
    "TreeReduce": "prefect_fanout.mapping.reduce",
    "agent_call": "prefect_fanout.call.task",
    "build_request": "prefect_fanout.call.task",
    "call_agent": "prefect_fanout.call.task",
    "cost_usd": "prefect_fanout.call.pricing",
    "create_blocks": "prefect_fanout.blocks",
    "critical_path": "prefect_fanout.plan.model",
    "dependency_levels": "prefect_fanout.plan.model",
    "dispatch_flow": "prefect_fanout.dispatch.run",
    "dispatch_plan": "prefect_fanout.dispatch.run",
    "execute_map": "prefect_fanout.mapping.run",
    "load_agents_file": "prefect_fanout.agents.agentsfile",
    "load_dispatch_plan": "prefect_fanout.plan.agents",
    "load_items": "prefect_fanout.mapping.corpus",
    "load_plan": "prefect_fanout.plan.model",
    "map_corpus": "prefect_fanout.mapping.run",
    "parse_partition_spec": "prefect_fanout.mapping.partition",
    "partition": "prefect_fanout.mapping.partition",
    "prepare_map": "prefect_fanout.mapping.job",
    "price_for": "prefect_fanout.call.pricing",
    "publish_run_artifacts": "prefect_fanout.ui.artifacts",
    "resolve_agent": "prefect_fanout.agents.profiles",
    "resolve_endpoint": "prefect_fanout.agents.endpoints",
    "result_from_future": "prefect_fanout.call.task",
    "result_from_state": "prefect_fanout.call.task",
    "result_of": "prefect_fanout.dispatch.run",
    "run_map": "prefect_fanout.mapping.run",
    "run_plan": "prefect_fanout.dispatch.run",
    "submit_agent_call": "prefect_fanout.call.task",
    "tree_reduce": "prefect_fanout.mapping.reduce",
}

if TYPE_CHECKING:
    from prefect_fanout.agents.agentsfile import load_agents_file
    from prefect_fanout.agents.endpoints import LLMEndpoint, resolve_endpoint
    from prefect_fanout.agents.profiles import BUILTIN_PROFILES, AgentProfile, resolve_agent
    from prefect_fanout.blocks import create_blocks
    from prefect_fanout.call.cache import CacheMode, CacheOptions
    from prefect_fanout.call.pricing import cost_usd, price_for
    from prefect_fanout.call.request import CallRequest
    from prefect_fanout.call.result import AgentResult
    from prefect_fanout.call.retry import RetryPolicy
    from prefect_fanout.call.task import (
        agent_call,
        build_request,
        call_agent,
        result_from_future,
        result_from_state,
        submit_agent_call,
    )
    from prefect_fanout.dispatch.result import DispatchResult, TaskOutcome
    from prefect_fanout.dispatch.run import dispatch_flow, dispatch_plan, result_of, run_plan
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
    from prefect_fanout.mapping.corpus import CorpusError, Item, load_items
    from prefect_fanout.mapping.job import MapJob, prepare_map
    from prefect_fanout.mapping.partition import (
        PartitionSpec,
        PartitionSpecError,
        parse_partition_spec,
        partition,
    )
    from prefect_fanout.mapping.prompts import TemplateFieldError
    from prefect_fanout.mapping.reduce import TreeReduce, tree_reduce
    from prefect_fanout.mapping.run import execute_map, map_corpus, run_map
    from prefect_fanout.mapping.summary import MapSummary, PartitionReport, ReduceReport
    from prefect_fanout.plan.agents import load_dispatch_plan
    from prefect_fanout.plan.model import (
        Plan,
        PlanConfig,
        PlanValidationError,
        TaskSpec,
        critical_path,
        dependency_levels,
        load_plan,
    )
    from prefect_fanout.ui.artifacts import CallRecord, ProgressReporter, publish_run_artifacts

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
