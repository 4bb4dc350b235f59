"""Child flow runs: their names, their final states and the cut of a group (no server)."""

from __future__ import annotations

import pytest

from prefect_fanout.call.window import CallOutcome
from prefect_fanout.engine.child_runs import DEFAULT_RUN_CALLS, child_run_name, group_state
from prefect_fanout.engine.chunks import cut_chunks
from prefect_fanout.errors import AgentCallError, BudgetExhausted

pytestmark = pytest.mark.unit


def ok(key: str) -> CallOutcome[str]:
    return CallOutcome(key, None, None)


def failed(key: str) -> CallOutcome[str]:
    return CallOutcome(key, None, AgentCallError("boom"))


def test_a_group_of_one_run_keeps_its_name_and_parts_are_numbered() -> None:
    assert child_run_name("partition 2024-01", 1, 1) == "partition 2024-01"
    assert child_run_name("partition 2024-01", 2, 3) == "partition 2024-01 (2/3)"


def test_a_partition_over_the_bound_is_cut_into_runs_under_it() -> None:
    items = list(range(2 * DEFAULT_RUN_CALLS + 1))
    runs = cut_chunks(items, DEFAULT_RUN_CALLS)
    assert len(runs) == 3 and max(len(run) for run in runs) <= DEFAULT_RUN_CALLS
    assert [item for run in runs for item in run] == items  # every item once, in order
    assert DEFAULT_RUN_CALLS + 1 < 10_000  # a run's calls and its write fit a default graph


def test_states_by_outcomes() -> None:
    done = group_state([ok("a"), ok("b")], 2)
    assert (done.type.value, done.name) == ("COMPLETED", "Completed")
    some = group_state([ok("a"), failed("b")], 2)
    assert (some.type.value, some.name, some.message) == (
        "COMPLETED",
        "Partial",
        "1 of 2 calls failed",
    )
    every = group_state([failed("a"), failed("b")], 2)
    assert (every.type.value, every.message) == ("FAILED", "all 2 calls failed")
    budget = CallOutcome("c", None, BudgetExhausted("budget of 10 tokens reached"))
    skipped = group_state([ok("a"), budget], 3)  # one over budget, one never started
    assert (skipped.name, skipped.message) == ("Partial", "2 not made")


def test_the_table_artifact_shows_at_most_its_rows_failures_first() -> None:
    from prefect_fanout.ui.artifacts import shown_in_table
    from prefect_fanout.usage import CallRecord

    records = [
        CallRecord(id=str(n), agent="a", status="failed" if n % 1000 == 999 else "completed")
        for n in range(12_000)
    ]
    shown = shown_in_table(records, most=5000)
    assert len(shown) == 5000
    assert [r.id for r in shown[:12]] == [str(n) for n in range(999, 12_000, 1000)]
    assert [r.id for r in shown[12:15]] == ["0", "1", "2"]
    assert shown_in_table(records[:10], most=5000) == records[:10]
