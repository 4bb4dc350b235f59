"""Run a plan file as a ``fanout-dispatch`` flow run from the shell.

    python flows/dispatch_plan.py examples/01_parallel_generation.json --model test

The flow itself is the library's ``fanout-dispatch`` (``prefect_fanout.dispatch_flow``);
``deployments/prefect.yaml`` deploys it by its entrypoint
``prefect_fanout/flows.py:dispatch_flow`` with the plan's path as the ``plan``
parameter. The result JSON (the same as ``fanout dispatch``) goes to stdout.
"""

from __future__ import annotations

import argparse
import sys

from prefect_fanout import FanoutError, RunOptions, dispatch_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a plan file as a fanout-dispatch flow run.")
    parser.add_argument("plan_path")
    parser.add_argument("--model")
    parser.add_argument("--max-workers", type=int)
    parser.add_argument("--failure-policy", choices=("partial", "all_or_nothing"))
    parser.add_argument("--trace-dir")
    parser.add_argument("--endpoint")
    parser.add_argument("--cache", choices=("on", "refresh", "off"))
    args = parser.parse_args(argv)
    fields = vars(args)
    path = fields.pop("plan_path")
    try:
        result = dispatch_plan(path, options=RunOptions.of(fields))
    except FanoutError as exc:
        print(f"dispatch_plan: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(result.model_dump_json(indent=2))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
