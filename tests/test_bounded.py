"""Best-effort work left to the command's end (bounded.py): when it runs, and that it does."""

from __future__ import annotations

import logging
import threading

import pytest

from prefect_fanout.bounded import (
    best_effort_work_joined_at_end,
    now_or_by_the_end,
    start_work_left,
)


def test_outside_the_block_the_work_runs_at_once_in_this_thread() -> None:
    ran: list[threading.Thread] = []
    now_or_by_the_end(lambda: ran.append(threading.current_thread()))
    assert ran == [threading.current_thread()]


def test_in_the_block_the_work_waits_for_the_hook_and_the_block_end_joins_it() -> None:
    ran: list[threading.Thread] = []
    release = threading.Event()

    def work(_tag: str) -> None:
        release.wait(10)  # bounded: a failing test ends
        ran.append(threading.current_thread())

    with best_effort_work_joined_at_end():
        now_or_by_the_end(work, "a")
        assert ran == []  # the run's state is not set yet
        start_work_left()  # what the flow's state hook does
        release.set()
    assert len(ran) == 1 and ran[0] is not threading.current_thread()


def test_work_no_hook_started_runs_at_the_block_end() -> None:
    ran: list[str] = []
    with best_effort_work_joined_at_end():
        now_or_by_the_end(ran.append, "left")
        assert ran == []
    assert ran == ["left"]


def test_a_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def fails() -> None:
        raise RuntimeError("the API refused it")

    with caplog.at_level(logging.WARNING, logger="prefect_fanout"):
        with best_effort_work_joined_at_end():
            now_or_by_the_end(fails)
    assert "best-effort work failed" in caplog.text
    assert "the API refused it" in caplog.text
