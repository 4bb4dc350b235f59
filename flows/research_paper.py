"""Research-paper analysis with synthesis (seed 003): typed subtasks, then one synthesis call.

    FANOUT_MODEL=test python flows/research_paper.py

The plan (examples/research_paper_subtasks.json) is in the plan-and-synthesise
form: ``task``, ``subtasks`` with types and dependencies, per-type model
settings in ``types``, and a ``synthesize`` agent that gets every subtask's
output and writes the final answer. stdout gets the dispatch result JSON.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from prefect_fanout import DispatchResult, dispatch_plan
from prefect_fanout.options import RunOptions, merge_options

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "examples" / "research_paper_subtasks.json"


@flow(name="research-paper", log_prints=False)
def research_paper(plan: str = str(PLAN), options: RunOptions | None = None) -> DispatchResult:
    """Analyse a paper section by section, critique it, then synthesise the report.

    Args:
        plan: A plan file in the ``subtasks`` (or ``tasks``) form.
        options: The run's options (model, max_workers, endpoint, ...; ``model="test"``
            runs offline); max_workers defaults to 4 here.

    Returns:
        The dispatch result; ``synthesis.output`` is the final report.
    """
    return dispatch_plan(
        plan,
        options=merge_options(options, {"max_workers": 4}),
    )


if __name__ == "__main__":
    result = research_paper()
    print(result.model_dump_json(indent=2))
    sys.exit(result.exit_code)
