"""A command's heap is frozen when its calls start and unfrozen when the command ends."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from prefect_fanout.cli import main
from prefect_fanout.engine.heap import (
    freeze_when_calls_start,
    frozen_objects,
    heap_frozen_while_calls_run,
)
from tests.map_helpers import read_jsonl, tag, write_corpus


@pytest.mark.unit
def test_each_run_of_calls_in_a_block_freezes_the_heap_and_its_end_unfreezes_it() -> None:
    assert gc.get_freeze_count() == 0
    with heap_frozen_while_calls_run():
        assert freeze_when_calls_start() is True
        first = frozen_objects()
        assert gc.get_freeze_count() > 1000 and first > 1000
        made = [[n] for n in range(5000)]  # what a run's calls keep until it ends
        assert freeze_when_calls_start() is True  # the next run of calls: frozen with them
        assert frozen_objects() >= first + len(made)
    assert gc.get_freeze_count() == 0


@pytest.mark.unit
def test_calls_outside_a_command_leave_the_collector_alone() -> None:
    assert freeze_when_calls_start() is False
    assert gc.get_freeze_count() == 0
    with heap_frozen_while_calls_run():
        pass  # a command that made no call
    assert frozen_objects() == 0 and gc.get_freeze_count() == 0


@pytest.mark.unit
def test_an_error_in_the_block_still_unfreezes() -> None:
    with pytest.raises(RuntimeError), heap_frozen_while_calls_run():
        freeze_when_calls_start()
        raise RuntimeError("the command failed")
    assert gc.get_freeze_count() == 0


@pytest.mark.server
def test_fanout_map_freezes_its_setup_while_its_calls_run(
    prefect_server: Any, tmp_path: Path
) -> None:
    run = tag()
    records = [{"id": f"{run}-{n}", "text": f"{run} {n}"} for n in range(12)]
    source = write_corpus(tmp_path / "in.jsonl", records)
    out = tmp_path / "out"
    args = ["map", str(source), "--agent", "default", "--partition", "count:2"]
    code = main([*args, "--output", str(out), "--model", "test"])
    assert code == 0
    assert frozen_objects() > 10_000  # Prefect, pydantic, openai and the job, walked no more
    assert gc.get_freeze_count() == 0  # and handed back to the collector at the end
    assert [r["id"] for r in read_jsonl(out / "final.jsonl")] == [r["id"] for r in records]
