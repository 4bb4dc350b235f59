"""Task parameters as remote runners must send them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["UnquotedSubmit", "unquoted"]


def unquoted(parameters: dict[str, Any]) -> dict[str, Any]:
    """Task parameters with top-level ``quote`` annotations unwrapped, for Dask and Ray.

    The agent-call task quotes its request and transport so that Prefect does not
    walk them in the flow's process. Sent to a Dask or Ray worker, a ``quote`` (a
    named tuple) arrives rebuilt as ``quote(((value,),))`` and the task would get
    a tuple; the remote runners therefore send the values themselves.
    """
    from prefect.utilities.annotations import BaseAnnotation

    return {
        name: value.unwrap() if isinstance(value, BaseAnnotation) else value
        for name, value in parameters.items()
    }


class UnquotedSubmit:
    """A task-runner mixin that submits task runs with their ``quote`` parameters unwrapped.

    Put it before a remote runner (``DaskTaskRunner``, ``RayTaskRunner``) in the bases.
    """

    def submit(
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[Any] | None = None,
        dependencies: dict[str, Any] | None = None,
    ) -> Any:
        """Submit a task run, its top-level ``quote`` parameters unwrapped."""
        return super().submit(  # type: ignore[misc]
            task, unquoted(parameters), wait_for=wait_for, dependencies=dependencies
        )
