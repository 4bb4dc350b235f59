"""The LLM tree reduce: combine many outputs into one answer, level by level.

Outputs are packed, in order, into groups whose estimated size (characters / 4)
fits a token budget; an agent call combines each group, and the answers become
the next level's inputs, until one answer remains. The first level never mixes
partitions, so each partition is summarised on its own before partitions are
combined. Every group of a level with two or more inputs is one agent-call task
(run name ``reduce:L1-G3``), cached like any call, so a rerun of an unchanged
tree pays nothing; a group of one passes up unchanged. Because each call
combines at least two inputs, every level is smaller than the one before and
the tree always ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.call.window import CallOutcome
from prefect_fanout.engine.run import Call, Engine
from prefect_fanout.errors import describe
from prefect_fanout.files import jsonable
from prefect_fanout.llm.request import output_as_text
from prefect_fanout.mapping.defaults import DEFAULT_REDUCE_BUDGET
from prefect_fanout.usage import Ledger

__all__ = [
    "DEFAULT_REDUCE_BUDGET",
    "REDUCE_INSTRUCTION",
    "Piece",
    "TreeReduce",
    "estimate_tokens",
    "plan_groups",
    "tree_reduce",
]

REDUCE_TAG = "fanout:reduce"

REDUCE_INSTRUCTION = (
    "Combine the {count} results listed under 'Upstream results' into one answer. "
    "Keep every distinct finding, merge duplicates, and answer in the same form as the results."
)


def estimate_tokens(text: str) -> int:
    """A rough token count: characters / 4, rounded up."""
    return -(-len(text) // 4)


@dataclass(frozen=True)
class Piece:
    """One input of a reduce level.

    Attributes:
        id: An item id on the first level, a group id (``L1-G3``) above it.
        text: The output as text (structured outputs as JSON).
        boundary: Groups never span two boundaries (the partition key on the
            first level; None above it).

    """

    id: str
    text: str
    boundary: str | None = None

    @property
    def tokens(self) -> int:
        """Estimated tokens of this piece as it appears in a reduce prompt."""
        return estimate_tokens(f"### {self.id}\n{self.text}\n\n")


def plan_groups(pieces: Sequence[Piece], budget: int) -> list[list[Piece]]:
    """Pack pieces, in order, into groups of at most ``budget`` estimated tokens.

    A group is closed when the next piece would take it over the budget, but
    only once it holds two pieces, so every group of a run of two or more
    pieces combines at least two; a piece over the budget on its own still
    pairs with its neighbour. A change of ``boundary`` always closes a group.

    Args:
        pieces: The level's inputs, in order.
        budget: Estimated tokens per group.

    Returns:
        The groups, in order; singletons only where a boundary run has one piece left.

    """
    groups: list[list[Piece]] = []
    current: list[Piece] = []
    used = 0
    for piece in pieces:
        crosses = bool(current) and piece.boundary != current[-1].boundary
        full = len(current) >= 2 and used + piece.tokens > budget
        if crosses or full:
            groups.append(current)
            current, used = [], 0
        current.append(piece)
        used += piece.tokens
    if current:
        groups.append(current)
    return groups


@dataclass
class TreeReduce:
    """The outcome of a tree reduce.

    Attributes:
        agent: The reducing agent's name.
        status: ``completed``, ``failed`` or ``skipped`` (nothing to reduce).
        inputs: How many outputs went in.
        token_budget: Estimated tokens per call.
        answer: The final answer (text, or structured output as JSON data).
        levels: Levels that made calls.
        calls: Reduce calls made (cache hits included).
        cached: Calls answered from the cache.
        tree: Per level, the groups: id, input ids, estimated tokens, cached.
        usage: Tokens and cost of the reduce calls.
        error: The first failure, when the reduce failed.

    """

    agent: str
    status: str
    inputs: int
    token_budget: int
    answer: Any = None
    levels: int = 0
    calls: int = 0
    cached: int = 0
    tree: list[dict[str, Any]] = field(default_factory=list)
    usage: Ledger = field(default_factory=Ledger)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The content of ``reduce.json``."""
        return {
            "agent": self.agent,
            "status": self.status,
            "answer": jsonable(self.answer),
            "inputs": self.inputs,
            "levels": self.levels,
            "calls": self.calls,
            "cached": self.cached,
            "token_budget": self.token_budget,
            "error": self.error,
            "usage": self.usage.model_dump(),
            "tree": self.tree,
        }


