"""The recording guard holds new calls until the Prefect server has recorded the finished ones."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from prefect import flow, task
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_fanout.call.recording import RecordingGuard, recording_guard
from prefect_fanout.call.window import CallWindow
from prefect_fanout.engine.child_runs import run_as_child
from tests.conftest import silent_api_url

pytestmark = pytest.mark.usefixtures("prefect_server")


@task
def instant(i: int) -> int:
    return i


def test_with_no_lag_allowed_every_finished_task_run_is_recorded_before_the_next_call():
    seen: list[tuple[int, int]] = []

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def run() -> RecordingGuard:
        guard = RecordingGuard(
            FlowRunContext.get().flow_run.id, max_lag=0, resume_lag=0, check_every=1
        )
        for i in range(12):
            instant.submit(i).wait()
            guard.finished()
            seen.append((i + 1, guard.recorded()))  # what the server had when the call went on
        return guard

    guard = run()
    assert guard.active
    assert all(recorded >= finished for finished, recorded in seen), seen


def test_the_window_reports_its_finished_task_runs_to_the_flow_runs_guard():
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def run() -> tuple[int, bool, int]:
        guard = RecordingGuard(
            FlowRunContext.get().flow_run.id, max_lag=2, resume_lag=0, check_every=5
        )
        window: CallWindow[int] = CallWindow(4, guard=guard)
        for i in range(20):
            while not window.has_room:
                window.next_finished()
            window.submit(i, lambda i=i: instant.submit(i))
        while window.in_flight:
            window.next_finished()
        return guard.checks, recording_guard() is recording_guard(), guard.recorded()

    checks, same_guard, recorded = run()
    assert checks >= 4  # one read per 5 finished task runs at least
    assert same_guard
    assert recorded >= 15  # the last check (at 20 finished) left at most 2 + 4 in flight behind


def test_child_runs_report_to_their_parents_guard_which_counts_their_task_runs():
    # A map's partitions run as child flow runs: each is too small to fall behind on its own,
    # so they share the parent's guard, and its count covers the children's task runs.
    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def run() -> tuple[RecordingGuard | None, list[RecordingGuard | None], int]:
        parent_guard = recording_guard()
        seen: list[RecordingGuard | None] = []

        def body() -> None:
            for i in range(5):
                instant.submit(i).wait()
            seen.append(recording_guard())

        for number in (1, 2):
            child = run_as_child(f"child {number}", 5, body, threads=2)
            assert child.error is None and not child.in_parent, child.why()
        return parent_guard, seen, FlowRunContext.get().flow_run.id

    parent_guard, seen, parent_id = run()
    assert parent_guard is not None and parent_guard.flow_run_id == parent_id
    assert seen == [parent_guard, parent_guard]
    recorded = 0
    for _ in range(60):  # the server records from events, a second or so behind
        recorded = parent_guard.recorded()
        if recorded >= 10:
            break
        time.sleep(0.5)
    # both children's 10 calls; not the task run Prefect makes in the parent for each child
    assert recorded == 10


def test_outside_a_flow_run_there_is_no_guard():
    assert recording_guard() is None


def test_a_count_that_never_moves_stops_the_brake_instead_of_stalling(caplog):
    guard = RecordingGuard(uuid.uuid4(), max_lag=0, resume_lag=0, check_every=1, stall_seconds=1)
    with caplog.at_level(logging.WARNING, logger="prefect_fanout.recording"):
        guard.finished()  # no such flow run: the count stays 0
        guard.finished()  # the brake is off: returns at once
    assert not guard.active
    assert guard.checks >= 2
    assert "stood at 0" in caplog.text


def test_an_unreachable_server_stops_the_brake_instead_of_stalling(caplog):
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens there
        guard = RecordingGuard(uuid.uuid4(), max_lag=0, resume_lag=0, check_every=1)
        with caplog.at_level(logging.WARNING, logger="prefect_fanout.recording"):
            guard.finished()
    assert not guard.active
    assert "could not be read" in caplog.text


def test_a_server_that_never_answers_stops_the_brake_after_the_read_timeout(caplog):
    with silent_api_url() as url, temporary_settings({PREFECT_API_URL: url}):
        guard = RecordingGuard(uuid.uuid4(), max_lag=0, resume_lag=0, check_every=1)
        with caplog.at_level(logging.WARNING, logger="prefect_fanout.recording"):
            guard.finished()
            guard.finished()  # the brake is off: no second read
    assert not guard.active
    assert guard.checks == 1
    assert "could not be read (no answer)" in caplog.text


def test_resume_lag_above_max_lag_is_refused():
    with pytest.raises(ValueError, match="resume_lag"):
        RecordingGuard(uuid.uuid4(), max_lag=1, resume_lag=2)
