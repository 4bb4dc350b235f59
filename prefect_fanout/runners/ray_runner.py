"""The Ray task runner of ``--task-runner ray`` (imported only when Ray is chosen).

``prefect-ray``'s ``RayTaskRunner``, sending quoted parameters unwrapped
(see :class:`prefect_fanout.runners.quoting.UnquotedSubmit`).
"""

from __future__ import annotations

from prefect_ray import RayTaskRunner

from prefect_fanout.runners.quoting import UnquotedSubmit

__all__ = ["FanoutRayTaskRunner"]


class FanoutRayTaskRunner(UnquotedSubmit, RayTaskRunner):
    """``RayTaskRunner`` that sends quoted parameters to workers unwrapped."""
