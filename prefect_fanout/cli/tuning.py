"""Prefect server settings that suit runs of many short task runs, and where the CLI sets them.

A run of 1,000 agent calls sends the server several thousand events. Prefect 3.8's
defaults record task runs one event per database transaction
(``..._TASK_RUN_RECORDER_BATCH_SIZE=1``) and persist events 20 at a time, so a
SQLite-backed server falls minutes behind and every API call of the next run
waits behind that backlog. Batching both (and reading in batches) lets the
server keep up; automations (the triggers service) are not used by our runs.

The ``fanout`` CLI applies :data:`SERVER_SETTINGS` to its own environment when it
starts an embedded server (no ``PREFECT_API_URL``), never overriding a value
the user set. Without ``--verbose`` it also keeps that server's own log lines off the
console (:data:`QUIET_EMBEDDED_SERVER`): the embedded server shares the command's
terminal, and on SQLite its services log a traceback for a write they retry
(``Error flushing N events (N to retry, 0 dropped)`` after ``database is locked``, seen
when two partition runs write at once on a loaded machine) that is not the run's problem.
``fanout server start`` starts a standalone server with
:data:`STANDALONE_SETTINGS` the same way (README: Server).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, MutableMapping

SERVER_SETTINGS: dict[str, str] = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1.0",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_READ_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "1.0",
}
"""Server settings for many short task runs: batched task-run recording and event persistence."""

EMBEDDED_SETTINGS: dict[str, str] = {
    **SERVER_SETTINGS,
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""For the embedded server the CLI starts: the above, without automations and analytics."""

QUIET_EMBEDDED_SERVER: dict[str, str] = {"PREFECT_SERVER_LOGGING_LEVEL": "CRITICAL"}
"""The embedded server's own logging when the command is not ``--verbose``."""

STANDALONE_SETTINGS: dict[str, str] = {
    **SERVER_SETTINGS,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""What ``fanout server start`` sets (as defaults) for a long-lived ``prefect server start``.

Automations stay on: users of a standing server may have some."""


def server_environment(
    environ: Mapping[str, str], profile_names: Collection[str] = ()
) -> dict[str, str]:
    """A copy of ``environ`` with :data:`STANDALONE_SETTINGS` where the user set nothing.

    Args:
        environ: The environment the server would start with.
        profile_names: Settings the user's Prefect profile sets (the server reads them
            there; an environment variable would override them).

    Returns:
        The server's environment: every variable of ``environ`` kept as it is.
    """
    defaults = {k: v for k, v in STANDALONE_SETTINGS.items() if k not in profile_names}
    return {**defaults, **environ}


def tune_embedded_server(
    environ: MutableMapping[str, str] | None = None, *, quiet: bool = False
) -> bool:
    """Apply :data:`EMBEDDED_SETTINGS` when Prefect will start an embedded server.

    Args:
        environ: The environment to change (``os.environ`` by default).
        quiet: Also apply :data:`QUIET_EMBEDDED_SERVER` (a command without ``--verbose``).

    Returns:
        True when settings were applied (no ``PREFECT_API_URL`` is set).
    """
    environ = os.environ if environ is None else environ
    if environ.get("PREFECT_API_URL"):
        return False
    settings = {**EMBEDDED_SETTINGS, **(QUIET_EMBEDDED_SERVER if quiet else {})}
    for name, value in settings.items():
        environ.setdefault(name, value)
    return True
