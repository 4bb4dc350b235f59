"""``fanout dispatch PLAN``: run a plan as one ``fanout-dispatch`` flow run.

stdout carries only the result JSON (with ``--json`` or when stdout is not a terminal,
so ``| jq`` gets it: :mod:`prefect_fanout.cli.summary`); the one-line summary goes to stderr.
Exit codes: 0 every task completed; 1 a task failed or was skipped;
2 an invalid plan, bad usage or missing configuration (nothing was run).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect_fanout.cli.argtypes import one_line
from prefect_fanout.cli.dryrun import print_dry_run
from prefect_fanout.cli.options_args import add_run_option_arguments, run_options
from prefect_fanout.cli.summary import json_wanted, run_place
from prefect_fanout.errors import EXIT_FAILED, EXIT_USAGE


def add_parser(subparsers: Any) -> None:
    """Register the ``dispatch`` command."""
    parser = subparsers.add_parser(
        "dispatch",
        help="run a plan of agent tasks as one Prefect flow run; print the result JSON",
        description=(
            "Validate a plan, then run it as a 'fanout-dispatch' flow run: independent tasks "
            "at once (up to max_workers), dependants fed with their upstream outputs. The "
            "result JSON goes to stdout (with --json, or when stdout is not a terminal)."
        ),
        epilog="Exit codes: 0 all tasks completed (or a dry run); 1 a task failed or was "
        "skipped; 2 invalid plan, usage or configuration; 3 the budget was reached (tasks not "
        "started are 'skipped: budget'; rerun with a larger one).",
    )
    parser.add_argument("plan", help="path of the plan file ('-' reads it from stdin)")
    add_run_option_arguments(
        parser,
        workers_help="most tasks in flight (default: the plan's config, else 4)",
        dispatch=True,
        costs=True,
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``fanout dispatch``."""
    from prefect_fanout.cli.validate import load_or_report
    from prefect_fanout.dispatch.run import check_plan
    from prefect_fanout.errors import ConfigurationError, describe
    from prefect_fanout.shipped.dispatch import run_dispatch_flow

    plan = load_or_report(args.plan, "dispatch")
    if plan is None:
        return EXIT_USAGE
    try:
        options = run_options(args)
        resolver = check_plan(plan, options)
        if resolver.options.dry_run:
            from prefect_fanout.dispatch.dryrun import dry_run_plan

            return print_dry_run(dry_run_plan(plan, resolver), as_json=args.json)
    except ConfigurationError as exc:
        print(f"fanout dispatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = run_dispatch_flow(plan, resolver, options)
    except ConfigurationError as exc:
        print(f"fanout dispatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the flow run crashed before producing a result
        print(f"fanout dispatch: failed: {one_line(describe(exc))}", file=sys.stderr)
        return EXIT_FAILED
    if json_wanted(args.json):
        sys.stdout.write(result.model_dump_json(indent=2) + "\n")
        sys.stdout.flush()
    summary = result.summary
    where = run_place(result.flow_run_id)
    print(
        f"fanout dispatch: {result.status}: {summary.completed} of {summary.total} completed, "
        f"{summary.failed} failed, {summary.skipped} skipped, {summary.cached} from cache"
        + (f"; traces: {result.trace_index}" if result.trace_index else "")
        + (f"; {where}" if where else ""),
        file=sys.stderr,
    )
    if result.budget_reached and result.budget is not None:
        print(f"fanout dispatch: {result.budget.message}", file=sys.stderr)
    return result.exit_code
