"""Parallel-agent patterns as Prefect flows: fan-out, fan-in, pipeline with branches, tree.

Each pattern is a module-level ``@flow`` (a subflow when called inside a flow)
whose every agent call is the library's agent-call task, submitted through one
:class:`~prefect_fanout.call.window.CallWindow` and resolved by one
:class:`~prefect_fanout.agents.resolver.Resolver` per run
(:mod:`prefect_fanout.patterns.engine`). Each returns a
:class:`~prefect_fanout.patterns.result.PatternResult` with one record per call
and the run's metrics (speedup, parallelism factor, success rate, cost
multiplier, break-even), also shown in the flow run's summary artifact.
See ``docs/patterns.md``.
"""

from __future__ import annotations

from prefect_fanout.patterns.engine import pattern_result_of
from prefect_fanout.patterns.fan_in import fan_in
from prefect_fanout.patterns.fan_out import fan_out
from prefect_fanout.patterns.pipeline import pipeline
from prefect_fanout.patterns.result import PatternMetrics, PatternResult, compute_metrics
from prefect_fanout.patterns.tree import SPLIT_SCHEMA, tree

__all__ = [
    "SPLIT_SCHEMA",
    "PatternMetrics",
    "PatternResult",
    "compute_metrics",
    "fan_in",
    "fan_out",
    "pattern_result_of",
    "pipeline",
    "tree",
]
