"""The Dask task runner of ``--task-runner dask`` (imported only when Dask is chosen).

``prefect-dask``'s ``DaskTaskRunner``, sending quoted parameters unwrapped
(see :func:`prefect_fanout.runners.unquoted`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefect_dask import DaskTaskRunner

from prefect_fanout.runners.quoting import unquoted

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
        """Submit a task run, its top-level ``quote`` parameters unwrapped."""
        return super().submit(
            task, unquoted(parameters), wait_for=wait_for, dependencies=dependencies
        )
