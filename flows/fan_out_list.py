"""Fan-out over a list: one call per topic, two agents taken round robin.

    FANOUT_MODEL=test python flows/fan_out_list.py

The pattern's own flow run (``fanout-fan-out``) is a subflow of this one; its
summary artifact shows the run's metrics (speedup, parallelism factor, success
rate, cost multiplier, whether parallel was worth it). stdout gets the result JSON.
"""

from __future__ import annotations

import sys

from prefect import flow

from prefect_fanout import AgentProfile, PatternResult, fan_out
from prefect_fanout.options import RunOptions, merge_options

TOPICS = ["event sourcing", "CRDTs", "consistent hashing", "backpressure", "idempotency keys"]
AGENTS = {
    "explainer": AgentProfile(name="explainer", system_prompt="Explain the topic in 3 sentences."),
    "analogist": AgentProfile(name="analogist", system_prompt="Explain the topic by analogy."),
}


@flow(name="fan-out-list", log_prints=False)
def fan_out_list(topics: list[str] = TOPICS, options: RunOptions | None = None) -> PatternResult:
    """Explain every topic in parallel, alternating between two agents.

    Args:
        topics: The topics.
        options: The run's options (model, max_workers, endpoint, ...; ``model="test"``
            runs offline); max_workers defaults to 4 here.

    Returns:
        The fan-out's result (outputs in topic order, calls, metrics).
    """
    return fan_out(
        topics,
        agent=["explainer", "analogist"],
        agents=AGENTS,
        prompt="Topic: {item}",
        options=merge_options(options, {"max_workers": 4}),
    )


if __name__ == "__main__":
    result = fan_out_list()
    print(result.model_dump_json(indent=2))
    sys.exit(0 if result.status != "failed" else 1)
