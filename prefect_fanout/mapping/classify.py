"""The classifier stage of ``topic:agent=NAME``: one agent call per item gives its label.

The label is the call's text output, stripped, or the ``topic`` (else
``label``) field of a structured output. Items whose call fails, or whose
answer gives no label, are labelled ``unknown`` (and still mapped). A call the
run's budget refused is recorded as skipped, not failed: its item is labelled
``unknown`` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prefect_fanout.call.path import CallPath
from prefect_fanout.call.window import CallOutcome, CallWindow
from prefect_fanout.engine.run import Call, Engine
from prefect_fanout.errors import describe
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
        window: Bounds the calls in flight (the map's: its peak is the map's).
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

    engine = Engine(
        "classify",
        path,
        default_workers=window.window,
        window=window,
        logger=logger,
        on_outcome=keep,
        keep_records=False,  # its records are named classify:ID, and a failure labels unknown
    )
    # Over calls_per_run, the calls run in child flow runs "classify (i/n)" (see the engine).
    engine.run_calls(
        Call(item_id, request.agent, request=request) for item_id, request in requests.items()
    )
    progress.finish()
    return labels, usage, records
