"""What a map run reports: ``summary.json`` as pydantic models, and its usage figures."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from prefect_fanout.batch.report import BatchReport
from prefect_fanout.budget.report import BudgetReport
from prefect_fanout.usage import Ledger

__all__ = ["MapSummary", "PartitionReport", "ReduceReport"]


class PartitionReport(BaseModel):
    """One partition: its items, their outcome and its output file.

    Attributes:
        key: The partition key (e.g. ``2024-01``, ``0003`` or a topic).
        file: Its output, relative to the output directory; None when dead-lettered.
        items: Items in the partition.
        completed: Items whose call completed.
        failed: Items whose call failed (recorded in the file with their error).
        skipped: Items not asked because the run's budget was reached (``skipped: budget``).
        cached: Completed items answered from the cache.
        dead_letter: Items listed as dead letters because the partition failed.
        status: ``written`` or ``dead_letter``.
        attempts: Attempts at writing the partition's output.
        error: Why the partition failed, when it did.

    """

    key: str
    file: str | None
    items: int
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    cached: int = 0
    dead_letter: int = 0
    status: Literal["written", "dead_letter"] = "written"
    attempts: int = 0
    error: str | None = None


class ReduceReport(BaseModel):
    """The LLM tree reduce as the summary reports it (the answer is in ``reduce.json``).

    Attributes:
        agent: The reducing agent.
        status: ``completed``, ``failed`` or ``skipped`` (no completed outputs).
        inputs: Completed outputs it combined.
        levels: Levels of the tree that made calls.
        calls: Reduce calls made (cache hits included).
        cached: Reduce calls answered from the cache.
        token_budget: Estimated tokens (chars / 4) one call may combine.
        file: ``reduce.json``, relative to the output directory.
        error: Why it failed, when it did.

    """

    agent: str
    status: Literal["completed", "failed", "skipped"]
    inputs: int
    levels: int = 0
    calls: int = 0
    cached: int = 0
    token_budget: int
    file: str = "reduce.json"
    error: str | None = None


class MapSummary(BaseModel):
    """The outcome of a map run, written to ``summary.json`` and printed by ``fanout map``.

    Attributes:
        flow_run_id: The Prefect flow run that did the work, when there was one.
        source: The corpus (a path) or a description of the items given.
        agent: The mapping agent.
        model: The model of the mapping calls.
        partition_spec: How items were partitioned.
        output_dir: Where the outputs are.
        total: Items in the corpus.
        completed: Items whose call completed and whose partition was written.
        failed: Items whose call failed.
        dead_letter: Items of partitions that failed as a whole.
        skipped: Items not asked because the budget was reached (rerun with a larger one).
        cached: Items answered from the cache (this run paid nothing for them).
        partitions: Per-partition counts, in key order.
        failed_ids: Ids of the failed items, in input order.
        dead_letter_ids: Ids of the dead-lettered items, in input order.
        skipped_ids: Ids of the items skipped for the budget, in input order.
        usage: Calls, tokens and cost by stage (``classify``, ``map``, ``reduce``).
        cost_usd: What this run paid in total; None when a price is unknown.
        duration_s: Wall time of the whole run.
        map_duration_s: Wall time of the map stage.
        items_per_second: ``total / map_duration_s``.
        max_workers: The bound on calls in flight.
        concurrency_reached: The most calls in flight at once, as measured.
        reduce: The tree reduce, when one was asked for.
        files: Output files by role, relative to the output directory.
        replaced: Files of an earlier run this run replaced (atomically, with complete
            new content), relative to the output directory.
        kept: Partition files of an earlier run that this run did not write; a run never
            deletes outputs of items it did not process.
        limit_wait_s: Per endpoint (base URL), the seconds this run's calls waited for
            its limits (see :mod:`prefect_fanout.limits`).
        recording_wait_s: Seconds new calls waited for the Prefect server to record
            the run's finished task runs (see :mod:`prefect_fanout.call.recording`).
        unstored: Answers this run got but could not store in result storage (e.g. a
            full disk): they are in the outputs, and a rerun asks for them again.
        unstored_ids: Their ids, in input order.
        missing_outputs: Output files that could not be written (name -> reason); the
            previous version of each, if any, is left as it was.
        batch: Batch mode's figures (batches, calls answered by batch and sent online,
            cost against online), when the run used ``batch``.
        budget: The run's budget (limits, spent, left, whether it stopped the run);
            None without one.

    """

    flow_run_id: str | None = None
    source: str
    agent: str
    model: str
    partition_spec: str
    output_dir: str
    total: int
    completed: int
    failed: int
    dead_letter: int
    skipped: int = 0
    cached: int
    partitions: list[PartitionReport]
    failed_ids: list[str] = Field(default_factory=list)
    dead_letter_ids: list[str] = Field(default_factory=list)
    skipped_ids: list[str] = Field(default_factory=list)
    usage: dict[str, Ledger]
    cost_usd: float | None
    duration_s: float
    map_duration_s: float
    items_per_second: float
    max_workers: int
    concurrency_reached: int
    reduce: ReduceReport | None = None
    files: dict[str, str]
    replaced: list[str] = Field(default_factory=list)
    kept: list[str] = Field(default_factory=list)
    limit_wait_s: dict[str, float] = Field(default_factory=dict)
    recording_wait_s: float = 0.0
    unstored: int = 0
    unstored_ids: list[str] = Field(default_factory=list)
    missing_outputs: dict[str, str] = Field(default_factory=dict)
    batch: BatchReport | None = None
    budget: BudgetReport | None = None

    @property
    def ok(self) -> bool:
        """True when all went well: every item completed and stored, every output written.

        The reduce, if asked for, must not have failed either.
        """
        reduce_ok = self.reduce is None or self.reduce.status != "failed"
        written = self.unstored == 0 and not self.missing_outputs
        return (
            self.failed == 0
            and self.dead_letter == 0
            and self.skipped == 0
            and reduce_ok
            and written
        )

    def problem_line(self) -> str:
        """One line for stderr saying what went wrong (empty when nothing did)."""
        parts = [f"{self.failed} failed, {self.dead_letter} dead-lettered of {self.total} items"]
        if self.unstored:
            parts.append(f"{self.unstored} answer(s) not stored in result storage")
        if self.missing_outputs:
            parts.append("not written: " + ", ".join(self.missing_outputs))
        if self.reduce is not None and self.reduce.status == "failed":
            parts.append("the reduce failed")
        return "; ".join(parts) + f"; see {self.output_dir}"

    @property
    def budget_reached(self) -> bool:
        """True when the budget stopped the run (some items were not asked)."""
        return self.budget is not None and self.budget.reached
