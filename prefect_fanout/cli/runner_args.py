"""``--task-runner``, ``--dask-address``, ``--ray-address`` (map and dispatch); the map's chunks."""

from __future__ import annotations

import argparse

from prefect_fanout.cli.argtypes import positive_int
from prefect_fanout.runners import TASK_RUNNERS


def add_runner_arguments(parser: argparse.ArgumentParser, *, chunks: bool = True) -> None:
    """Add the task runner options to a command's parser.

    Args:
        parser: The command's parser.
        chunks: Add ``--chunk-size`` and ``--partition-deployment`` (a map's: a plan's
            tasks are submitted one by one).
    """
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
    if not chunks:
        return
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        metavar="N",
        help="with --task-runner dask or ray: the most calls of a map sent to a worker as one "
        "chunk (default: the calls over four chunks per worker slot, 50 to 500)",
    )
    parser.add_argument(
        "--calls-per-run",
        type=positive_int,
        metavar="N",
        help="the most calls in one partition's flow run; a larger partition runs as several "
        "(default 5000, under the server's graph limit of 10000 nodes; 1900 or less: the UI "
        "draws each graph without a click)",
    )
    parser.add_argument(
        "--partition-deployment",
        metavar="FLOW/DEPLOYMENT",
        help="map: run each chunk as a flow run of this deployed fanout-partition flow "
        "(e.g. fanout-partition/partition), on its work pool's workers",
    )
