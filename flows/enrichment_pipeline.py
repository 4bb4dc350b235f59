"""Enrichment pipeline: validate, then three enrichers in parallel, then combine.

    FANOUT_MODEL=test python flows/enrichment_pipeline.py

Stage 2's three calls run at the same time, each given the validator's output;
the combiner gets all three enrichments.
"""

from __future__ import annotations

import sys

from prefect import flow

from prefect_fanout import AgentProfile, PatternResult, pipeline
from prefect_fanout.options import RunOptions, merge_options

RECORD = "ACME Corp, 1 Main St, Springfield; sells industrial anvils; founded 1949."
AGENTS = {
    "validator": AgentProfile(name="validator", system_prompt="Check and normalise the record."),
    "geo": AgentProfile(name="geo", system_prompt="Add location details to the record."),
    "industry": AgentProfile(name="industry", system_prompt="Classify the record's industry."),
    "risk": AgentProfile(name="risk", system_prompt="Assess the record's business risks."),
    "combiner": AgentProfile(name="combiner", system_prompt="Merge the enrichments into one."),
}


@flow(name="enrichment-pipeline", log_prints=False)
def enrichment_pipeline(record: str = RECORD, options: RunOptions | None = None) -> PatternResult:
    """Validate a record, enrich it three ways in parallel, and combine the enrichments.

    Args:
        record: The record to enrich.
        options: The run's options (model, max_workers, endpoint, ...; ``model="test"``
            runs offline); max_workers defaults to 3 here.

    Returns:
        The pipeline's result; ``output`` is the combined record.
    """
    return pipeline(
        record,
        ["validator", ["geo", "industry", "risk"], "combiner"],
        agents=AGENTS,
        options=merge_options(options, {"max_workers": 3}),
    )


if __name__ == "__main__":
    result = enrichment_pipeline()
    print(result.model_dump_json(indent=2))
    sys.exit(0 if result.status != "failed" else 1)
