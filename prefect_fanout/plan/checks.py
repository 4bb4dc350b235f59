"""The checks behind :func:`prefect_fanout.plan.model.validate_plan`.

The checks walk the parsed document by hand instead of stopping at the first
pydantic error, so one run reports every problem with its location
(``tasks[2].dependencies[0]``, ``config.max_workers``). The result is a clean
mapping that the pydantic models accept as is.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from prefect_fanout.plan import graph as plan_graph
from prefect_fanout.plan.policies import FAILURE_POLICIES
from prefect_fanout.plan.problems import PlanProblem
from prefect_fanout.textcheck import unencodable

AgentCheck = Callable[[str, dict[str, Any]], list[str]]
"""``check_agent(name, profile) -> problem messages`` for a plan's agent profiles."""


TOP_LEVEL_KEYS = ("tasks", "config", "agents", "goal")
ACCEPTANCE_FIELDS = ("acceptance", "judge", "max_revisions")
"""The task fields of the acceptance loop (see :mod:`prefect_fanout.dispatch.acceptance`)."""
TASK_FIELDS = ("task_id", "agent", "description", "input_data", "dependencies", *ACCEPTANCE_FIELDS)
CONFIG_FIELDS = (
    "max_workers",
    "timeout_seconds",
    "trace_dir",
    "failure_policy",
    "endpoint",
    "synthesize",
    "max_revisions",
    "max_concurrency",
    "requests_per_minute",
    "tokens_per_minute",
    "model",
    "max_tokens",
    "temperature",
    "budget_tokens",
    "budget_usd",
    "budget_name",
)
LIMIT_FIELDS = ("max_concurrency", "requests_per_minute", "tokens_per_minute")
"""The config fields that set the endpoint's limits (see :mod:`prefect_fanout.limits`)."""

_MISSING: Any = object()


class _Problems(list[PlanProblem]):
    def add(self, kind: str, message: str, location: str = "", task_id: str | None = None) -> None:
        self.append(PlanProblem(kind, message, task_id, location))


