"""``fanout validate PLAN``: check a plan without running anything.

Every problem is printed to stderr, one per line with its location, and the
exit code is 2. A valid plan prints a one-line summary on stdout and, with
``--levels``, its dependency levels and critical path.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from prefect_fanout.errors import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from prefect_fanout.plan.model import Plan


def add_parser(subparsers: Any) -> None:
    """Register the ``validate`` command."""
    parser = subparsers.add_parser(
        "validate",
        help="check a plan (JSON or YAML) and report every problem",
        description=(
            "Check a plan: structure, ids, dependencies (unknown, self, cycles), config and "
            "agents (plan 'agents', built-ins, saved AgentProfile blocks). Problems go to "
            "stderr with exit code 2."
        ),
    )
    parser.add_argument("plan", help="path of the plan file ('-' reads it from stdin)")
    parser.add_argument(
        "--levels",
        action="store_true",
        help="also print the dependency levels and the critical path",
    )
    parser.set_defaults(run=run)


def load_or_report(path: str, command: str) -> Plan | None:
    """Load and validate a plan; on problems, print every one to stderr and return None."""
    from prefect_fanout.plan.agents import load_dispatch_plan
    from prefect_fanout.plan.model import PlanValidationError

    try:
        return load_dispatch_plan(path)
    except PlanValidationError as exc:
        print(str(exc), file=sys.stderr)
        print(f"fanout {command}: {len(exc.problems)} problem(s); nothing was run", file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    """Run ``fanout validate``."""
    from prefect_fanout.plan.model import dependency_levels, format_levels

    plan = load_or_report(args.plan, "validate")
    if plan is None:
        return EXIT_USAGE
    name = "<stdin>" if args.plan == "-" else args.plan
    levels = dependency_levels(plan)
    print(f"{name}: valid plan: {len(plan.tasks)} task(s) in {len(levels)} level(s)")
    if args.levels:
        print(format_levels(plan))
    return EXIT_OK
