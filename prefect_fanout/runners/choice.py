"""Task runners: where a map's or a dispatch's agent calls run.

``thread`` (the default) runs calls on a thread pool in the flow's process;
``dask`` on a Dask cluster through ``prefect-dask`` (a ``LocalCluster`` of
worker processes started for the run, bound to 127.0.0.1, or the scheduler at
``dask_address``); ``ray`` on Ray through ``prefect-ray`` (a local Ray started
for the run, or the cluster at ``ray_address``).

The flow itself (the partition bookkeeping, the merge and the reduce) always runs
in the caller's process; only task runs go to the workers: a map's ``map-chunk``
runs (each running its calls on a thread pool in the worker, see
:mod:`prefect_fanout.engine.chunks`) and ``write-partition`` runs, a dispatch's
``agent-call`` runs one by one. Workers must share with the flow's
process: the result storage (``PREFECT_LOCAL_STORAGE_PATH``, where cached
answers live), the lock directory beside it (``.fanout-locks``; ``flock``
locks, so one machine or a filesystem with working ``flock``), the output
directory, and the Prefect API (``PREFECT_API_URL``, where tag concurrency
limits are held). Prefect hands its settings to each task run, so workers
started for the run get them; the workers of an existing cluster must be able
to reach the same paths and API.

:func:`check_task_runner` checks a choice up front (an unknown runner, a
missing extra, an address nobody answers at) so bad input fails before any call.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from prefect_fanout.errors import ConfigurationError

if TYPE_CHECKING:
    from prefect.task_runners import TaskRunner

__all__ = ["TASK_RUNNERS", "build_task_runner", "check_task_runner", "runner_matches"]

TASK_RUNNERS = ("thread", "dask", "ray")
"""The task runners a map or a dispatch can run on."""

CONNECT_TIMEOUT_SECONDS = 5.0

ANSWER_KEPT_SECONDS = 60.0
"""How long an address that answered is not probed again (one probe per run, not two)."""

_answered: dict[tuple[str, int], float] = {}
"""How long the up-front check waits for a Dask or Ray address to answer."""

_DEFAULT_PORTS = {"dask": 8786, "ray": 10001}
_EXTRAS = {"dask": ("prefect_dask", "dask"), "ray": ("prefect_ray", "ray")}


def _flag(name: str, cli: bool) -> str:
    return f"--{name.replace('_', '-')}" if cli else name


def _host_port(address: str, kind: str) -> tuple[str, int]:
    """The host and port of a ``tcp://host:port``, ``ray://host:port`` or ``host:port``."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if not parts.hostname:
        raise ValueError("no host")
    return parts.hostname, parts.port or _DEFAULT_PORTS[kind]


def check_task_runner(
    task_runner: str,
    *,
    dask_address: str | None = None,
    ray_address: str | None = None,
    cli: bool = False,
) -> None:
    """Check a task runner choice before any call is made.

    Args:
        task_runner: ``thread``, ``dask`` or ``ray``.
        dask_address: An existing Dask scheduler (``tcp://HOST:PORT``); only with ``dask``.
        ray_address: An existing Ray cluster (``ray://HOST:PORT``); only with ``ray``.
        cli: Name the options as command-line flags in messages.

    Raises:
        ConfigurationError: An unknown runner, an address given for another runner,
            a runner whose extra is not installed, or an address that does not answer.
    """
    runner_flag = _flag("task_runner", cli)
    if task_runner not in TASK_RUNNERS:
        raise ConfigurationError(
            f"{runner_flag}: unknown task runner {task_runner!r}; use one of "
            + ", ".join(TASK_RUNNERS)
        )
    for kind, address in (("dask", dask_address), ("ray", ray_address)):
        if address is None:
            continue
        flag = _flag(f"{kind}_address", cli)
        if task_runner != kind:
            raise ConfigurationError(
                f"{flag} is for the {kind} runner; add {runner_flag} {kind} or drop {flag}"
            )
        try:
            host, port = _host_port(address, kind)
        except ValueError as exc:
            raise ConfigurationError(
                f"{flag} {address!r} is not an address ({exc}); give HOST:PORT, "
                f"e.g. {'tcp' if kind == 'dask' else 'ray'}://127.0.0.1:{_DEFAULT_PORTS[kind]}"
            ) from None
        if (
            time.monotonic() - _answered.get((host, port), -ANSWER_KEPT_SECONDS)
            < ANSWER_KEPT_SECONDS
        ):
            continue  # probed a moment ago in this run (the CLI checks, then the flow)
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS):
                _answered[(host, port)] = time.monotonic()
        except OSError as exc:
            start = "dask scheduler" if kind == "dask" else "ray start --head"
            raise ConfigurationError(
                f"{flag} {address}: nothing answers at {host}:{port} ({exc.strerror or exc}); "
                f"start one there (`{start}`) or drop {flag} to start a local "
                f"{'LocalCluster' if kind == 'dask' else 'Ray'} for the run"
            ) from None
    if task_runner in _EXTRAS:
        module, extra = _EXTRAS[task_runner]
        try:
            __import__(module)
        except ImportError as exc:
            raise ConfigurationError(
                f"{runner_flag} {task_runner} needs {module.replace('_', '-')} ({exc}); "
                f"install it with: pip install 'prefect-fanout[{extra}]'"
            ) from None


