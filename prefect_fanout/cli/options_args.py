"""The run-option flags every command shares, and the one :class:`RunOptions` a command builds.

Each command adds the flags that apply to it (:func:`add_run_option_arguments`) and builds
its run's options once, with :func:`run_options`: the flags given, over the options file of
``--options FILE`` (options as they would be passed in Python; see README's "Run options"
table). A flag left out is unset, never a default, so it does not hide a lower layer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect_fanout.cli.argtypes import add_sampling_arguments, positive_float, positive_int
from prefect_fanout.cli.limit_args import add_limit_arguments
from prefect_fanout.cli.runner_args import add_runner_arguments
from prefect_fanout.errors import ConfigurationError

__all__ = ["add_cost_arguments", "add_run_option_arguments", "run_options"]


def add_run_option_arguments(
    parser: argparse.ArgumentParser,
    *,
    workers_help: str,
    runner: bool = True,
    dispatch: bool = False,
    batch: bool = False,
    costs: bool = False,
) -> None:
    """Add the run-option flags to a command's parser.

    Args:
        parser: The command's parser.
        workers_help: The help of ``--max-workers`` (its default differs by command).
        runner: Add ``--task-runner``, ``--dask-address`` and ``--ray-address``.
        dispatch: Add ``--failure-policy`` and ``--trace-dir``.
        batch: Add ``--batch`` and its options (README "Batch mode").
        costs: Add ``--dry-run``, ``--json``, ``--budget-tokens``, ``--budget-usd`` and
            ``--budget-name`` (see README's "Costs: estimate, budget, batch").
    """
    parser.add_argument(
        "--options",
        metavar="FILE",
        help="a JSON or YAML file of run options (the fields of RunOptions); flags win over it",
    )
    parser.add_argument("--model", help="model for every agent ('test' runs offline)")
    parser.add_argument("--endpoint", metavar="BLOCK", help="name of a saved LLMEndpoint block")
    if workers_help:
        parser.add_argument("--max-workers", type=positive_int, metavar="N", help=workers_help)
    if dispatch:
        from prefect_fanout.plan.policies import FAILURE_POLICIES

        parser.add_argument(
            "--failure-policy", choices=FAILURE_POLICIES, help="what a failure does"
        )
        parser.add_argument("--trace-dir", help="write trace files here")
    parser.add_argument(
        "--timeout",
        type=positive_float,
        metavar="SECONDS",
        help="deadline of each HTTP request (default: the endpoint's, then the agent's)",
    )
    add_sampling_arguments(parser)
    parser.add_argument(
        "--long-inputs",
        choices=("fail", "truncate", "chunk"),
        help="an input over the model's context: fail it before any request (default), "
        "truncate it to fit, or chunk it (answer overlapping chunks, combine them)",
    )
    add_limit_arguments(parser)
    parser.add_argument(
        "--log-calls",
        action="store_true",
        default=None,
        help="log a line per successful call at INFO in the run's logs (by default only "
        "failures, retries, warnings, partitions and progress are logged; calls at DEBUG)",
    )
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--refresh", action="store_true", help="ignore cached answers, call again")
    cache.add_argument(
        "--no-cache",
        action="store_true",
        help="neither read nor write the cache (a run without it cannot resume)",
    )
    if runner:
        add_runner_arguments(parser, chunks=not dispatch)  # a plan's tasks go one by one
    if costs:
        add_cost_arguments(parser)
    if batch:
        _add_batch_arguments(parser)


def add_cost_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the dry-run and budget flags."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="resolve everything, look every call up in the cache and print the calls, "
        "tokens and cost it would take, without a single request (exit 0)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the result (or a --dry-run's estimate) as JSON on stdout; without it the "
        "result JSON is printed only when stdout is not a terminal",
    )
    parser.add_argument(
        "--budget-tokens",
        type=positive_int,
        metavar="N",
        help="spend at most N tokens (prompt + completion, failed asks included); "
        "the run stops cleanly before a call that could pass it (exit 3)",
    )
    parser.add_argument(
        "--budget-usd",
        type=positive_float,
        metavar="X",
        help="spend at most X US dollars (priced models only; exit 3 when reached)",
    )
    parser.add_argument(
        "--budget-name",
        metavar="NAME",
        help="share the budget with every run of this name, on the Prefect server",
    )


def _add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """``--batch`` and the options of batch mode (README "Batch mode")."""
    group = parser.add_argument_group("batch mode (the provider's Batch API: half the price)")
    group.add_argument(
        "--batch",
        action="store_true",
        default=None,
        help="send the uncached calls as Batch API batches (answers within 24 h); "
        "failed lines go online",
    )
    group.add_argument(
        "--no-batch-wait",
        dest="batch_wait",
        action="store_false",
        default=None,
        help="submit the batches, record them and exit; the next run collects them",
    )
    group.add_argument(
        "--batch-max-tokens",
        type=positive_int,
        metavar="N",
        help="estimated prompt tokens enqueued at once at most (the provider's enqueued-token "
        "limit): batches are split to it and queued",
    )
    group.add_argument(
        "--batch-max-requests",
        type=positive_int,
        metavar="N",
        help="requests per batch file (default and most: 50000)",
    )
    group.add_argument(
        "--batch-poll-seconds",
        type=positive_float,
        metavar="S",
        help="first wait between status polls, growing 1.5x up to 300 s (default 10)",
    )


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run-option flags given, by RunOptions field name."""
    cache = None
    if getattr(args, "no_cache", False):
        cache = "off"
    elif getattr(args, "refresh", False):
        cache = "refresh"
    names = {
        "model": "model",
        "endpoint": "endpoint",
        "max_workers": "max_workers",
        "failure_policy": "failure_policy",
        "trace_dir": "trace_dir",
        "timeout_seconds": "timeout",
        "max_tokens": "max_tokens",
        "temperature": "temperature",
        "max_concurrency": "max_concurrency",
        "requests_per_minute": "rpm",
        "tokens_per_minute": "tpm",
        "task_runner": "task_runner",
        "dask_address": "dask_address",
        "ray_address": "ray_address",
        "chunk_size": "chunk_size",
        "calls_per_run": "calls_per_run",
        "partition_deployment": "partition_deployment",
        "batch": "batch",
        "batch_wait": "batch_wait",
        "batch_max_tokens": "batch_max_tokens",
        "batch_max_requests": "batch_max_requests",
        "batch_poll_seconds": "batch_poll_seconds",
        "dry_run": "dry_run",
        "budget_tokens": "budget_tokens",
        "budget_usd": "budget_usd",
        "budget_name": "budget_name",
        "long_inputs": "long_inputs",
        "log_calls": "log_calls",
    }
    flags = {field: getattr(args, attr, None) for field, attr in names.items()}
    flags["cache"] = cache
    return {field: value for field, value in flags.items() if value is not None}


def _options_file(path: str) -> dict[str, Any]:
    """The options in ``--options FILE`` (JSON, or YAML by extension).

    Raises:
        ConfigurationError: The file cannot be read or is not an object of options.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"--options {path}: {exc.strerror or exc}") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"--options {path}: not valid JSON/YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"--options {path}: expected an object of run options")
    return data


def run_options(args: argparse.Namespace) -> Any:
    """The command's run options: flags over ``--options FILE``, merged once, checked.

    The task runner choice is checked here too (an address nobody answers at, a
    missing extra), so bad input exits 2 before anything runs.

    Returns:
        The :class:`~prefect_fanout.options.RunOptions` of the run.

    Raises:
        ConfigurationError: A bad options file, option value or task runner choice; the
            message names the flag, the file or the field.
    """
    from prefect_fanout.options import merge_options

    from_file = _options_file(args.options) if getattr(args, "options", None) else None
    try:
        merged = merge_options(_flags(args), from_file)
    except ConfigurationError as exc:
        where = f"--options {args.options}: " if from_file else ""
        raise ConfigurationError(f"{where}{exc}") from None
    if hasattr(args, "task_runner"):
        from prefect_fanout.runners import check_task_runner

        check_task_runner(
            merged.runner(),
            dask_address=merged.dask_address,
            ray_address=merged.ray_address,
            cli=True,
        )
    return merged
