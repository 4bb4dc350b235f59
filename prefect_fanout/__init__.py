"""prefect-fanout: parallel LLM-agent work as ordinary Prefect 3 flows.

Each agent call is a Prefect task run with retries and a content cache; plans
of dependent tasks become flows wired by futures; corpora are partitioned,
mapped over the task runner and reduced.
"""

from prefect_fanout.cache import CacheMode, CacheOptions
from prefect_fanout.call import (
    agent_call,
    build_request,
    call_agent,
    result_from_future,
    result_from_state,
    submit_agent_call,
)
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
from prefect_fanout.pricing import cost_usd, price_for
from prefect_fanout.profiles import BUILTIN_PROFILES, AgentProfile, resolve_agent
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
    "CallRequest",
    "CallTimeoutError",
    "ConfigurationError",
    "FanoutError",
    "LLMEndpoint",
    "NonRetryableAPIError",
    "OutputValidationError",
    "RetriesExhaustedError",
    "RetryAfterTooLongError",
    "RetryPolicy",
    "agent_call",
    "build_request",
    "call_agent",
    "cost_usd",
    "price_for",
    "resolve_agent",
    "resolve_endpoint",
    "result_from_future",
    "result_from_state",
    "submit_agent_call",
]
