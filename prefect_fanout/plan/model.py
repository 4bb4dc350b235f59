"""Plans: a set of agent tasks with dependencies between them.

A plan is a JSON or YAML document in the common ``tasks.json`` form::

    {
      "tasks": [
        {"task_id": "a", "agent": "coder", "description": "...",
         "input_data": {...}, "dependencies": []}
      ],
      "config": {"max_workers": 4, "timeout_seconds": 300, "trace_dir": null,
                 "failure_policy": "partial", "endpoint": null},
      "agents": {"coder": {...profile fields...}}
    }

or in seed 003's plan-and-synthesise form, ``{"task", "subtasks", "types",
"synthesize"}`` (see :mod:`prefect_fanout.plan.subtasks`), checked as the
``tasks`` form it stands for.

:func:`load_plan` parses a file (or standard input) and :func:`validate_plan`
checks the parsed data. Validation does not stop at the first problem: every
problem found is collected into one :class:`PlanValidationError`. A valid plan
is always a DAG, so :func:`dependency_levels`, :func:`topological_order` and
:func:`critical_path` never meet a cycle.

This module is pure: no Prefect imports and no LLM calls.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from prefect_fanout.errors import PlanValidationError
from prefect_fanout.plan import graph as plan_graph
from prefect_fanout.plan.checks import (
    ACCEPTANCE_FIELDS,
    AgentCheck,
    PlanProblem,
    check_document,
    graph_problems,
    problems_from_pydantic,
)
from prefect_fanout.plan.policies import FAILURE_POLICIES, FailurePolicy

__all__ = [
    "FAILURE_POLICIES",
    "STDIN",
    "AgentCheck",
    "Plan",
    "PlanConfig",
    "PlanProblem",
    "PlanValidationError",
    "TaskSpec",
    "critical_path",
    "dependency_levels",
    "format_levels",
    "load_plan",
    "parse_plan",
    "topological_order",
    "validate_plan",
]

STDIN = "-"
"""The ``source`` that makes :func:`load_plan` read standard input."""

_STDIN_NAME = "<stdin>"
_DEFAULT_NAME = "<plan>"


class TaskSpec(BaseModel):
    """One agent call of a plan.

    Attributes:
        task_id: Unique, non-empty id of the task within the plan.
        agent: Name of the agent profile that runs the task.
        description: What the agent is asked to do.
        input_data: Free-form data passed to the agent.
        dependencies: Ids of the tasks that must finish before this one starts.
        acceptance: Criteria the answer must meet, checked by ``judge``; ``None``
            (the default) means the first answer is accepted as is.
        judge: The agent that checks the answer against ``acceptance`` (required
            with it); its verdict decides whether the task is revised.
        max_revisions: How many times a rejected answer is re-asked with the
            unmet criteria; ``None`` uses ``config.max_revisions``.

    A task without ``acceptance`` serializes without the three acceptance keys,
    so plans, trace indexes and results of such tasks look as they always did.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str = Field(min_length=1)
    agent: str = Field(default="default", min_length=1)
    description: str = ""
    input_data: dict[str, Any] = Field(default_factory=dict)
    dependencies: list[str] = Field(default_factory=list)
    acceptance: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    judge: str | None = Field(default=None, min_length=1)
    max_revisions: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _check_acceptance(self) -> TaskSpec:
        if self.acceptance is not None and self.judge is None:
            raise ValueError("a task with acceptance criteria needs a judge agent")
        if self.acceptance is None and (self.judge is not None or self.max_revisions is not None):
            raise ValueError("judge and max_revisions need acceptance criteria")
        return self

    @model_serializer(mode="wrap")
    def _drop_unused_acceptance(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in ACCEPTANCE_FIELDS:
            if data.get(key, 0) is None:
                del data[key]
        return data

    def revision_limit(self, config: PlanConfig) -> int:
        """How many revisions this task may get: its ``max_revisions``, else the config's."""
        return config.max_revisions if self.max_revisions is None else self.max_revisions


class PlanConfig(BaseModel):
    """Run settings of a plan.

    Attributes:
        max_workers: How many tasks may run at the same time.
        timeout_seconds: Time limit of each task, in seconds.
        trace_dir: Directory for call traces, or ``None`` for no traces.
        failure_policy: ``"partial"`` skips only the dependants of a failed
            task; ``"all_or_nothing"`` fails the whole run.
        endpoint: Name of the endpoint block to call, or ``None`` for the default.
        synthesize: An agent that gets every task's output after the tasks end
            and writes the final answer (the plan's ``synthesis``), or ``None``.
        max_revisions: How many times a task whose answer its judge rejects is
            re-asked, unless the task sets its own ``max_revisions`` (default 2).
        max_concurrency: Requests in flight at once to the endpoint, across
            processes; overrides the endpoint's (``--max-concurrency`` overrides this).
        requests_per_minute: Requests per minute to the endpoint (``--rpm`` overrides).
        tokens_per_minute: Tokens per minute to the endpoint (``--tpm`` overrides).
        model: A model for every agent of the plan (``--model`` overrides).
        max_tokens: A completion budget for every agent (``--max-tokens`` overrides).
        temperature: A sampling temperature for every agent (``--temperature`` overrides).
        budget_tokens: The most tokens the dispatch may spend (``--budget-tokens`` overrides).
        budget_usd: The most USD the dispatch may spend (``--budget-usd`` overrides).
        budget_name: A budget shared by name (``--budget-name`` overrides).

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_workers: int = Field(default=4, ge=1)
    timeout_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    trace_dir: str | None = None
    failure_policy: FailurePolicy = "partial"
    endpoint: str | None = None
    synthesize: str | None = None
    max_revisions: int = Field(default=2, ge=0)
    max_concurrency: int | None = Field(default=None, gt=0)
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    model: str | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    budget_tokens: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    budget_name: str | None = Field(default=None, min_length=1)

    def limits(self) -> dict[str, int]:
        """The endpoint limits the plan sets (unset ones left out)."""
        given = {
            "max_concurrency": self.max_concurrency,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
        }
        return {name: value for name, value in given.items() if value is not None}


class Plan(BaseModel):
    """A validated plan: tasks forming a DAG, run settings and agent profiles.

    Constructing a ``Plan`` directly also rejects duplicate ids, unknown or
    self dependencies and cycles; :func:`validate_plan` reports more problems,
    and all of them at once.

    Attributes:
        tasks: The tasks, in plan order (the order used to break ties).
        config: Run settings.
        agents: Agent profiles defined by the plan, by name, as raw mappings.
        goal: The overall task (the ``subtasks`` form's ``task``): the synthesis
            call's instruction, or ``None``.

    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[TaskSpec] = Field(min_length=1)
    config: PlanConfig = Field(default_factory=PlanConfig)
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    goal: str | None = None
    # Saved AgentProfile blocks the plan's validation loaded, by name: the run's resolver
    # starts with them, so a block is read once per run (see plan/agents.py).
    _saved_profiles: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_graph(self) -> Plan:
        entries = [
            (index, task.task_id, list(enumerate(task.dependencies)))
            for index, task in enumerate(self.tasks)
        ]
        problems = graph_problems(entries)
        if problems:
            raise ValueError("; ".join(f"{p.location}: {p.message}" for p in problems))
        return self

    @property
    def task_ids(self) -> list[str]:
        """The task ids in plan order."""
        return [task.task_id for task in self.tasks]

    def task(self, task_id: str) -> TaskSpec:
        """Return the task with the given id.

        Args:
            task_id: Id of the task.

        Returns:
            The task.

        Raises:
            KeyError: No task has that id.

        """
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        raise KeyError(f"no task {task_id!r} in the plan")

    def dependency_graph(self) -> dict[str, list[str]]:
        """Map every task id, in plan order, to the ids it depends on."""
        return {task.task_id: list(task.dependencies) for task in self.tasks}

    def dependants(self, task_id: str, *, transitive: bool = True) -> list[str]:
        """Return the tasks that depend on a task.

        With the ``"partial"`` failure policy these are the tasks skipped when
        ``task_id`` fails.

        Args:
            task_id: Id of the task.
            transitive: Include dependants of dependants (the default); if
                false, only the tasks that list ``task_id`` themselves.

        Returns:
            Dependant ids in plan order, not including ``task_id``.

        Raises:
            KeyError: No task has that id.

        """
        self.task(task_id)
        graph = self.dependency_graph()
        if transitive:
            return plan_graph.downstream(graph, task_id)
        return plan_graph.dependants_map(graph)[task_id]

    def upstream_closure(self, task_id: str) -> list[str]:
        """Return every task that a task needs, directly or transitively.

        Args:
            task_id: Id of the task.

        Returns:
            Ids in plan order, not including ``task_id``.

        Raises:
            KeyError: No task has that id.

        """
        self.task(task_id)
        return plan_graph.upstream(self.dependency_graph(), task_id)


def validate_plan(
    raw: Any,
    *,
    source: str = _DEFAULT_NAME,
    known_agents: Iterable[str] = (),
    check_agent: AgentCheck | None = None,
) -> Plan:
    """Check parsed plan data and build the :class:`Plan`.

    Args:
        raw: The parsed document (normally a ``dict``).
        source: Name shown in front of every problem (a file name).
        known_agents: Agent names that exist outside the plan (built-in
            profiles, saved blocks). When empty, task agents are not checked;
            otherwise each task's agent must be one of these or be defined in
            the plan's ``agents`` section.
        check_agent: Called as ``check_agent(name, profile)`` for each entry
            of ``agents``; returns problem messages (empty if the profile is
            fine). A ``ValueError`` it raises is reported as a problem too.

    Returns:
        The validated plan.

    Raises:
        PlanValidationError: Every problem found, at once.

    """
    clean, problems = check_document(raw, known_agents=set(known_agents), check_agent=check_agent)
    if problems or clean is None:
        raise PlanValidationError(problems, source)
    try:
        return Plan.model_validate(clean)
    except ValidationError as exc:  # a safety net: the checks above should catch it all
        raise PlanValidationError(problems_from_pydantic(exc), source) from None


def load_plan(
    source: str | Path,
    *,
    text: str | None = None,
    known_agents: Iterable[str] = (),
    check_agent: AgentCheck | None = None,
) -> Plan:
    """Read, parse and validate a plan file.

    The format follows the file name: ``.yaml``/``.yml`` is YAML, ``.json``
    is JSON. Standard input and other names are read as JSON, or as YAML when
    that fails and the text does not start with ``{``.

    Args:
        source: Path of the plan, or ``"-"`` for standard input.
        text: The plan's text, used instead of reading ``source`` (which then
            only names the plan and selects the format).
        known_agents: See :func:`validate_plan`.
        check_agent: See :func:`validate_plan`.

    Returns:
        The validated plan.

    Raises:
        PlanValidationError: The file is missing or unreadable, does not
            parse, or has problems; each problem is listed.

    """
    name, raw = parse_plan(source, text=text)
    return validate_plan(raw, source=name, known_agents=known_agents, check_agent=check_agent)


def parse_plan(source: str | Path, *, text: str | None = None) -> tuple[str, Any]:
    """Read and parse a plan file without validating it.

    The format follows the file name: ``.yaml``/``.yml`` is YAML, ``.json``
    is JSON. Standard input and other names are read as JSON, or as YAML when
    that fails and the text does not start with ``{``.

    Args:
        source: Path of the plan, or ``"-"`` for standard input.
        text: The plan's text, used instead of reading ``source``.

    Returns:
        The plan's display name (the path or ``<stdin>``) and the parsed document.

    Raises:
        PlanValidationError: The file is missing, unreadable or does not parse.

    """
    is_stdin = isinstance(source, str) and source == STDIN
    name = _STDIN_NAME if is_stdin else str(source)
    if text is None:
        text = sys.stdin.read() if is_stdin else _read_file(Path(source), name)
    text = text.removeprefix("\ufeff")
    suffix = "" if is_stdin else Path(source).suffix.lower()
    if suffix in (".yaml", ".yml"):
        return name, _parse_yaml(text, name)
    if suffix == ".json":
        return name, _parse_json(text, name)
    return name, _parse_sniffed(text, name)


def _read_file(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problem = PlanProblem("file", f"plan file not found: {name}")
    except UnicodeDecodeError as exc:
        problem = PlanProblem(
            "file", f"plan file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        )
    except OSError as exc:
        problem = PlanProblem("file", f"cannot read plan file: {exc.strerror or exc}")
    raise PlanValidationError([problem], name)


def _parse_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = PlanProblem(
            "json", f"malformed JSON: {exc.msg}", location=f"line {exc.lineno}, column {exc.colno}"
        )
    except RecursionError:
        problem = PlanProblem("json", "malformed JSON: nested too deeply")
    raise PlanValidationError([problem], name)


def _parse_yaml(text: str, name: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        location = ""
        detail = str(exc)
        if isinstance(exc, yaml.MarkedYAMLError):
            mark = exc.problem_mark or exc.context_mark
            if mark is not None:
                location = f"line {mark.line + 1}, column {mark.column + 1}"
            detail = exc.problem or exc.context or detail
        problem = PlanProblem("yaml", f"malformed YAML: {detail}", location=location)
    raise PlanValidationError([problem], name)


def _parse_sniffed(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        if text.lstrip().startswith("{"):
            return _parse_json(text, name)
    return _parse_yaml(text, name)


def dependency_levels(plan: Plan) -> list[list[str]]:
    """Group the plan's tasks into batches that can run together.

    Args:
        plan: A validated plan.

    Returns:
        Level 0 holds the tasks without dependencies; level ``k`` the tasks
        whose deepest dependency is at level ``k - 1``. Ids keep plan order.

    """
    return plan_graph.dependency_levels(plan.dependency_graph())


def topological_order(plan: Plan) -> list[str]:
    """Order the plan's tasks so that each comes after its dependencies.

    Args:
        plan: A validated plan.

    Returns:
        All task ids; among the tasks ready at any point, plan order decides.

    """
    return plan_graph.topological_order(plan.dependency_graph())


def critical_path(
    plan: Plan, durations: Mapping[str, float] | None = None
) -> tuple[list[str], float]:
    """Find the longest chain of dependent tasks.

    Args:
        plan: A validated plan.
        durations: Duration (or any non-negative weight) per task id. ``None``
            weighs every task 1; tasks missing from the mapping weigh 0.

    Returns:
        The chain in execution order and its total weight. Among equally
        heavy chains, the one starting with the earliest task in plan order
        wins, then the one continuing with the earliest task, and so on.

    Raises:
        ValueError: A duration is negative or not finite.

    """
    return plan_graph.critical_path(plan.dependency_graph(), durations)


def format_levels(plan: Plan, durations: Mapping[str, float] | None = None) -> str:
    """Describe the plan's levels and critical path for ``fanout validate --levels``.

    Args:
        plan: A validated plan.
        durations: Optional durations in seconds for the critical path.

    Returns:
        One line per level (``level 0: a, b``), then the critical path
        (``critical path: a -> c (2 tasks)``), without a final newline.

    """
    lines = [
        f"level {number}: {', '.join(ids)}" for number, ids in enumerate(dependency_levels(plan))
    ]
    path, total = critical_path(plan, durations)
    count = f"{len(path)} task" + ("" if len(path) == 1 else "s")
    if durations is not None:
        count += f", {total:g} s"
    lines.append(f"critical path: {' -> '.join(path)} ({count})")
    return "\n".join(lines)