def _type_name(value: Any) -> str:
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def _hint(word: Any, choices: Iterable[str]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_document(
    raw: Any, *, known_agents: set[str], check_agent: AgentCheck | None
) -> tuple[dict[str, Any] | None, list[PlanProblem]]:
    """Check a parsed plan document.

    Args:
        raw: The parsed document.
        known_agents: Agent names defined outside the plan; empty to skip the
            check of task agents.
        check_agent: Optional checker of the plan's agent profiles.

    Returns:
        The clean data for :class:`~prefect_fanout.plan.model.Plan` (``None`` when
        the document is not even an object) and the problems found.

    """
    from prefect_fanout.plan.subtasks import expand_subtasks, is_subtasks_form, subtask_location

    if is_subtasks_form(raw):  # seed 003's plan-and-synthesise form: check it as tasks
        expanded, early = expand_subtasks(raw)
        clean, found = check_document(expanded, known_agents=known_agents, check_agent=check_agent)
        moved = [replace(p, location=subtask_location(p.location)) for p in found]
        reported = {p.location for p in early}  # an unknown type is not also an unknown agent
        moved = [p for p in moved if p.kind != "unknown_agent" or p.location not in reported]
        return clean, [*early, *moved]
    problems = _Problems()
    if raw is None:
        problems.add("field", "the plan is empty; expected an object with a 'tasks' list")
        return None, problems
    if not isinstance(raw, dict):
        problems.add(
            "field", f"a plan must be an object with a 'tasks' list, got {_type_name(raw)}"
        )
        return None, problems
    for location, detail in unencodable(raw):  # would crash the cache keys
        message = f"text that cannot be encoded as UTF-8 ({detail}, a lone surrogate)"
        problems.add("encoding", message, location)
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            valid = ", ".join(TOP_LEVEL_KEYS)
            problems.add(
                "field",
                f"unknown top-level key {key!r}{_hint(key, TOP_LEVEL_KEYS)}; valid keys: {valid}",
                str(key),
            )
    tasks = _check_tasks(raw.get("tasks", _MISSING), problems)
    config = _check_config(raw.get("config"), problems)
    agents = _check_agents(raw.get("agents"), problems, check_agent)
    if known_agents:
        _check_agent_names(tasks, known_agents | set(agents), problems)
        synthesize = config.get("synthesize")
        if isinstance(synthesize, str) and synthesize not in known_agents | set(agents):
            listed = ", ".join(sorted(known_agents | set(agents)))
            message = f"unknown synthesize agent {synthesize!r}; known agents: {listed}"
            problems.add("unknown_agent", message, "config.synthesize")
    clean = {"tasks": [task for _, task in tasks], "config": config, "agents": agents}
    goal = raw.get("goal")
    if goal is not None and not isinstance(goal, str):
        problems.add("field", f"'goal' must be a string, got {_type_name(goal)}", "goal")
    elif goal is not None:
        clean["goal"] = goal
    return clean, problems


def _check_tasks(value: Any, problems: _Problems) -> list[tuple[int, dict[str, Any]]]:
    """Check the task list; return ``(index in tasks, clean task)`` per task object."""
    if value is _MISSING:
        problems.add("field", "the plan has no 'tasks' list", "tasks")
        return []
    if not isinstance(value, list):
        problems.add("field", f"'tasks' must be a list of tasks, got {_type_name(value)}", "tasks")
        return []
    if not value:
        problems.add("field", "'tasks' is empty: a plan needs at least one task", "tasks")
        return []
    clean: list[tuple[int, dict[str, Any]]] = []
    entries: list[tuple[int, str | None, list[tuple[int, str]]]] = []
    for index, item in enumerate(value):
        task = _check_task(index, item, problems)
        if task is not None:
            clean.append((index, task))
            entries.append((index, task["task_id"], task["_deps"]))
    problems.extend(graph_problems(entries))
    for _, task in clean:
        task["dependencies"] = list(dict.fromkeys(dep for _, dep in task.pop("_deps")))
    return clean


def _check_task(index: int, item: Any, problems: _Problems) -> dict[str, Any] | None:
    where = f"tasks[{index}]"
    if not isinstance(item, dict):
        problems.add("field", f"{where} must be an object, got {_type_name(item)}", where)
        return None

    task_id = item.get("task_id")
    valid_id = isinstance(task_id, str) and bool(task_id.strip())
    if task_id is None:
        problems.add("field", f"{where} has no task_id", f"{where}.task_id")
    elif not isinstance(task_id, str):
        message = f"{where}: task_id must be a string, got {_type_name(task_id)}"
        problems.add("field", message, f"{where}.task_id")
    elif not valid_id:
        problems.add("field", f"{where}: task_id must not be empty", f"{where}.task_id")
    tid = task_id if valid_id else None
    label = f"task {tid!r}" if tid else where

    def wrong(field: str, expected: str, value: Any, at: str | None = None) -> None:
        message = f"{label}: {field} must be {expected}, got {_type_name(value)}"
        problems.add("field", message, at or f"{where}.{field}", tid)

    for key in item:
        if key not in TASK_FIELDS:
            hint = _hint(key, TASK_FIELDS)
            problems.add("field", f"{label}: unknown field {key!r}{hint}", f"{where}.{key}", tid)

    agent = item.get("agent")
    if agent is None:
        agent = "default"
    elif not isinstance(agent, str) or not agent.strip():
        wrong("agent", "a non-empty string", agent)

    description = item.get("description")
    if description is None:
        description = ""
    elif not isinstance(description, str):
        wrong("description", "a string", description)

    input_data = item.get("input_data")
    if input_data is None:
        input_data = {}
    elif not isinstance(input_data, dict):
        wrong("input_data", "an object", input_data)
    elif not all(isinstance(key, str) for key in input_data):
        bad = next(key for key in input_data if not isinstance(key, str))
        message = f"{label}: input_data keys must be strings, got {bad!r}"
        problems.add("field", message, f"{where}.input_data", tid)

    deps: list[tuple[int, str]] = []
    dependencies = item.get("dependencies")
    if dependencies is not None and not isinstance(dependencies, list):
        wrong("dependencies", "a list of task ids", dependencies)
    for position, dep in enumerate(dependencies if isinstance(dependencies, list) else []):
        if isinstance(dep, str) and dep.strip():
            deps.append((position, dep))
        else:
            at = f"{where}.dependencies[{position}]"
            wrong(f"dependencies[{position}]", "a non-empty task id string", dep, at)

    clean = {
        "task_id": tid,
        "agent": agent,
        "description": description,
        "input_data": input_data,
        "_deps": deps,
    }
    clean.update(_check_acceptance(item, where, label, tid, problems))
    return clean


def _check_acceptance(
    item: dict[str, Any], where: str, label: str, tid: str | None, problems: _Problems
) -> dict[str, Any]:
    """Check a task's ``acceptance``, ``judge`` and ``max_revisions``; return the set ones."""
    clean: dict[str, Any] = {}
    acceptance = item.get("acceptance")
    if acceptance is not None:
        if not isinstance(acceptance, list) or not acceptance:
            got = "an empty list" if acceptance == [] else _type_name(acceptance)
            message = f"{label}: acceptance must be a non-empty list of criteria, got {got}"
            problems.add("field", message, f"{where}.acceptance", tid)
        else:
            for position, criterion in enumerate(acceptance):
                if not isinstance(criterion, str) or not criterion.strip():
                    got = repr(criterion) if isinstance(criterion, str) else _type_name(criterion)
                    message = (
                        f"{label}: acceptance[{position}] must be a non-empty criterion string, "
                        f"got {got}"
                    )
                    problems.add("field", message, f"{where}.acceptance[{position}]", tid)
        clean["acceptance"] = acceptance
    judge = item.get("judge")
    if judge is not None:
        if not isinstance(judge, str) or not judge.strip():
            message = f"{label}: judge must be a non-empty agent name, got {judge!r}"
            problems.add("field", message, f"{where}.judge", tid)
        clean["judge"] = judge
    revisions = item.get("max_revisions")
    if revisions is not None:
        message = _revisions_problem(revisions)
        if message:
            problems.add("field", f"{label}: {message}", f"{where}.max_revisions", tid)
        clean["max_revisions"] = revisions
    if acceptance is not None and judge is None:
        message = f"{label}: acceptance criteria need a judge agent to check them ('judge')"
        problems.add("field", message, f"{where}.judge", tid)
    if acceptance is None:
        for key in ("judge", "max_revisions"):
            if key in clean:
                message = f"{label}: {key} has no effect without 'acceptance' criteria"
                problems.add("field", message, f"{where}.{key}", tid)
    return clean


def _revisions_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid ``max_revisions`` (``None`` when it is)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return f"max_revisions must be an integer, got {value!r}"
    if value < 0:
        return f"max_revisions must be 0 or more, got {value}"
    return None


def graph_problems(
    entries: Sequence[tuple[int, str | None, Sequence[tuple[int, str]]]],
) -> list[PlanProblem]:
    """Find duplicate ids, unknown and self dependencies, and cycles.

    Args:
        entries: One ``(index in tasks, task id or None, [(position, dependency
            id), ...])`` per task, in plan order.

    Returns:
        The problems found: duplicates first, then dependency problems in plan
        order, then one problem per distinct cycle.

    """
    problems = _Problems()
    first: dict[str, int] = {}
    deps_of: dict[str, Sequence[tuple[int, str]]] = {}
    for index, task_id, deps in entries:
        if task_id is None:
            continue
        if task_id in first:
            message = f"duplicate task_id {task_id!r} (tasks[{first[task_id]}] and tasks[{index}])"
            problems.add("duplicate_id", message, f"tasks[{index}].task_id", task_id)
        else:
            first[task_id] = index
            deps_of[task_id] = deps

    for index, task_id, deps in entries:
        label = f"task {task_id!r}" if task_id else f"tasks[{index}]"
        for position, dep in deps:
            where = f"tasks[{index}].dependencies[{position}]"
            if dep == task_id:
                problems.add("self_dependency", f"{label} depends on itself", where, task_id)
            elif dep not in first:
                message = f"{label} depends on unknown task {dep!r}{_hint(dep, first)}"
                problems.add("unknown_dependency", message, where, task_id)

    graph = {task_id: [dep for _, dep in deps] for task_id, deps in deps_of.items()}
    for cycle in plan_graph.find_cycles(graph):
        start, closing = cycle[0], cycle[-2]  # ``start`` depends on ``closing``
        position = next(pos for pos, dep in deps_of[start] if dep == closing)
        where = f"tasks[{first[start]}].dependencies[{position}]"
        problems.add("cycle", f"dependency cycle: {' -> '.join(cycle)}", where, start)
    return problems


def _check_config(value: Any, problems: _Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add("config", f"'config' must be an object, got {_type_name(value)}", "config")
        return {}
    clean: dict[str, Any] = {}
    for key, item in value.items():
        where = f"config.{key}"
        if key == "max_workers":
            if not isinstance(item, int) or isinstance(item, bool):
                problems.add("config", f"max_workers must be an integer, got {item!r}", where)
            elif item < 1:
                problems.add("config", f"max_workers must be at least 1, got {item}", where)
        elif key == "timeout_seconds":
            if not _is_number(item):
                problems.add("config", f"timeout_seconds must be a number, got {item!r}", where)
            elif not math.isfinite(item) or item <= 0:
                message = f"timeout_seconds must be a positive number of seconds, got {item}"
                problems.add("config", message, where)
        elif key == "max_tokens":
            if item is not None and (not isinstance(item, int) or isinstance(item, bool)):
                problems.add("config", f"max_tokens must be an integer, got {item!r}", where)
            elif item is not None and item < 1:
                problems.add("config", f"max_tokens must be at least 1, got {item}", where)
        elif key == "temperature":
            if item is not None and (not _is_number(item) or not 0 <= item <= 2):
                message = f"temperature must be a number from 0 to 2, got {item!r}"
                problems.add("config", message, where)
        elif key == "budget_tokens":
            if item is not None and (
                not isinstance(item, int) or isinstance(item, bool) or item < 1
            ):
                message = f"budget_tokens must be a whole number of tokens above 0, got {item!r}"
                problems.add("config", message, where)
        elif key == "budget_usd":
            if item is not None and (not _is_number(item) or not math.isfinite(item) or item <= 0):
                message = f"budget_usd must be a positive number of US dollars, got {item!r}"
                problems.add("config", message, where)
        elif key in ("trace_dir", "endpoint", "synthesize", "model", "budget_name"):
            if item is not None and (not isinstance(item, str) or not item.strip()):
                message = f"{key} must be a non-empty string or null, got {item!r}"
                problems.add("config", message, where)
        elif key == "max_revisions":
            message = _revisions_problem(item)
            if message:
                problems.add("config", message, where)
        elif key in LIMIT_FIELDS:
            if item is not None and (
                not isinstance(item, int) or isinstance(item, bool) or item <= 0
            ):
                message = (
                    f"{key} must be a whole number greater than 0, got {item!r}; set a "
                    "positive number or remove it (or set null) for no limit"
                )
                problems.add("config", message, where)
        elif key == "failure_policy":
            if item not in FAILURE_POLICIES:
                valid = ", ".join(repr(policy) for policy in FAILURE_POLICIES)
                message = f"unknown failure_policy {item!r}; valid policies: {valid}"
                problems.add("config", message, where)
        else:
            valid = ", ".join(CONFIG_FIELDS)
            message = f"unknown config key {key!r}{_hint(key, CONFIG_FIELDS)}; valid keys: {valid}"
            problems.add("config", message, where)
            continue
        clean[key] = item
    return clean


def _check_agents(
    value: Any, problems: _Problems, check_agent: AgentCheck | None
) -> dict[str, dict[str, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        message = f"'agents' must be an object of profiles by name, got {_type_name(value)}"
        problems.add("field", message, "agents")
        return {}
    clean: dict[str, dict[str, Any]] = {}
    for name, profile in value.items():
        where = f"agents.{name}"
        if not isinstance(name, str) or not name.strip():
            problems.add("field", f"agent names must be non-empty strings, got {name!r}", where)
            continue
        if not isinstance(profile, dict):
            message = f"agent profile {name!r} must be an object, got {_type_name(profile)}"
            problems.add("agent_profile", message, where)
            continue
        clean[name] = profile
        if check_agent is None:
            continue
        try:
            messages = list(check_agent(name, dict(profile)))
        except ValueError as exc:
            messages = [str(exc)]
        for message in messages:
            problems.add("agent_profile", f"agent profile {name!r}: {message}", where)
    return clean


def _check_agent_names(
    tasks: list[tuple[int, dict[str, Any]]], known: set[str], problems: _Problems
) -> None:
    listed = ", ".join(sorted(known))
    for index, task in tasks:
        label = f"task {task['task_id']!r}" if task["task_id"] else f"tasks[{index}]"
        for field, role in (("agent", "agent"), ("judge", "judge agent")):
            agent = task.get(field)
            if not isinstance(agent, str) or not agent.strip() or agent in known:
                continue
            hint = _hint(agent, known)
            message = f"{label} uses unknown {role} {agent!r}{hint}; known agents: {listed}"
            problems.add("unknown_agent", message, f"tasks[{index}].{field}", task["task_id"])


def problems_from_pydantic(exc: ValidationError) -> list[PlanProblem]:
    """Turn a pydantic ``ValidationError`` into plan problems.

    Args:
        exc: The error raised by a plan model.

    Returns:
        One problem per pydantic error, located like ``tasks[0].task_id``.

    """
    problems: list[PlanProblem] = []
    for error in exc.errors():
        location = ""
        for part in error["loc"]:
            location += f"[{part}]" if isinstance(part, int) else f".{part}" if location else part
        kind = "config" if location.startswith("config") else "field"
        problems.append(PlanProblem(kind, error["msg"], location=location))
    return problems
