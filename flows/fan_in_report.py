"""Fan-in report: collectors read each source in parallel, one aggregator writes the report.

    FANOUT_MODEL=test python flows/fan_in_report.py

stdout gets the result JSON; the report is its ``output``.
"""

from __future__ import annotations

import sys

from prefect import flow

from prefect_fanout import AgentProfile, PatternResult, fan_in
from prefect_fanout.options import RunOptions, merge_options

SOURCES = {
    "sales": "Q3 sales rose 12% in EMEA and fell 3% in APAC.",
    "support": "Ticket volume doubled after the 4.2 release; most are about login.",
    "engineering": "The 4.2 release moved auth to a new provider; two incidents followed.",
}
AGENTS = {
    "collector": AgentProfile(
        name="collector", system_prompt="Extract the key facts of this source as bullet points."
    ),
    "reporter": AgentProfile(
        name="reporter", system_prompt="Write a one-page status report from the collected facts."
    ),
}


@flow(name="fan-in-report", log_prints=False)
def fan_in_report(
    sources: dict[str, str] = SOURCES, options: RunOptions | None = None
) -> PatternResult:
    """Collect facts from every source in parallel, then write one report from all of them.

    Args:
        sources: Source texts by name.
        options: The run's options (model, max_workers, endpoint, ...; ``model="test"``
            runs offline); max_workers defaults to 4 here.

    Returns:
        The fan-in's result; ``output`` is the report.
    """
    return fan_in(
        sources,
        collector="collector",
        aggregator="reporter",
        agents=AGENTS,
        aggregate_prompt="Write the weekly status report.",
        options=merge_options(options, {"max_workers": 4}),
    )


if __name__ == "__main__":
    result = fan_in_report()
    print(result.model_dump_json(indent=2))
    sys.exit(0 if result.status != "failed" else 1)
