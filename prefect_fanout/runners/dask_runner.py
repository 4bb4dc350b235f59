"""The Dask task runner of ``--task-runner dask`` (imported only when Dask is chosen).

``prefect-dask``'s ``DaskTaskRunner``, sending quoted parameters unwrapped
(see :class:`prefect_fanout.runners.quoting.UnquotedSubmit`), and warning when the
workers of an existing cluster run Dask's statistical profiler on Python 3.11.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect_dask import DaskTaskRunner

from prefect_fanout.runners.quoting import UnquotedSubmit

__all__ = ["FanoutDaskTaskRunner", "profiling_workers"]

logger = logging.getLogger("prefect_fanout.runners")

PROFILER_FIX = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False"


def _profiling_on_old_python(dask_worker: Any) -> bool:
    """Run on a worker: True when its profiler samples threads on Python < 3.12."""
    import sys

    return sys.version_info < (3, 12) and "profile" in dask_worker.periodic_callbacks


def profiling_workers(client: Any) -> list[str]:
    """The workers of ``client``'s cluster whose profiler can freeze them (see WORKER_CONFIG).

    Dask's profiler calls ``sys._current_frames()`` every 10 ms, which can deadlock a
    Python 3.11 process (CPython gh-106883); a chunk runs many threads, so such a
    worker freezes for good after some thousands of calls.
    """
    answers = client.run(_profiling_on_old_python)
    return sorted(address for address, profiling in answers.items() if profiling)


class FanoutDaskTaskRunner(UnquotedSubmit, DaskTaskRunner):
    """``DaskTaskRunner`` that sends quoted parameters to workers unwrapped.

    On an existing cluster it warns, once, about workers that run Dask's statistical
    profiler on Python 3.11 (they can freeze; start them with
    ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``).
    """

    def __enter__(self) -> Any:
        entered = super().__enter__()
        if self.address:
            try:
                risky = profiling_workers(self.client)
            except Exception:  # informative only: never stops a run
                risky = []
            if risky:
                logger.warning(
                    "%d Dask worker(s) run the statistical profiler on Python 3.11 (%s): it can "
                    "freeze a worker that runs many threads (CPython gh-106883). Start the "
                    "workers with %s",
                    len(risky),
                    ", ".join(risky[:3]),
                    PROFILER_FIX,
                )
        return entered
