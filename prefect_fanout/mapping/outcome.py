"""The final state of a ``fanout-map`` flow run, named as dispatch's are.

``Completed`` when every item completed (and the reduce, if any); otherwise a
completed state named ``Partial`` whose message says what failed, e.g.
``2 of 10 items failed, 0 dead-lettered``. The summary is the state's data, so
calling the flow still returns the :class:`MapSummary`.
"""

from __future__ import annotations

from typing import Any

from prefect.states import Completed, State

from prefect_fanout.mapping.summary import MapSummary

__all__ = ["map_final_state", "map_state_message"]


def map_state_message(summary: MapSummary) -> str:
    """One line: how many items failed or completed (and the reduce's status)."""
    if summary.ok:
        text = f"{summary.completed} of {summary.total} items completed, {summary.cached} cached"
    else:
        text = (
            f"{summary.failed + summary.dead_letter} of {summary.total} items failed "
            f"({summary.failed} failed, {summary.dead_letter} dead-lettered)"
        )
    if summary.unstored:
        text += f"; {summary.unstored} answer(s) not stored"
    if summary.missing_outputs:
        text += "; not written: " + ", ".join(summary.missing_outputs)
    if summary.reduce is not None:
        text += f"; reduce {summary.reduce.status}"
    return text


def map_final_state(summary: MapSummary) -> State[Any]:
    """``Completed``, or ``Completed`` named ``Partial``, carrying the summary."""
    message = map_state_message(summary)
    if summary.ok:
        return Completed(message=message, data=summary)
    return Completed(name="Partial", message=message, data=summary)
