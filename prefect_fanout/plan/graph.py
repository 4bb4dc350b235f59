"""Graph algorithms over a plan's dependency graph.

Everything here works on a plain ordered mapping ``task_id -> dependency ids``
whose iteration order is the plan order, so the functions can be used both on a
validated :class:`~prefect_fanout.plan.model.Plan` and on half-validated raw data
while the validator looks for cycles. Results are deterministic: wherever there
is a choice, the task that comes first in the plan wins.

Arrows in printed paths follow the data flow: ``a -> b`` means that ``b``
depends on ``a`` (``a`` runs first).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence

Graph = Mapping[str, Sequence[str]]
"""Ordered mapping of task id to the ids it depends on, in plan order."""


def _order(graph: Graph) -> dict[str, int]:
    return {task_id: index for index, task_id in enumerate(graph)}


def _known_deps(graph: Graph, task_id: str) -> list[str]:
    """Dependencies of ``task_id`` that are nodes of the graph, without duplicates."""
    seen: dict[str, None] = {}
    for dep in graph[task_id]:
        if dep in graph and dep != task_id:
            seen.setdefault(dep, None)
    return list(seen)


def dependants_map(graph: Graph) -> dict[str, list[str]]:
    """Invert the graph: for every task, the tasks that depend on it directly.

    Args:
        graph: Ordered mapping of task id to its dependency ids.

    Returns:
        Mapping of task id to its direct dependants, in plan order.

    """
    result: dict[str, list[str]] = {task_id: [] for task_id in graph}
    for task_id in graph:
        for dep in _known_deps(graph, task_id):
            result[dep].append(task_id)
    return result


def find_cycles(graph: Graph) -> list[list[str]]:
    """Find dependency cycles with a depth-first search in plan order.

    Every back edge met by the search yields one cycle; cycles that are the same
    up to rotation are reported once. Self-dependencies and edges to unknown
    tasks are ignored (the validator reports those separately). Not every
    elementary cycle of a densely cyclic graph is listed, but every graph with a
    cycle yields at least one, and the result is the same on every run.

    Args:
        graph: Ordered mapping of task id to its dependency ids.

    Returns:
        Closed paths in data-flow direction, each starting and ending with the
        same id and rotated to start at the cycle's earliest task in plan order,
        e.g. ``["a", "b", "c", "a"]`` when ``b`` depends on ``a``, ``c`` on ``b``
        and ``a`` on ``c``.

    """
    order = _order(graph)
    state: dict[str, int] = {}  # absent: unvisited, 1: on the stack, 2: done
    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()

    for root in graph:
        if root in state:
            continue
        # Iterative DFS along dependency edges; each frame is (node, deps, next index).
        stack: list[tuple[str, list[str], int]] = [(root, _known_deps(graph, root), 0)]
        path = [root]
        state[root] = 1
        while stack:
            node, deps, index = stack[-1]
            if index == len(deps):
                stack.pop()
                path.pop()
                state[node] = 2
                continue
            stack[-1] = (node, deps, index + 1)
            dep = deps[index]
            if dep not in state:
                state[dep] = 1
                path.append(dep)
                stack.append((dep, _known_deps(graph, dep), 0))
            elif state[dep] == 1:
                # path[start:] runs dep -> ... -> node along dependency edges and
                # node depends on dep: reversed, that is the data-flow cycle.
                members = list(reversed(path[path.index(dep) :]))
                start = min(range(len(members)), key=lambda i: order[members[i]])
                rotated = tuple(members[start:] + members[:start])
                if rotated not in seen:
                    seen.add(rotated)
                    cycles.append([*rotated, rotated[0]])
    return cycles


def dependency_levels(graph: Graph) -> list[list[str]]:
    """Group the tasks of an acyclic graph into batches that can run together.

    Args:
        graph: Ordered, acyclic mapping of task id to its dependency ids.

    Returns:
        Level 0 holds the tasks without dependencies; level ``k`` the tasks whose
        deepest dependency is at level ``k - 1``. Ids keep plan order.

    Raises:
        ValueError: The graph has a cycle.

    """
    depth: dict[str, int] = {}
    for task_id in topological_order(graph):
        deps = _known_deps(graph, task_id)
        depth[task_id] = 1 + max((depth[d] for d in deps), default=-1)
    levels: list[list[str]] = [[] for _ in range(1 + max(depth.values(), default=-1))]
    for task_id in graph:
        levels[depth[task_id]].append(task_id)
    return levels


def topological_order(graph: Graph) -> list[str]:
    """Order the tasks so that every task comes after its dependencies.

    Among the tasks that are ready at any point, the earliest in plan order is
    taken first, so a plan that is already in dependency order is unchanged.

    Args:
        graph: Ordered, acyclic mapping of task id to its dependency ids.

    Returns:
        All task ids, dependencies first.

    Raises:
        ValueError: The graph has a cycle.

    """
    order = _order(graph)
    waiting = {task_id: len(_known_deps(graph, task_id)) for task_id in graph}
    dependants = dependants_map(graph)
    ready = [order[t] for t, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ids = list(graph)
    result: list[str] = []
    while ready:
        task_id = ids[heapq.heappop(ready)]
        result.append(task_id)
        for child in dependants[task_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, order[child])
    if len(result) != len(ids):
        cycle = find_cycles(graph)
        shown = " -> ".join(cycle[0]) if cycle else "?"
        raise ValueError(f"the dependency graph has a cycle: {shown}")
    return result


def critical_path(
    graph: Graph, weights: Mapping[str, float] | None = None
) -> tuple[list[str], float]:
    """Find the heaviest dependency chain of an acyclic graph.

    Args:
        graph: Ordered, acyclic mapping of task id to its dependency ids.
        weights: Weight (e.g. duration in seconds) per task. ``None`` weighs
            every task 1; tasks missing from the mapping weigh 0.

    Returns:
        The path in execution order and its total weight. On ties the chain
        that starts with the earliest task in plan order wins, then the one
        whose next task is earliest, and so on; a chain is never cut short
        while a zero-weight task could extend it. An empty graph gives
        ``([], 0.0)``.

    Raises:
        ValueError: The graph has a cycle, or a weight is negative or not finite.

    """

    def weight(task_id: str) -> float:
        if weights is None:
            return 1.0
        value = float(weights.get(task_id, 0.0))
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"duration of task {task_id!r} must be finite and >= 0, got {value}")
        return value

    # best[t]: weight of the heaviest chain that starts at t; after[t]: its next task.
    children = dependants_map(graph)  # each list is in plan order
    best: dict[str, float] = {}
    after: dict[str, str | None] = {}
    for task_id in reversed(topological_order(graph)):
        following: str | None = None
        for child in children[task_id]:  # strict '>' keeps the earliest on ties
            if following is None or best[child] > best[following]:
                following = child
        best[task_id] = weight(task_id) + (best[following] if following is not None else 0.0)
        after[task_id] = following
    start: str | None = None
    for task_id in graph:
        if start is None or best[task_id] > best[start]:
            start = task_id
    if start is None:
        return [], 0.0
    path: list[str] = []
    node: str | None = start
    while node is not None:
        path.append(node)
        node = after[node]
    return path, best[start]


def downstream(graph: Graph, task_id: str) -> list[str]:
    """Every task that depends on ``task_id`` directly or transitively.

    Args:
        graph: Ordered mapping of task id to its dependency ids.
        task_id: The task to start from (not included in the result).

    Returns:
        The dependants in plan order.

    """
    return _closure(dependants_map(graph), task_id, _order(graph))


def upstream(graph: Graph, task_id: str) -> list[str]:
    """Every task that ``task_id`` depends on directly or transitively.

    Args:
        graph: Ordered mapping of task id to its dependency ids.
        task_id: The task to start from (not included in the result).

    Returns:
        The dependencies in plan order.

    """
    edges = {node: _known_deps(graph, node) for node in graph}
    return _closure(edges, task_id, _order(graph))


def _closure(edges: Mapping[str, Sequence[str]], start: str, order: Mapping[str, int]) -> list[str]:
    found: set[str] = set()
    todo = list(edges[start])
    while todo:
        node = todo.pop()
        if node not in found and node != start:
            found.add(node)
            todo.extend(edges[node])
    return sorted(found, key=order.__getitem__)
