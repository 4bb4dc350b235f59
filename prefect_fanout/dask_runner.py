"""The Dask task runner of ``--task-runner dask`` (imported only when Dask is chosen).

``prefect-dask``'s ``DaskTaskRunner`` with one change: top-level parameters
wrapped in ``prefect.utilities.annotations.quote`` are unwrapped before they go
to Dask. The agent-call task quotes its request and transport so that Prefect
does not walk them in the flow's process; Dask rebuilds tuple subclasses it
finds in task arguments, and a ``quote`` (a named tuple) arrives on the worker
double-wrapped (``quote(((value,),))``), so the task would get a tuple.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect.utilities.annotations import BaseAnnotation
from prefect_dask import DaskTaskRunner

__all__ = ["FanoutDaskTaskRunner"]


class FanoutDaskTaskRunner(DaskTaskRunner):
    """``DaskTaskRunner`` that sends quoted parameters to workers unwrapped."""

    def submit(  # type: ignore[override]
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[Any] | None = None,
        dependencies: dict[str, Any] | None = None,
    ) -> Any:
        """Submit a task run, its top-level ``quote`` parameters unwrapped (see the module)."""
        unwrapped = {
            name: value.unwrap() if isinstance(value, BaseAnnotation) else value
            for name, value in parameters.items()
        }
        return super().submit(task, unwrapped, wait_for=wait_for, dependencies=dependencies)
