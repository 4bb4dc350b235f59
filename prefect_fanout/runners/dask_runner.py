"""The Dask task runner of ``--task-runner dask`` (imported only when Dask is chosen).

``prefect-dask``'s ``DaskTaskRunner``, sending quoted parameters unwrapped
(see :class:`prefect_fanout.runners.quoting.UnquotedSubmit`).
"""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from prefect_fanout.runners.quoting import UnquotedSubmit

__all__ = ["FanoutDaskTaskRunner"]


class FanoutDaskTaskRunner(UnquotedSubmit, DaskTaskRunner):
    """``DaskTaskRunner`` that sends quoted parameters to workers unwrapped."""
