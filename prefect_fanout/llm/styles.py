"""The structured-output styles a request can ask a server for."""

from __future__ import annotations

__all__ = ["STRUCTURED_STYLES", "check_style"]

STRUCTURED_STYLES = ("auto", "json_schema", "json_object+schema", "json_object", "none")
"""The structured-output styles (see :mod:`prefect_fanout.llm.transport`)."""


def check_style(value: str | None) -> str | None:
    """Validate a structured-output style name (None passes)."""
    if value is not None and value not in STRUCTURED_STYLES:
        raise ValueError(
            f"structured_output must be one of {', '.join(STRUCTURED_STYLES)}, not {value!r}"
        )
    return value
