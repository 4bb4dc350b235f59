"""Imports run one way: every module's imports of the package point down the layers, never up,
and no modules import each other in a circle (counting imports inside functions and under
``TYPE_CHECKING``, which are cycles a reader meets all the same).

The layers, lowest first (docs/layout.md draws them). A module may import modules of its own
layer or of a lower one; inside one layer, modules must still not form a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prefect_fanout"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("redact", "textcheck", "stopping", "errors", "files", "bounded")),
    ("limits", ("limits",)),
    ("wire", ("llm",)),
    ("config", ("agents", "usage", "plan", "options", "budget")),
    ("task", ("call", "runners", "ui", "outputs", "batch")),
    ("engine", ("engine",)),
    ("shapes", ("dispatch", "mapping", "patterns")),
    ("edges", ("shipped", "flows", "cli", "blocks", "__init__")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if not node.module.startswith("prefect_fanout"):
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("prefect_fanout"))
    return found


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, (_, tops) in enumerate(LAYERS):
        if top in tops:
            return index
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS in this test")


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        edges[name] = {target for target in imports_of(path, set(known)) if target != name}
    return edges


def test_every_module_is_in_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    upward = [
        f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for source, targets in graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path of modules), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            # importing a package's submodule runs the package's __init__ first; an __init__
            # importing its own submodules is the normal shape, not a cycle
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module", ["llm", "limits"])
def test_the_wire_knows_nothing_of_prefect_tasks(module):
    """The wire and the limits speak HTTP (and Prefect's API for limits), never tasks or flows.

    Logging through the run's logger when there is one (``get_run_logger``) is allowed: a wait
    for a limit is said in the flow's log.
    """
    task_names = {"task", "flow", "FlowRunContext", "TaskRunContext"}
    offenders = []
    for path in (PACKAGE / module).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prefect"):
                if not (node.module or "").startswith("prefect_fanout"):
                    used = {alias.name for alias in node.names} & task_names
                    if used or node.module in ("prefect.tasks", "prefect.flows"):
                        offenders.append(f"{path.name}: from {node.module} import {used}")
    assert not offenders, offenders
