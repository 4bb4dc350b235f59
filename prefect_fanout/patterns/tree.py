"""Tree recursion: split a problem into sub-problems down to a depth, solve leaves, combine up.

Seed 001's divide and conquer (quicksort, a long document split into sections).
Nodes are named by their path from the root: ``0`` is the root, ``0.1`` its
second child, ``0.1.2`` that node's third child. Every step is a task run named
after its node, so the flow run's task runs draw the tree: agent calls are
``AGENT:split:0.1``, ``AGENT:solve:0.1.2`` and ``AGENT:combine:0``; Python
``split``/``combine`` functions run as ``tree-step`` task runs named
``split:0.1`` / ``combine:0``.

The tree is built level by level (every node of a depth is split in parallel),
then all leaves are solved in parallel, then internal nodes are combined from
the deepest level up, each level in parallel.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.errors import PatternArgumentError, describe
from prefect_fanout.llm.request import output_as_text
from prefect_fanout.options import RunOptions
from prefect_fanout.patterns.engine import Call, PatternRun, check_agent_arg

#: The output schema a ``split`` agent should have: ``{"subproblems": [...]}`` (empty: a leaf).
SPLIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"subproblems": {"type": "array", "items": {"type": "string"}}},
    "required": ["subproblems"],
}
COMBINE_PROMPT = "Combine the results of the parts below into the result of the whole."
SPLIT_KEYS = ("subproblems", "sub_problems", "parts", "sections")

Step = str | AgentProfile | Callable[..., Any]


@dataclass
class Node:
    """One node of the tree while it runs."""

    path: str
    depth: int
    problem: Any
    children: list[Node] = field(default_factory=list)
    leaf: bool = False
    status: str = "pending"  # pending | completed | failed
    output: Any = None
    ref: Any = None  # what a parent's combine call gets: the call's future, or the output

    def describe(self) -> dict[str, Any]:
        """The node for ``details["tree"]``."""
        return {
            "depth": self.depth,
            "leaf": self.leaf,
            "status": self.status,
            "children": [child.path for child in self.children],
        }


@task(name="tree-step", cache_policy=NO_CACHE, persist_result=False)
def tree_step(function: Callable[..., Any], value: Any) -> Any:
    """Run a Python ``split`` or ``combine`` function as a task run named after its node."""
    return function(value)


def subproblems_of(output: Any) -> list[Any]:
    """The sub-problems in a ``split`` answer (a list, ``{"subproblems": [...]}``, or JSON).

    Anything else (plain text, None, an empty list) means the node is a leaf.
    """
    if isinstance(output, str):
        try:
            output = json.loads(output)
        except ValueError:
            return []
    if isinstance(output, Mapping):
        output = next((output[k] for k in SPLIT_KEYS if isinstance(output.get(k), list)), None)
    if isinstance(output, (list, tuple)):
        return list(output)
    return []


def _check_step(argument: str, value: Any) -> Step:
    if callable(value) and not isinstance(value, AgentProfile):
        return value
    return check_agent_arg(argument, value)


@flow(name="fanout-tree", log_prints=False)
def tree(
    problem: Any,
    *,
    split: str | AgentProfile | Callable[..., Any],
    solve: str | AgentProfile | Callable[..., Any],
    combine: str | AgentProfile | Callable[..., Any],
    max_depth: int,
    combine_prompt: str = COMBINE_PROMPT,
    agents: Mapping[str, AgentProfile] | None = None,
    options: RunOptions | None = None,
) -> Any:
    """Divide a problem into sub-problems, solve the leaves in parallel, combine up the tree.

    A node at depth ``max_depth`` is a leaf; above it ``split`` decides: a
    Python function ``split(problem) -> list`` or an agent whose answer is a
    list, ``{"subproblems": [...]}`` (see :data:`SPLIT_SCHEMA`) or JSON of
    either; an empty answer makes the node a leaf. Leaves are solved by
    ``solve`` (an agent given the sub-problem, or a function); an internal
    node's result is ``combine`` of its children's: an agent given
    ``combine_prompt``, the node's problem and the children's outputs as
    ``## Upstream results`` / ``### solve:0.1``..., or a function given the
    list of the children's outputs. Under ``partial`` a node combines the
    children that completed (it fails when none did); under ``all_or_nothing``
    the first failure stops everything not yet started.

    Args:
        problem: The root problem (a string as it is, anything else as JSON in prompts).
        split: A function or an agent that returns the sub-problems.
        solve: The agent (or function) that solves a leaf.
        combine: The agent (or function) that combines children's results.
        max_depth: The deepest level (0: the root is a leaf, solved directly).
        combine_prompt: The combine agent's instruction, before the node's problem.
        agents: Extra profiles by name.
        options: The run's options (model, endpoint, max_workers (default 8),
            failure_policy, cache, max_tokens, temperature, timeout_seconds, limits; see
            :class:`~prefect_fanout.options.RunOptions`).

    Returns:
        The final state carrying the :class:`PatternResult`: ``output`` is the
        root's result; ``details["tree"]`` maps each node path to its depth,
        children and status, ``details["leaves"]`` counts the leaves.

    Raises:
        PatternArgumentError: ``max_depth`` is not an integer >= 0, a step is
            neither an agent nor a function, or a ``split`` function returned
            its own input (no progress).
    """
    if isinstance(max_depth, bool) or not isinstance(max_depth, int) or max_depth < 0:
        raise PatternArgumentError("max_depth", f"must be an integer >= 0, got {max_depth!r}")
    steps = {
        "split": _check_step("split", split),
        "solve": _check_step("solve", solve),
        "combine": _check_step("combine", combine),
    }
    run = PatternRun("tree", agents=agents, options=options)
    run.check([step for step in steps.values() if isinstance(step, (str, AgentProfile))])
    builder = _Tree(run, steps, max_depth, combine_prompt)
    root = builder.build(problem)
    builder.solve_leaves()
    builder.combine_up()
    details = {
        "tree": {node.path: node.describe() for node in builder.nodes},
        "leaves": sum(1 for node in builder.nodes if node.leaf),
        "depth": max(node.depth for node in builder.nodes),
    }
    return run.finish(root.output, has_output=root.status == "completed", details=details)


class _Tree:
    def __init__(
        self, run: PatternRun, steps: dict[str, Step], max_depth: int, combine_prompt: str
    ) -> None:
        self.run = run
        self.steps = steps
        self.max_depth = max_depth
        self.combine_prompt = combine_prompt
        self.nodes: list[Node] = []

    @staticmethod
    def is_agent(step: Step) -> bool:
        return isinstance(step, (str, AgentProfile))

    def build(self, problem: Any) -> Node:
        root = Node("0", 0, problem)
        self.nodes.append(root)
        level = [root]
        while level:
            splitting = [node for node in level if node.depth < self.max_depth]
            for node in level:
                node.leaf = node.depth >= self.max_depth
            answers = self.split_all(splitting)
            level = []
            for node in splitting:
                parts = answers.get(node.path)
                if node.status == "failed":
                    continue
                if not parts:
                    node.leaf = True
                    continue
                for index, part in enumerate(parts):
                    child = Node(f"{node.path}.{index}", node.depth + 1, part)
                    node.children.append(child)
                    self.nodes.append(child)
                    level.append(child)
        return root

    def split_all(self, nodes: list[Node]) -> dict[str, list[Any]]:
        step = self.steps["split"]
        answers: dict[str, list[Any]] = {}
        if not nodes:
            return answers
        if self.is_agent(step):
            calls = [Call(f"split:{n.path}", step, output_as_text(n.problem)) for n in nodes]
            outcomes = self.run.run_calls(calls)
            for node in nodes:
                outcome = outcomes.get(f"split:{node.path}")
                if outcome is None or not outcome.ok:
                    node.status = "failed"
                    continue
                parts = subproblems_of(outcome.result.output)  # type: ignore[union-attr]
                if any(_same(part, node.problem) for part in parts):
                    self.run.logger.warning(
                        "tree: split agent returned node %s's own problem; solving it as a leaf",
                        node.path,
                    )
                    parts = []
                answers[node.path] = parts
            return answers
        for node in nodes:
            if self.run.stopped:
                node.status = "failed"
                continue
            named = tree_step.with_options(task_run_name=f"split:{node.path}")
            try:
                value = named(step, node.problem)
            except Exception as exc:  # the user's function failed: the node fails
                self.run.fail(f"split:{node.path}", "split", describe(exc))
                node.status = "failed"
                continue
            parts = [] if value is None else list(value)
            if any(_same(part, node.problem) for part in parts):
                raise PatternArgumentError(
                    "split",
                    f"returned its own input for node {node.path} (no progress); a split must "
                    "return smaller sub-problems, or an empty list for a leaf",
                )
            answers[node.path] = parts
        return answers

    def solve_leaves(self) -> None:
        leaves = [n for n in self.nodes if n.leaf and n.status == "pending"]
        step = self.steps["solve"]
        if self.is_agent(step):
            calls = [Call(f"solve:{n.path}", step, output_as_text(n.problem)) for n in leaves]
            outcomes = self.run.run_calls(calls)
            for node in leaves:
                outcome = outcomes.get(f"solve:{node.path}")
                if outcome is not None and outcome.ok:
                    node.status, node.output = "completed", outcome.result.output  # type: ignore[union-attr]
                    node.ref = outcome.future or outcome.result
                else:
                    node.status = "failed"
            return
        for node in leaves:
            self.function_step(node, "solve", step, node.problem)

    def function_step(self, node: Node, role: str, step: Any, value: Any) -> None:
        if self.run.stopped:
            node.status = "failed"
            return
        try:
            output = tree_step.with_options(task_run_name=f"{role}:{node.path}")(step, value)
        except Exception as exc:  # the user's function failed: the node fails
            self.run.fail(f"{role}:{node.path}", role, describe(exc))
            node.status = "failed"
            return
        node.status, node.output, node.ref = "completed", output, output

    def combine_up(self) -> None:
        internal = [n for n in self.nodes if n.children and n.status == "pending"]
        step = self.steps["combine"]
        for depth in sorted({n.depth for n in internal}, reverse=True):
            level = [n for n in internal if n.depth == depth]
            ready = []
            for node in level:
                done = [c for c in node.children if c.status == "completed"]
                if not done or (self.run.failure_policy == "all_or_nothing" and self.run.stopped):
                    node.status = "failed"
                    if self.is_agent(step):
                        self.run.skip(f"combine:{node.path}", step, "not started: no child result")
                    continue
                ready.append((node, done))
            if self.is_agent(step):
                calls = [
                    Call(
                        f"combine:{node.path}",
                        step,
                        f"{self.combine_prompt}\n\n{output_as_text(node.problem)}",
                        context={_child_key(c): c.ref for c in done},
                    )
                    for node, done in ready
                ]
                outcomes = self.run.run_calls(calls)
                for node, _ in ready:
                    outcome = outcomes.get(f"combine:{node.path}")
                    if outcome is not None and outcome.ok:
                        node.status, node.output = "completed", outcome.result.output  # type: ignore[union-attr]
                        node.ref = outcome.future or outcome.result
                    else:
                        node.status = "failed"
            else:
                for node, done in ready:
                    self.function_step(node, "combine", step, [c.output for c in done])


def _child_key(node: Node) -> str:
    return f"{'solve' if node.leaf else 'combine'}:{node.path}"


def _same(part: Any, problem: Any) -> bool:
    try:
        return bool(part == problem)
    except Exception:  # an exotic type whose == raises
        return False
