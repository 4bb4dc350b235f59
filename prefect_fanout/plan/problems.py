"""One problem found in a plan, located (the type every plan check reports)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PlanProblem"]


@dataclass(frozen=True)
class PlanProblem:
    """One problem found in a plan.

    Attributes:
        kind: Category, e.g. ``"json"``, ``"yaml"``, ``"file"``, ``"field"``,
            ``"config"``, ``"duplicate_id"``, ``"unknown_dependency"``,
            ``"self_dependency"``, ``"cycle"``, ``"unknown_agent"`` or
            ``"agent_profile"``.
        message: What is wrong, naming the task or field concerned.
        task_id: The task concerned, if any.
        location: Where: ``"tasks[2].dependencies[0]"``,
            ``"config.max_workers"``, ``"line 3, column 7"``, or ``""`` for
            the whole file.

    """

    kind: str
    message: str
    task_id: str | None = None
    location: str = ""

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message