@dataclass(frozen=True)
class _Group:
    id: str
    level: int
    pieces: list[Piece]


def tree_reduce(
    pieces: Sequence[Piece],
    *,
    agent: AgentProfile,
    engine: Engine,
    token_budget: int = DEFAULT_REDUCE_BUDGET,
) -> TreeReduce:
    """Combine ``pieces`` into one answer with agent calls, level by level (inside a flow).

    Args:
        pieces: The outputs to combine, in order, with their partition as boundary.
        agent: The reducing agent.
        engine: The run's engine: its call path (resolver, cache) and window make the calls.
        token_budget: Estimated tokens one call may combine (at least 1).

    Returns:
        The outcome; a failed call ends the reduce with status ``failed``.

    """
    outcome = TreeReduce(
        agent=agent.name, status="skipped", inputs=len(pieces), token_budget=token_budget
    )
    if not pieces:
        return outcome
    current = list(pieces)
    level = 0
    while True:
        planned = plan_groups(current, max(1, token_budget))
        calls = [g for g in planned if len(g) >= 2]
        if level == 0 and len(current) == 1:
            calls = planned  # a single output is still summarised once
        if not calls:
            # Only when every partition has one output: combine across partitions.
            if all(p.boundary is None for p in current):
                raise AssertionError("unreachable: two or more pieces always make a call")
            current = [Piece(p.id, p.text) for p in current]
            continue
        level += 1
        numbered = {id(g): f"L{level}-G{n}" for n, g in enumerate(calls, start=1)}
        groups = [_Group(numbered[id(g)], level, g) for g in calls]
        finished: dict[str, CallOutcome[str]] = {}
        jobs = [
            Call(
                g.id,
                agent,
                REDUCE_INSTRUCTION.format(count=len(g.pieces)),
                context={piece.id: piece.text for piece in g.pieces},
                tags=(REDUCE_TAG,),
                run_name=f"reduce:{g.id}",
            )
            for g in groups
        ]
        for done in engine.stream(jobs):
            finished[done.key] = done
            outcome.usage.add(done.result, failed=not done.ok, error=done.error)
        outcome.levels = level
        outcome.calls += len(groups)
        outcome.cached += sum(1 for d in finished.values() if d.result and d.result.cached)
        outcome.tree.append(_level_record(level, groups, finished))
        failed = [g.id for g in groups if not finished[g.id].ok]
        if failed:
            error = finished[failed[0]].error
            outcome.status = "failed"
            outcome.error = f"reduce:{failed[0]}: {describe(error)}"
            return outcome
        following: list[Piece] = []
        for members in planned:
            group_id = numbered.get(id(members))
            if group_id is None:  # a lone piece passes up unchanged
                following.extend(Piece(p.id, p.text) for p in members)
                continue
            result = finished[group_id].result
            assert result is not None
            following.append(Piece(group_id, output_as_text(result)))
            outcome.answer = result.output
        current = following
        if len(current) == 1:
            outcome.status = "completed"
            return outcome


def _level_record(
    level: int, groups: list[_Group], finished: Mapping[str, CallOutcome[str]]
) -> dict[str, Any]:
    return {
        "level": level,
        "groups": [
            {
                "id": g.id,
                "inputs": [p.id for p in g.pieces],
                "estimated_tokens": sum(p.tokens for p in g.pieces),
                "status": "completed" if finished[g.id].ok else "failed",
                "cached": bool(finished[g.id].result and finished[g.id].result.cached),
            }
            for g in groups
        ],
    }
