"""Agent profiles from a JSON or YAML file: ``{name: {profile fields}}``.

The file maps agent names to :class:`~prefect_fanout.agents.profiles.AgentProfile`
fields (``model``, ``system_prompt``, ``prompt_template``, ``output_schema``
as a JSON schema, ...). A top-level ``agents:`` key holding that mapping is
accepted too, so a plan file's agents can be reused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.errors import ConfigurationError

__all__ = ["load_agents_file", "profiles_from_mapping"]


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
            ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigurationError(f"{where}: invalid YAML: {problem}") from None


def profiles_from_mapping(data: Any, origin: str = "agents") -> dict[str, AgentProfile]:
    """Build profiles from ``{name: {fields}}`` (or ``{"agents": {...}}``).

    Args:
        data: The parsed mapping.
        origin: Where it came from, for error messages (e.g. the file name).

    Returns:
        Profiles by name, in the mapping's order.

    Raises:
        ConfigurationError: The shape is wrong or a profile is invalid; the
            message names the origin and the agent.

    """
    if isinstance(data, dict) and set(data) == {"agents"} and isinstance(data["agents"], dict):
        data = data["agents"]
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigurationError(
            f"{origin}: expected a mapping of agent names to profiles, got {kind}"
        )
    profiles: dict[str, AgentProfile] = {}
    for name, spec in data.items():
        if not isinstance(spec, dict):
            kind = type(spec).__name__
            raise ConfigurationError(f"{origin}: agent {name!r}: expected a mapping, got {kind}")
        fields = dict(spec)
        declared = fields.pop("name", name)
        if declared != name:
            raise ConfigurationError(
                f"{origin}: agent {name!r} declares a different name {declared!r}"
            )
        try:
            profiles[str(name)] = AgentProfile(name=str(name), **fields)
        except (ValidationError, TypeError, ValueError) as exc:
            detail = str(exc).replace("\n", "; ")
            message = f"{origin}: agent {name!r}: invalid profile: {detail}"
            raise ConfigurationError(message) from None
    return profiles


def load_agents_file(path: str | Path) -> dict[str, AgentProfile]:
    """Read agent profiles from a ``.json``, ``.yaml`` or ``.yml`` file.

    Args:
        path: The file.

    Returns:
        Profiles by name.

    Raises:
        ConfigurationError: The file cannot be read or parsed, or holds an
            invalid profile; the message names the file.

    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        message = f"{file}: cannot read agents file: {exc.strerror or exc}"
        raise ConfigurationError(message) from None
    return profiles_from_mapping(_parse(file, text), origin=str(file))
