"""A ready-to-run ``fanout-dispatch`` flow that takes a plan file's path (for deployments).

Run it once from the shell::

    python flows/dispatch_plan.py examples/01_parallel_generation.json --model test

or deploy it, e.g. ``prefect deploy flows/dispatch_plan.py:dispatch_plan_file``
(or ``flow.from_source(...).deploy(...)``) and start runs with the plan path as
a parameter. The plan is validated on the machine that runs the flow; an
invalid plan or a missing endpoint fails the flow run before any call is made.
The flow run ends Completed, Partial or Failed and returns the dispatch result
(the same JSON as ``fanout dispatch``).
"""

from __future__ import annotations

import argparse
import sys

from prefect import flow

from prefect_fanout.dispatch.run import (
    DISPATCH_FLOW_NAME,
    check_endpoint,
    final_state,
    result_of,
    run_plan,
    with_overrides,
)
from prefect_fanout.plan.agents import load_dispatch_plan


@flow(name=DISPATCH_FLOW_NAME, log_prints=False)
def dispatch_plan_file(
    plan_path: str,
    model: str | None = None,
    max_workers: int | None = None,
    failure_policy: str | None = None,
    trace_dir: str | None = None,
    endpoint: str | None = None,
    cache: str = "on",
):
    """Load, validate and run the plan at ``plan_path`` as this flow run.

    Args:
        plan_path: Path of a JSON or YAML plan, on the machine running the flow.
        model: A model for every agent (``test`` runs offline).
        max_workers: Most tasks in flight; overrides the plan's.
        failure_policy: ``partial`` or ``all_or_nothing``; overrides the plan's.
        trace_dir: Where to write trace files; overrides the plan's.
        endpoint: Name of a saved LLMEndpoint block; None uses the plan's, then OPENAI_*.
        cache: ``on``, ``refresh`` or ``off``.
    """
    plan = load_dispatch_plan(plan_path)
    plan = with_overrides(
        plan, max_workers=max_workers, failure_policy=failure_policy, trace_dir=trace_dir
    )
    check_endpoint(plan, model, endpoint)
    return final_state(run_plan(plan, model=model, endpoint=endpoint, cache=cache))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a plan file as a fanout-dispatch flow run.")
    parser.add_argument("plan_path")
    parser.add_argument("--model")
    parser.add_argument("--max-workers", type=int)
    parser.add_argument("--failure-policy", choices=("partial", "all_or_nothing"))
    parser.add_argument("--trace-dir")
    parser.add_argument("--endpoint")
    parser.add_argument("--cache", choices=("on", "refresh", "off"), default="on")
    args = parser.parse_args(argv)
    state = dispatch_plan_file(**vars(args), return_state=True)
    result = result_of(state)
    print(result.model_dump_json(indent=2))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
