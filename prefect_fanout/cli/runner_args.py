"""``--task-runner``, ``--dask-address`` and ``--ray-address``, shared by map and dispatch."""

from __future__ import annotations

import argparse

from prefect_fanout.runners import TASK_RUNNERS


def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the task runner options to a command's parser."""
    parser.add_argument(
        "--task-runner",
        choices=TASK_RUNNERS,
        help="where the agent calls run: thread (default, threads in this process), dask "
        "(a Dask LocalCluster of worker processes started for the run, or --dask-address) "
        "or ray (a local Ray started for the run, or --ray-address)",
    )
    parser.add_argument(
        "--dask-address",
        metavar="ADDRESS",
        help="an existing Dask scheduler, e.g. tcp://127.0.0.1:8786 (with --task-runner dask)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDRESS",
        help="an existing Ray cluster, e.g. ray://127.0.0.1:10001 (with --task-runner ray)",
    )
