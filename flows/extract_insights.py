"""Extract insights from a folder of dated notes, month by month, and merge them.

The notes in examples/corpus (YYYY/MM/*.md) are partitioned by month; the
`extractor` agent of examples/agents.json turns each note into structured
insights (topics, summary, sentiment, action items); each month is written to
its own partition file, all of them are merged into final.jsonl, and the
`digest` agent combines everything into one digest (reduce.json).

Run it offline with the built-in test model:

    FANOUT_MODEL=test python flows/extract_insights.py

or against a real endpoint (OPENAI_API_KEY, optionally OPENAI_BASE_URL):

    python flows/extract_insights.py --output out/insights

Run it again and every answer comes from the cache: nothing is paid twice, and
a run that was interrupted picks up where it stopped. stdout carries a short
report; Prefect's logs go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_fanout import FanoutError, MapSummary, RunOptions, load_agents_file, map_corpus
from prefect_fanout.cli.console import command_console
from prefect_fanout.cli.settle import let_temporary_server_finish
from prefect_fanout.cli.summary import run_place
from prefect_fanout.cli.tuning import tune_embedded_server
from prefect_fanout.options import merge_options

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "examples" / "corpus"
AGENTS = ROOT / "examples" / "agents.json"
OUTPUT = Path("out") / "insights"
MAX_WORKERS = 8


def _options(
    corpus: str, output_dir: str, agents_file: str, digest: bool, options: RunOptions | None
):
    return {
        "items_or_path": corpus,
        "agent": "extractor",
        "agents": load_agents_file(agents_file),
        "partition": "time:month",
        "output_dir": output_dir,
        "reduce": "digest" if digest else None,
        "options": merge_options(options, {"max_workers": MAX_WORKERS}),
    }


@flow(
    name="extract-insights",
    log_prints=False,
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS),
)
def extract_insights(
    corpus: str = str(CORPUS),
    output_dir: str = str(OUTPUT),
    agents_file: str = str(AGENTS),
    digest: bool = True,
    options: RunOptions | None = None,
) -> MapSummary:
    """Map the extractor over the notes by month, merge, and digest the insights.

    ``options`` are the run's options (max_workers defaults to 8 here).
    """
    settings = _options(corpus, output_dir, agents_file, digest, options)
    return map_corpus(settings.pop("items_or_path"), **settings)


def report(summary: MapSummary) -> str:
    """A short, readable account of a run for the terminal."""
    out = Path(summary.output_dir)
    months = ", ".join(f"{p.key} ({p.items})" for p in summary.partitions)
    cost = "unknown" if summary.cost_usd is None else f"${summary.cost_usd:.4f}"
    lines = [
        f"Extracted insights from {summary.total} notes in {summary.source}",
        f"  partitions  {len(summary.partitions)} by month: {months}",
        f"  items       {summary.completed} completed, {summary.failed} failed, "
        f"{summary.dead_letter} dead letters, {summary.cached} from cache",
        f"  cost        {cost} with model {summary.model}; {summary.duration_s:.1f} s, "
        f"{summary.items_per_second:.1f} notes/s, "
        f"up to {summary.concurrency_reached} calls at once",
    ]
    if summary.reduce is not None:
        lines.append(
            f"  digest      {summary.reduce.status}: {summary.reduce.inputs} insights combined in "
            f"{summary.reduce.levels} level(s), {summary.reduce.calls} call(s)"
        )
    lines += [
        f"Outputs in {out}/",
        "  final.jsonl         one line per note: id, partition (month), status, output",
        f"  partitions/         {len(summary.partitions)} files, partition-YYYY-MM.jsonl",
        "  summary.json        counts, usage, cost and timings",
        f"  dead_letters.jsonl  {summary.dead_letter} notes for manual review",
    ]
    if summary.reduce is not None:
        lines.append("  reduce.json         the digest of all notes")
    if summary.failed_ids or summary.dead_letter_ids:
        lines.append(f"Not completed: {', '.join(summary.failed_ids + summary.dead_letter_ids)}")
    where = run_place(summary.flow_run_id)
    if where:
        lines.append(f"The run in the Prefect UI: {where}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the flow from the command line and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", default=str(CORPUS), help="folder of dated notes")
    parser.add_argument("--output", default=str(OUTPUT), help="output directory")
    parser.add_argument("--agents", default=str(AGENTS), help="agent profiles (JSON or YAML)")
    parser.add_argument("--no-digest", action="store_true", help="skip the combined digest")
    parser.add_argument("--max-workers", type=int, default=MAX_WORKERS, help="calls at once")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also show the embedded server's own logs"
    )
    args = parser.parse_args(argv)
    tune_embedded_server(quiet=not args.verbose)  # before the embedded server starts
    try:  # bad input or a missing endpoint is found before any call is made
        # Prefect's console prints through Rich, which would read an id like `a` in `:a:`
        # as an emoji code: the run's lines print as they are.
        with command_console(verbose=True, restore=False):
            summary = _run(args)
    except FanoutError as exc:
        print(f"extract_insights: error: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:  # a quiet exit: the temporary server records the run before it is stopped
        let_temporary_server_finish()
    print(report(summary))
    return 0 if summary.ok else 1


def _run(args: argparse.Namespace) -> Any:
    """The flow, with the command line's arguments."""
    return extract_insights(
        corpus=args.corpus,
        output_dir=args.output,
        agents_file=args.agents,
        digest=not args.no_digest,
        options=RunOptions(max_workers=args.max_workers),
    )


if __name__ == "__main__":
    sys.exit(main())
