"""``fanout call PROMPT``: one agent call through the agent-call task, in a flow run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefect_fanout.cli.argtypes import one_line
from prefect_fanout.cli.options_args import add_run_option_arguments, run_options
from prefect_fanout.cli.summary import run_place, say
from prefect_fanout.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def add_parser(subparsers: Any) -> None:
    """Register the ``call`` command."""
    parser = subparsers.add_parser(
        "call",
        help="make one agent call and print the answer",
        description="Make one agent call as a Prefect task run (inside a flow run).",
    )
    parser.add_argument("prompt", help="the user prompt ('-' reads it from stdin)")
    parser.add_argument("--agent", default="default", help="agent name (default: default)")
    parser.add_argument("--system", help="system prompt overriding the agent's")
    parser.add_argument(
        "--json", action="store_true", help="print the AgentResult as JSON instead of the answer"
    )
    add_run_option_arguments(parser, workers_help="", runner=False)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``fanout call``."""
    from prefect_fanout.agents.resolver import Resolver
    from prefect_fanout.errors import ConfigurationError, FanoutError, describe, exit_code_for
    from prefect_fanout.flows import call_flow
    from prefect_fanout.shipped.reporting import INLINE_PARAMETER_BYTES, stash
    from prefect_fanout.textcheck import prompt_problem

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if problem := prompt_problem(prompt):  # empty or unencodable prompt, exit 2
        print(f"fanout call: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = run_options(args)
        Resolver(options).check([args.agent])
    except ConfigurationError as exc:
        print(f"fanout call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    inline = len(prompt.encode("utf-8")) <= INLINE_PARAMETER_BYTES
    try:
        state = call_flow(
            prompt=prompt if inline else None,
            prompt_path=None if inline else stash(prompt, ".prompt.txt"),
            agent=args.agent,
            system=args.system,
            options=options,
            return_state=True,
        )
        result = state.result(raise_on_failure=True)
    except ConfigurationError as exc:
        print(f"fanout call: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except FanoutError as exc:
        print(f"fanout call: failed: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except Exception as exc:  # the flow failed for another reason (e.g. no Prefect API)
        print(f"fanout call: failed: {one_line(describe(exc))}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(result.model_dump_json(indent=2))
    elif isinstance(result.output, str):
        print(result.output)
    else:
        print(json.dumps(result.model_dump(mode="json")["output"], indent=2))
    sys.stdout.flush()
    say("call", _summary_line(args.agent, result, state.state_details.flow_run_id))
    return EXIT_OK


def _summary_line(agent: str, result: Any, flow_run_id: object) -> str:
    """``done: agent A, model M, P+C tokens, cost, cached or attempts; flow run LINK``."""
    cost = "cost unknown" if result.cost_usd is None else f"${result.cost_usd:.6f}"
    how = "from the cache" if result.cached else f"{result.attempts} attempt(s)"
    tokens = f"{result.prompt_tokens}+{result.completion_tokens} tokens"
    where = run_place(flow_run_id)
    return f"done: agent {agent}, model {result.model}, {tokens}, {cost}, {how}" + (
        f"; {where}" if where else ""
    )
