"""``fanout map INPUT``: map a corpus over an agent in partitions, merge, optionally reduce.

stdout carries the summary JSON only (with ``--json`` or when stdout is not a terminal:
:mod:`prefect_fanout.cli.summary`); the one-line summary and problems go to stderr. Exit 0
when every item completed, 1 when some failed or were dead-lettered (or the
reduce failed), 2 for bad input, usage or configuration, found before the flow
run starts.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect_fanout.cli.argtypes import (
    non_negative_float,
    non_negative_int,
    one_line,
    positive_int,
)
from prefect_fanout.cli.dryrun import print_dry_run
from prefect_fanout.cli.options_args import add_run_option_arguments, run_options
from prefect_fanout.cli.summary import json_wanted, run_place, say
from prefect_fanout.errors import EXIT_BUDGET, EXIT_FAILED, EXIT_OK, EXIT_USAGE

PROG = "fanout map"


def add_parser(subparsers: Any) -> None:
    """Register the ``map`` command."""
    from prefect_fanout.mapping.defaults import (
        DEFAULT_ACTIVE_PARTITIONS,
        DEFAULT_MAX_WORKERS,
        DEFAULT_PARTITION_RETRIES,
        DEFAULT_PARTITION_RETRY_DELAY,
        DEFAULT_REDUCE_BUDGET,
    )

    parser = subparsers.add_parser(
        "map",
        help="map a corpus over an agent in partitions and merge the outputs",
        description=(
            "Run an agent over every item of a corpus (a JSONL file with ids, or a directory "
            "of files), split into partitions mapped in parallel as a Prefect flow run. Each "
            "partition writes partitions/partition-KEY.jsonl; the merge writes final.jsonl, "
            "dead_letters.jsonl and summary.json (also printed). Rerunning the same command "
            "resumes: only items with no cached answer are called again."
        ),
        epilog="Exit codes: 0 all items completed (or a dry run); 1 some failed or were "
        "dead-lettered; 2 bad input, usage or configuration; 3 the budget was reached (the "
        "rest is 'skipped: budget'; rerun with a larger one). Reference: docs/map.md",
    )
    parser.add_argument(
        "input", help="a JSONL file (one object with an 'id' per line) or a directory"
    )
    parser.add_argument("--agent", required=True, help="the agent run on every item")
    parser.add_argument("--agents", metavar="FILE", help="JSON/YAML file of agent profiles by name")
    parser.add_argument(
        "--partition",
        required=True,
        metavar="SPEC",
        help="count:N | size[:K] | time:month|day|year[:FIELD] | topic:FIELD | "
        "topic:agent=NAME | key:FIELD",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--prompt",
        metavar="TEMPLATE",
        help="render record fields into the prompt, e.g. 'Summarise {title}: {body}'",
    )
    parser.add_argument("--reduce", metavar="AGENT", help="combine the outputs with this agent")
    parser.add_argument(
        "--reduce-budget",
        type=positive_int,
        default=DEFAULT_REDUCE_BUDGET,
        metavar="TOKENS",
        help=f"estimated tokens (chars/4) per reduce call (default {DEFAULT_REDUCE_BUDGET})",
    )
    parser.add_argument(
        "--active-partitions",
        type=positive_int,
        default=DEFAULT_ACTIVE_PARTITIONS,
        metavar="N",
        help=f"partitions mapped at once (default {DEFAULT_ACTIVE_PARTITIONS})",
    )
    parser.add_argument(
        "--partition-retries",
        type=non_negative_int,
        default=DEFAULT_PARTITION_RETRIES,
        metavar="N",
        help=f"retries of a partition whose output fails (default {DEFAULT_PARTITION_RETRIES})",
    )
    parser.add_argument(
        "--retry-delay",
        type=non_negative_float,
        default=DEFAULT_PARTITION_RETRY_DELAY,
        metavar="SECONDS",
        help="first partition retry delay, doubling each time "
        f"(default {DEFAULT_PARTITION_RETRY_DELAY})",
    )
    parser.add_argument(
        "--encoding", default="utf-8", help="encoding of a directory's files (default utf-8)"
    )
    parser.add_argument(
        "--errors",
        default="strict",
        choices=("strict", "replace", "ignore"),
        help="a file that does not decode: strict = exit 2 naming it (default), "
        "replace = U+FFFD for bad bytes, ignore = drop them",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into an --output directory that holds files fanout did not write: files "
        "named like its outputs are replaced, nothing else is changed or deleted (never "
        "overrides an input inside the output or another run writing there)",
    )
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read links in a directory corpus that point outside it (default: refused)",
    )
    add_run_option_arguments(
        parser,
        workers_help=f"agent calls in flight at most (default {DEFAULT_MAX_WORKERS})",
        batch=True,
        costs=True,
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``fanout map``."""
    from prefect_fanout.errors import FanoutError, describe, exit_code_for
    from prefect_fanout.mapping.job import prepare_map
    from prefect_fanout.mapping.spec import MapSpec
    from prefect_fanout.shipped.map import run_map_flow

    try:
        options = run_options(args)
        spec = MapSpec(
            input=args.input,
            agent=args.agent,
            agents_file=args.agents,
            partition=args.partition,
            output_dir=args.output,
            prompt=args.prompt,
            reduce=args.reduce,
            reduce_budget=args.reduce_budget,
            active_partitions=args.active_partitions,
            partition_retries=args.partition_retries,
            partition_retry_delay=args.retry_delay,
            encoding=args.encoding,
            errors=args.errors,
            force=args.force,
            follow_symlinks=args.follow_symlinks,
        )
        job = prepare_map(spec, options)
        if options.dry_run:
            from prefect_fanout.mapping.dryrun import dry_run_map

            return print_dry_run(dry_run_map(job), as_json=args.json)
    except FanoutError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    try:
        summary = run_map_flow(job)
    except FanoutError as exc:
        if exit_code_for(exc) == EXIT_USAGE:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{PROG}: failed: {one_line(describe(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # the flow run ended early; its logs say more
        print(f"{PROG}: failed: {one_line(describe(exc))}", file=sys.stderr)
        return EXIT_FAILED
    if json_wanted(args.json):
        print(summary.model_dump_json(indent=2), flush=True)
    say("map", _summary_line(summary))
    if summary.budget_reached and summary.budget is not None:
        print(f"{PROG}: {summary.budget.message}; see {summary.output_dir}", file=sys.stderr)
        return EXIT_BUDGET
    if summary.batch is not None and summary.batch.pending:
        print(
            f"{PROG}: {summary.batch.pending} call(s) wait in batches at the provider; rerun "
            "the same command to collect them (nothing is sent twice)",
            file=sys.stderr,
        )
    if not summary.ok:
        print(f"{PROG}: {summary.problem_line()}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _summary_line(summary: Any) -> str:
    """``N of T items completed, F failed, ..., C cached; outputs in DIR; flow run LINK``."""
    counts = (
        f"{summary.completed} of {summary.total} items completed, {summary.failed} failed, "
        f"{summary.dead_letter} dead-lettered, {summary.skipped} skipped, {summary.cached} cached"
    )
    where = run_place(summary.flow_run_id)
    return f"{counts}; outputs in {summary.output_dir}" + (f"; {where}" if where else "")
