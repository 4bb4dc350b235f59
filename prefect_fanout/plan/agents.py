"""Agents of a dispatch: resolving a plan's agent names, and validating them before a run.

A task's ``agent`` and ``judge`` (and every name in a profile's ``fallbacks``)
resolve, in this order, to:

1. a profile in the plan's ``agents`` section (``AgentProfile(name=key, **fields)``;
   ``output_schema`` is a JSON schema object there);
2. a built-in profile (``default``, ``coder``, ``debug``);
3. a saved ``AgentProfile`` block of that name.

:func:`load_dispatch_plan` validates a plan file with all of this in mind, so a
plan whose agents cannot be found is rejected with every other problem, before
anything runs.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import ValidationError

from prefect_fanout.agents.profiles import AgentProfile, builtin_profile_names, resolve_agent
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.plan.model import Plan, parse_plan, validate_plan
from prefect_fanout.plan.subtasks import expand_subtasks, is_subtasks_form

PROFILE_FIELDS = tuple(name for name in AgentProfile.model_fields if name != "name")
"""The fields a plan's ``agents`` entry may set (its key is the name)."""


def profile_from_plan(name: str, fields: Mapping[str, Any]) -> AgentProfile:
    """Build the profile of a plan's ``agents`` entry; the entry's key is its name.

    Args:
        name: The key in ``agents``.
        fields: The entry's fields (any ``AgentProfile`` field but ``name``).

    Returns:
        The profile.

    Raises:
        pydantic.ValidationError: A field has a wrong value.

    """
    return AgentProfile(**{**dict(fields), "name": name})


def plan_profiles(plan: Plan) -> dict[str, AgentProfile]:
    """The profiles of a plan's ``agents`` section, and the saved blocks its validation loaded."""
    own = {name: profile_from_plan(name, fields) for name, fields in plan.agents.items()}
    return {**plan._saved_profiles, **own}


def _saved_profile_exists(
    name: str, cache: dict[str, bool], loaded: dict[str, AgentProfile]
) -> bool:
    if name not in cache:
        try:
            loaded[name] = resolve_agent(name)
            cache[name] = True
        except ConfigurationError:
            cache[name] = False
    return cache[name]


def _profile_problems(name: str, fields: dict[str, Any], is_known: Any, listed: str) -> list[str]:
    """Problems of one ``agents`` entry: unknown fields, bad values, schema, fallbacks."""
    problems: list[str] = []
    for key in fields:
        if key == "name" and fields[key] == name:
            continue
        if key not in PROFILE_FIELDS:
            close = difflib.get_close_matches(str(key), PROFILE_FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"unknown field {key!r}{hint}; valid fields: {', '.join(PROFILE_FIELDS)}"
            )
    known = {key: value for key, value in fields.items() if key in PROFILE_FIELDS}
    try:
        profile = profile_from_plan(name, known)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "profile"
            problems.append(f"{where}: {error['msg']}")
        return problems
    schema = profile.output_schema
    if schema is not None:
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            problems.append(f"output_schema is not a valid JSON schema: {exc.message}")
    for position, fallback in enumerate(profile.fallbacks):
        if fallback == name:
            problems.append(f"fallbacks[{position}] names the agent itself")
        elif not is_known(fallback):
            problems.append(
                f"fallbacks[{position}]: unknown agent {fallback!r} (not a built-in, not in the "
                f"plan's 'agents', no saved AgentProfile block); known agents: {listed}"
            )
    return problems


def validate_dispatch_data(raw: Any, *, source: str = "<plan>") -> Plan:
    """Validate parsed plan data (or re-check a :class:`Plan`) for dispatch.

    On top of :func:`prefect_fanout.plan.model.validate_plan`, task agents and
    fallbacks must resolve (plan ``agents``, built-ins, saved blocks) and every
    ``agents`` entry must build a valid :class:`AgentProfile`.

    Args:
        raw: The parsed document, or a ``Plan``.
        source: Name shown in front of every problem (a file name).

    Returns:
        The validated plan.

    Raises:
        PlanValidationError: Every problem found, at once.

    """
    if isinstance(raw, Plan):
        raw = raw.model_dump(mode="json", exclude_none=True)
    names_from = expand_subtasks(raw)[0] if is_subtasks_form(raw) else raw
    builtins = set(builtin_profile_names())
    plan_agents: set[str] = set()
    if isinstance(names_from, dict) and isinstance(names_from.get("agents"), dict):
        plan_agents = {k for k, v in names_from["agents"].items() if isinstance(v, dict)}
    lookups: dict[str, bool] = {}
    loaded: dict[str, AgentProfile] = {}

    def is_known(name: str) -> bool:
        if name in builtins or name in plan_agents:
            return True
        return _saved_profile_exists(name, lookups, loaded)

    saved = {name for name in _task_agent_names(names_from) if is_known(name)} - plan_agents
    listed = ", ".join(sorted(builtins | plan_agents | {k for k, v in lookups.items() if v}))

    def check_agent(name: str, fields: dict[str, Any]) -> list[str]:
        return _profile_problems(name, fields, is_known, listed)

    known = builtins | saved
    plan = validate_plan(raw, source=source, known_agents=known, check_agent=check_agent)
    plan._saved_profiles.update(loaded)  # the run's resolver reads each block once, here
    return plan


def _task_agent_names(raw: Any) -> set[str]:
    if not isinstance(raw, dict) or not isinstance(raw.get("tasks"), list):
        return set()
    names = set()
    config = raw.get("config")
    if isinstance(config, dict) and isinstance(config.get("synthesize"), str):
        names.add(config["synthesize"])
    for task in raw["tasks"]:
        if not isinstance(task, dict):
            continue
        for field in ("agent", "judge"):  # a judge resolves like a task's agent
            if isinstance(task.get(field), str) and task[field].strip():
                names.add(task[field])
    return names


def load_dispatch_plan(source: str | Path, *, text: str | None = None) -> Plan:
    """Read and validate a plan for dispatch (``"-"`` reads standard input).

    Args:
        source: Path of a JSON or YAML plan, or ``"-"`` for standard input.
        text: The plan's text, used instead of reading ``source``.

    Returns:
        The validated plan.

    Raises:
        PlanValidationError: The plan cannot be read or has problems; all of
            them are listed, each with its location.

    """
    name, raw = parse_plan(source, text=text)
    return validate_dispatch_data(raw, source=name)
