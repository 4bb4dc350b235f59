"""Task runners: where a run's agent calls go (threads, Dask, Ray), chosen and checked up front.

:mod:`~prefect_fanout.runners.choice` builds and checks a runner by name;
:mod:`~prefect_fanout.runners.dask_runner` and :mod:`~prefect_fanout.runners.ray_runner`
hold the remote runners (imported only when chosen).
"""

from prefect_fanout.runners.choice import (
    TASK_RUNNERS,
    build_task_runner,
    check_task_runner,
    runner_matches,
)

__all__ = ["TASK_RUNNERS", "build_task_runner", "check_task_runner", "runner_matches"]
