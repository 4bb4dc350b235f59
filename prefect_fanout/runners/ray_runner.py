"""The Ray task runner of ``--task-runner ray`` (imported only when Ray is chosen).

``prefect-ray``'s ``RayTaskRunner``, sending quoted parameters unwrapped
(see :class:`prefect_fanout.runners.quoting.UnquotedSubmit`), and leaving the
process clean when it cannot connect.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from prefect_ray import RayTaskRunner

from prefect_fanout.errors import ConfigurationError
from prefect_fanout.runners.quoting import UnquotedSubmit

__all__ = ["FanoutRayTaskRunner", "ray_connection_advice"]


def ray_connection_advice(address: str, problem: BaseException) -> str:
    """What to say when a Ray client could not connect to ``address``.

    Ray 2.5x starts clusters with token authentication when a token exists on the
    head (``~/.ray/auth_token``), and a client given an explicit ``ray://`` address
    only sends a token when ``RAY_AUTH_MODE=token`` is in its environment; without
    it the head refuses the client and Ray reports a connection timeout.
    """
    advice = f"--ray-address {address}: the Ray client could not connect ({problem})."
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        advice += (
            " If the cluster uses token authentication (ray start --head does when"
            " ~/.ray/auth_token exists on the head), set RAY_AUTH_MODE=token and the"
            " cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
            " in this process's environment."
        )
    return advice


class FanoutRayTaskRunner(UnquotedSubmit, RayTaskRunner):
    """``RayTaskRunner`` that sends quoted parameters to workers unwrapped.

    A failed connection shuts Ray down again before raising: a half-made client
    connection would otherwise stay in the process and fail every later Ray run
    ("Ray Client is not connected").
    """

    def __enter__(self) -> Any:
        try:
            return super().__enter__()
        except Exception as failed:
            ray.shutdown()
            if self.address and self.address.startswith("ray://"):
                raise ConfigurationError(ray_connection_advice(self.address, failed)) from failed
            raise
