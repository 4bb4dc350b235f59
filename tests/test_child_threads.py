"""A child run's thread outlives its reported end; it is joined before the process exits."""

from __future__ import annotations

import threading

import pytest
from prefect import flow
from prefect.states import Completed

from prefect_fanout.engine.child_runs import (
    child_threads_joined_at_end,
    join_ended_children_of_this_run,
    run_as_child,
)

pytestmark = pytest.mark.usefixtures("prefect_server")


def _child_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "fanout-child"]


@flow
def _parent(children: int) -> list[threading.Thread]:
    for number in range(children):
        child = run_as_child(f"child {number}", 0, lambda: Completed(), threads=1)
        assert child.error is None and not child.in_parent, child.why()
    seen = _child_threads()
    join_ended_children_of_this_run()  # what a map and a pattern do before their run ends
    return seen


def test_a_flow_called_from_python_joins_its_children_before_its_run_ends():
    seen = _parent(2)
    assert not [thread for thread in seen if thread.is_alive()]


def test_in_the_commands_block_the_children_are_joined_at_its_end():
    with child_threads_joined_at_end():
        seen = _parent(2)
        after_run = [thread for thread in seen if thread.is_alive()]  # may be left running
    assert not [thread for thread in seen + after_run if thread.is_alive()]
