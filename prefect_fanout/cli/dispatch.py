"""``fanout dispatch PLAN``: run a plan as one ``fanout-dispatch`` flow run.

stdout carries only the result JSON (for ``jq``); progress and logs go to
stderr. Exit codes: 0 every task completed; 1 a task failed or was skipped;
2 an invalid plan, bad usage or missing configuration (nothing was run).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect_fanout.cli.argtypes import add_sampling_arguments, one_line, positive_int
from prefect_fanout.cli.limit_args import add_limit_arguments, limit_options
from prefect_fanout.cli.runner_args import add_runner_arguments
from prefect_fanout.errors import EXIT_FAILED, EXIT_USAGE
from prefect_fanout.plan.policies import FAILURE_POLICIES


def add_parser(subparsers: Any) -> None:
    """Register the ``dispatch`` command."""
    parser = subparsers.add_parser(
        "dispatch",
        help="run a plan of agent tasks as one Prefect flow run; print the result JSON",
        description=(
            "Validate a plan, then run it as a 'fanout-dispatch' flow run: independent tasks "
            "at once (up to max_workers), dependants fed with their upstream outputs. The "
            "result JSON goes to stdout."
        ),
        epilog="Exit codes: 0 all tasks completed; 1 a task failed or was skipped; "
        "2 invalid plan, usage or configuration.",
    )
    parser.add_argument("plan", help="path of the plan file ('-' reads it from stdin)")
    parser.add_argument("--model", help="model for every agent ('test' runs offline)")
    parser.add_argument(
        "--max-workers", type=positive_int, help="most tasks in flight (overrides the plan)"
    )
    parser.add_argument(
        "--failure-policy",
        choices=FAILURE_POLICIES,
        help="what a failure does (overrides the plan)",
    )
    parser.add_argument("--trace-dir", help="write trace files here (overrides the plan)")
    parser.add_argument("--endpoint", help="name of a saved LLMEndpoint block")
    add_sampling_arguments(parser)
    add_limit_arguments(parser)
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--refresh", action="store_true", help="ignore cached answers, call again")
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    add_runner_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``fanout dispatch``."""
    from prefect_fanout.cli.runner_args import runner_options
    from prefect_fanout.cli.validate import load_or_report
    from prefect_fanout.dispatch.run import check_plan, with_overrides
    from prefect_fanout.errors import ConfigurationError, describe
    from prefect_fanout.flows import run_dispatch_flow

    plan = load_or_report(args.plan, "dispatch")
    if plan is None:
        return EXIT_USAGE
    try:
        plan = with_overrides(
            plan,
            max_workers=args.max_workers,
            failure_policy=args.failure_policy,
            trace_dir=args.trace_dir,
        )
        check_plan(
            plan,
            args.model,
            args.endpoint,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            limits=limit_options(args),
        )
        runner = runner_options(args)
    except ConfigurationError as exc:
        print(f"fanout dispatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    cache = "off" if args.no_cache else ("refresh" if args.refresh else "on")
    try:
        result = run_dispatch_flow(
            plan,
            model=args.model,
            endpoint=args.endpoint,
            cache=cache,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            limits=limit_options(args),
            **runner,
        )
    except ConfigurationError as exc:
        print(f"fanout dispatch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # the flow run crashed before producing a result
        print(f"fanout dispatch: failed: {one_line(describe(exc))}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(result.model_dump_json(indent=2) + "\n")
    sys.stdout.flush()
    summary = result.summary
    print(
        f"fanout dispatch: {result.status}: {summary.completed} of {summary.total} completed, "
        f"{summary.failed} failed, {summary.skipped} skipped, {summary.cached} from cache"
        + (f"; traces: {result.trace_index}" if result.trace_index else ""),
        file=sys.stderr,
    )
    return result.exit_code
