"""The classifier stage of ``topic:agent=NAME``: one agent call per item gives its label.

The label is the call's text output, stripped, or the ``topic`` (else
``label``) field of a structured output. Items whose call fails, or whose
answer gives no label, are labelled ``unknown`` (and still mapped). A call the
run's budget refused is recorded as skipped, not failed: its item is labelled
``unknown`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any

from prefect.context import FlowRunContext

from prefect_fanout.call.path import CallPath
from prefect_fanout.call.window import CallOutcome, CallWindow, Submitted
from prefect_fanout.engine.child_runs import (
    DEFAULT_RUN_CALLS,
    group_state,
    run_in_parts,
)
from prefect_fanout.errors import AgentCallError, describe
from prefect_fanout.files import jsonable
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.mapping.partition import UNKNOWN
from prefect_fanout.ui.progress import ProgressReporter
from prefect_fanout.usage import CallRecord, Ledger

__all__ = ["classify_items", "label_from_output"]

LABEL_FIELDS = ("topic", "label")


def label_from_output(output: Any) -> str:
    """The partition label in a classifier's output.

    Args:
        output: A text answer, or a structured one (dict or model).

    Returns:
        The stripped text, or the stripped ``topic``/``label`` field; ``unknown``
        when there is none.

    """
    data = jsonable(output)
    if isinstance(data, dict):
        for name in LABEL_FIELDS:
            value = data.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()
            if value is not None and not isinstance(value, str):
                return str(value)
        return UNKNOWN
    if data is None:
        return UNKNOWN
    text = data if isinstance(data, str) else str(data)
    return text.strip() or UNKNOWN


def _jobs(
    requests: Mapping[str, CallRequest], path: CallPath
) -> Iterator[tuple[str, Callable[[], Submitted]]]:
    for item_id, request in requests.items():
        yield item_id, partial(path.submit, request)


def classify_items(
    requests: Mapping[str, CallRequest],
    *,
    path: CallPath,
    window: CallWindow,
    logger: Any,
) -> tuple[dict[str, str], Ledger, list[CallRecord]]:
    """Run the classifier on every item (inside a flow) and collect the labels.

    Args:
        requests: The classifier request of each item, by item id.
        path: The run's call path (transports and cache settings).
        window: Bounds the calls in flight.
        logger: Where to log failures.

    Returns:
        Labels by item id, the stage's usage, and one record per call.

    """
    labels: dict[str, str] = {}
    usage = Ledger()
    records: list[CallRecord] = []
    progress = ProgressReporter(len(requests), f"fanout map: classifying {len(requests)} items")

    def keep(done: CallOutcome[str]) -> None:
        request = requests[done.key]
        if done.over_budget:  # not made: no call, no failure; the item is mapped unlabelled
            labels[done.key] = UNKNOWN
            progress.advance(failed=False)
            records.append(
                CallRecord(
                    id=f"classify:{done.key}",
                    agent=request.agent,
                    model=request.model,
                    status="skipped",
                    error=f"budget: {done.error}",
                )
            )
            return
        usage.add(done.result, failed=not done.ok, error=done.error)
        progress.advance(failed=not done.ok)
        if done.ok:
            result: AgentResult = done.result  # type: ignore[assignment]
            labels[done.key] = label_from_output(result.output)
            records.append(CallRecord.from_result(f"classify:{done.key}", result))
            return
        labels[done.key] = UNKNOWN
        logger.warning("classify %s failed, labelled %r: %s", done.key, UNKNOWN, done.error)
        records.append(
            CallRecord.from_error(
                f"classify:{done.key}",
                request.agent,
                request.model,
                done.error,
                message=describe(done.error),
            )
        )

    bound = path.options.calls_per_run or DEFAULT_RUN_CALLS
    if len(requests) <= bound or FlowRunContext.get() is None:
        for done in window.run(_jobs(requests, path)):
            keep(done)
    else:  # over one flow run's graph: child runs "classify (i/n)", one after another

        def run_part(ids: list[str]) -> Any:
            here: CallWindow[str] = CallWindow(window.window)
            outcomes = []
            for done in here.run(_jobs({item_id: requests[item_id] for item_id in ids}, path)):
                keep(done)
                outcomes.append(done)
            window.note_peak(here.peak)
            return group_state(outcomes, len(ids))

        parts = run_in_parts(
            "classify", list(requests), bound, run_part, threads=window.window, logger=logger
        )
        for ids, child in parts:
            for item_id in ids:  # a child that could not run classified none of its items
                if item_id not in labels:
                    keep(CallOutcome(item_id, None, AgentCallError(child.why())))
    progress.finish()
    return labels, usage, records