def local_processes(max_workers: int) -> int:
    """Worker processes of a cluster started for a run: one per CPU, at most ``max_workers``."""
    return max(1, min(max_workers, os.cpu_count() or 1))


WORKER_CONFIG: dict[str, Any] = {"distributed": {"worker": {"profile": {"enabled": False}}}}
"""Dask configuration of the workers of a ``LocalCluster`` started for a run.

The worker's statistical profiler calls ``sys._current_frames()`` every 10 ms. On
Python 3.11 that call can deadlock the whole process while holding the GIL when a
garbage collection inside it frees a ``threading.local`` (CPython gh-106883, fixed
in 3.12 only): seen here as a worker frozen for good after a few thousand calls.
Its samples also cost CPU with the many threads a chunk runs. Workers started with
``dask worker`` take the same setting from the environment:
``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``.
"""


def dask_cluster_kwargs(max_workers: int, *, chunked: bool = False) -> dict[str, Any]:
    """``LocalCluster`` arguments: worker processes on 127.0.0.1, no dashboard.

    One worker process per CPU (at most ``max_workers``). Call by call, each has
    enough threads that the cluster runs ``max_workers`` tasks at once; ``chunked``
    (a map sending chunks of calls), one thread each: a chunk runs its calls on a
    thread pool of its own.
    """
    processes = local_processes(max_workers)
    return {
        "n_workers": processes,
        "threads_per_worker": 1 if chunked else max(1, math.ceil(max_workers / processes)),
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        # Each Nanny hands its worker process this whole configuration: see WORKER_CONFIG.
        "config": _worker_config(),
    }


def _worker_config() -> dict[str, Any]:
    """The Dask configuration of this process with :data:`WORKER_CONFIG` merged in."""
    import dask.config

    return dask.config.merge(dask.config.config, WORKER_CONFIG)


def build_task_runner(
    task_runner: str = "thread",
    *,
    max_workers: int,
    dask_address: str | None = None,
    ray_address: str | None = None,
    chunked: bool = False,
) -> TaskRunner[Any]:
    """A Prefect task runner for a choice (checked with :func:`check_task_runner` first).

    Args:
        task_runner: ``thread``, ``dask`` or ``ray``.
        max_workers: Task runs in flight at most (threads, or Dask worker threads).
        dask_address: An existing Dask scheduler; None starts a ``LocalCluster``.
        ray_address: An existing Ray cluster; None starts a local Ray.
        chunked: The runner of a map that sends chunks of calls: a cluster started for
            it has one slot (Dask worker thread, Ray CPU) per worker process.

    Returns:
        An unstarted task runner.
    """
    if task_runner == "dask":
        from prefect_fanout.runners.dask_runner import FanoutDaskTaskRunner

        if dask_address:
            return FanoutDaskTaskRunner(address=dask_address)
        return FanoutDaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs=dask_cluster_kwargs(max_workers, chunked=chunked),
        )
    if task_runner == "ray":
        from prefect_fanout.runners.ray_runner import FanoutRayTaskRunner

        if ray_address:
            return FanoutRayTaskRunner(address=ray_address)
        return FanoutRayTaskRunner(
            init_kwargs={
                "num_cpus": local_processes(max_workers) if chunked else max_workers,
                "include_dashboard": False,
                "_node_ip_address": "127.0.0.1",
            }
        )
    if task_runner != "thread":
        raise ConfigurationError(f"unknown task runner {task_runner!r}")
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=max_workers)


def runner_matches(runner: Any, task_runner: str) -> bool:
    """True when ``runner`` (a flow run's task runner) is of the chosen kind."""
    names = {cls.__name__ for cls in type(runner).__mro__}
    wanted = {"thread": "ThreadPoolTaskRunner", "dask": "DaskTaskRunner", "ray": "RayTaskRunner"}
    return wanted.get(task_runner) in names
