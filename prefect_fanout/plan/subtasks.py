"""The plan-and-synthesise form of a plan (seed 003), turned into the ``tasks`` form.

::

    {"task": "Analyse a research paper",
     "subtasks": [{"id": "methods", "type": "analysis", "content": "...",
                   "dependencies": []}, ...],
     "types": {"analysis": {"model": "gpt-4o-mini", "temperature": 0.2}},
     "synthesize": "writer",
     "config": {...}, "agents": {...}}

becomes ``tasks`` (one per subtask: ``task_id`` = ``id``, ``agent`` = ``type``,
``description`` = ``content``, ``input_data`` = ``{"task": TASK}``; ``acceptance``,
``judge`` and ``max_revisions`` as they are), ``agents``
(each type is an agent profile named after it, with its settings), ``goal``
(the ``task``: the synthesis call's instruction) and ``config.synthesize``.
Every subtask's type must be a key of ``types``. Problems are reported at
their place in this form (``subtasks[2].type``).
"""

from __future__ import annotations

from typing import Any

from prefect_fanout.plan.problems import PlanProblem

SUBTASK_FIELDS = ("id", "type", "content", "dependencies", "acceptance", "judge", "max_revisions")
SUBTASK_TOP_LEVEL = ("task", "subtasks", "types", "synthesize", "config", "agents")


def is_subtasks_form(raw: Any) -> bool:
    """True for a plan written in the ``subtasks`` form."""
    return isinstance(raw, dict) and "subtasks" in raw


def expand_subtasks(raw: dict[str, Any]) -> tuple[dict[str, Any], list[PlanProblem]]:
    """The ``tasks`` form of a ``subtasks`` plan, and the problems only this form can have.

    Args:
        raw: The parsed document (with a ``subtasks`` key).

    Returns:
        The document in the ``tasks`` form (as far as it could be built) and
        the problems found: unknown keys, a malformed subtask or ``types``
        entry, a subtask type missing from ``types``, a type named like one of
        the plan's ``agents``.
    """
    problems: list[PlanProblem] = []
    for key in raw:
        if key not in SUBTASK_TOP_LEVEL:
            valid = ", ".join(SUBTASK_TOP_LEVEL)
            problems.append(
                PlanProblem(
                    "field", f"unknown top-level key {key!r}; valid: {valid}", location=str(key)
                )
            )
    types = raw.get("types")
    if types is None:
        types = {}
    if not isinstance(types, dict):
        problems.append(
            PlanProblem("field", "'types' must be an object of settings by type", location="types")
        )
        types = {}
    agents = raw.get("agents") if isinstance(raw.get("agents"), dict) else {}
    for name, fields in types.items():
        if not isinstance(fields, dict):
            message = f"type {name!r} must be an object of agent profile fields"
            problems.append(PlanProblem("field", message, location=f"types.{name}"))
        elif name in agents:
            message = f"type {name!r} is also defined in 'agents'; use one name for one profile"
            problems.append(PlanProblem("field", message, location=f"types.{name}"))
    subtasks = raw.get("subtasks")
    tasks: list[Any] = []
    if not isinstance(subtasks, list) or not subtasks:
        problems.append(
            PlanProblem("field", "'subtasks' must be a non-empty list", location="subtasks")
        )
        subtasks = []
    known = ", ".join(sorted(map(str, types))) or "none"
    for index, item in enumerate(subtasks):
        where = f"subtasks[{index}]"
        if not isinstance(item, dict):
            problems.append(PlanProblem("field", f"{where} must be an object", location=where))
            tasks.append(item)
            continue
        for key in item:
            if key not in SUBTASK_FIELDS:
                message = f"unknown field {key!r}; valid fields: {', '.join(SUBTASK_FIELDS)}"
                problems.append(PlanProblem("field", message, location=f"{where}.{key}"))
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in types:
            message = f"unknown type {kind!r}; the plan's types: {known}"
            problems.append(PlanProblem("unknown_type", message, item.get("id"), f"{where}.type"))
        task: dict[str, Any] = {
            "task_id": item.get("id"),
            "agent": kind if isinstance(kind, str) else "default",
            "description": item.get("content"),
            "dependencies": item.get("dependencies"),
        }
        for key in ("acceptance", "judge", "max_revisions"):  # as in the tasks form
            if key in item:
                task[key] = item[key]
        if isinstance(raw.get("task"), str):
            task["input_data"] = {"task": raw["task"]}
        tasks.append(task)
    expanded: dict[str, Any] = {
        "tasks": tasks,
        "agents": {**agents, **{k: v for k, v in types.items() if isinstance(v, dict)}},
    }
    if "task" in raw:
        expanded["goal"] = raw["task"]
    config = raw.get("config")
    if "synthesize" in raw:
        config = (
            {**config, "synthesize": raw["synthesize"]}
            if isinstance(config, dict)
            else ({"synthesize": raw["synthesize"]} if config is None else config)
        )
    if config is not None:
        expanded["config"] = config
    return expanded, problems


def subtask_location(location: str) -> str:
    """A ``tasks[i]...`` location as the ``subtasks[i]...`` it came from."""
    for old, new in (("task_id", "id"), ("agent", "type"), ("description", "content")):
        if location.startswith("tasks[") and location.endswith(f".{old}"):
            location = location[: -len(old)] + new
    return "sub" + location if location.startswith("tasks[") else location
