"""Failure policies of a dispatch: the one list of their names (importable without Prefect).

- ``partial``: the transitive dependants of a failed task are skipped; independent
  branches go on; the dispatch is ``partial`` when some task completed.
- ``all_or_nothing``: the first failure stops everything not yet started; the
  dispatch is ``failed``.
"""

from __future__ import annotations

from typing import Literal, get_args

FailurePolicy = Literal["partial", "all_or_nothing"]
"""The type of ``config.failure_policy``."""

FAILURE_POLICIES: tuple[str, ...] = get_args(FailurePolicy)
"""The valid failure policy names."""
