"""Section-summary tree: split a long document into sections, summarise leaves, merge upward.

    FANOUT_MODEL=test python flows/section_summary_tree.py

The split is a plain Python function (halve the paragraphs until one is left,
down to ``max_depth``); leaves are summarised by the ``summarizer`` agent in
parallel; the ``merger`` agent combines sibling summaries up to the root. The
task runs are named by node path (``split:0.1``, ``summarizer:solve:0.1.0``,
``merger:combine:0``), so the flow run's task list shows the tree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from prefect_fanout import AgentProfile, PatternResult, tree
from prefect_fanout.options import RunOptions, merge_options

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = "\n\n".join(
    path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "examples" / "corpus").rglob("*.md"))
)
AGENTS = {
    "summarizer": AgentProfile(name="summarizer", system_prompt="Summarise this section briefly."),
    "merger": AgentProfile(name="merger", system_prompt="Merge the section summaries into one."),
}


def halve(section: str) -> list[str]:
    """Split a section's paragraphs into two halves; one paragraph is a leaf."""
    paragraphs = [p for p in section.split("\n\n") if p.strip()]
    if len(paragraphs) <= 1:
        return []
    middle = len(paragraphs) // 2
    return ["\n\n".join(paragraphs[:middle]), "\n\n".join(paragraphs[middle:])]


@flow(name="section-summary-tree", log_prints=False)
def section_summary_tree(
    document: str = DOCUMENT, max_depth: int = 3, options: RunOptions | None = None
) -> PatternResult:
    """Summarise a document as a tree of section summaries.

    Args:
        document: The text (paragraphs separated by blank lines).
        max_depth: The deepest level of the tree.
        options: The run's options (model, max_workers, endpoint, ...; ``model="test"``
            runs offline); max_workers defaults to 4 here.

    Returns:
        The tree's result; ``output`` is the document's summary.
    """
    return tree(
        document,
        split=halve,
        solve="summarizer",
        combine="merger",
        max_depth=max_depth,
        agents=AGENTS,
        options=merge_options(options, {"max_workers": 4}),
    )


if __name__ == "__main__":
    result = section_summary_tree()
    print(result.model_dump_json(indent=2))
    sys.exit(0 if result.status != "failed" else 1)
