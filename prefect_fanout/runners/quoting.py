"""Task parameters as remote runners must send them."""

from __future__ import annotations

from typing import Any

__all__ = ["unquoted"]


def unquoted(parameters: dict[str, Any]) -> dict[str, Any]:
    """Task parameters with top-level ``quote`` annotations unwrapped, for Dask and Ray.

    The agent-call task quotes its request and transport so that Prefect does not
    walk them in the flow's process. Sent to a Dask or Ray worker, a ``quote`` (a
    named tuple) arrives rebuilt as ``quote(((value,),))`` and the task would get
    a tuple; the remote runners therefore send the values themselves.
    """
    from prefect.utilities.annotations import BaseAnnotation

    return {
        name: value.unwrap() if isinstance(value, BaseAnnotation) else value
        for name, value in parameters.items()
    }
