"""Secrets the run knows, masked in every message before it leaves the process.

Every API key fanout reads (``OPENAI_API_KEY``, an ``LLMEndpoint`` block's or an
endpoint object's ``api_key``) is registered here when it is read. From then on:

- :func:`redact` replaces each known key in a text by its masked form
  (``sk-****WXYZ``: the first three and last four characters of a long key, else
  ``****``); error messages (:class:`~prefect_fanout.errors.AgentCallError`,
  :func:`~prefect_fanout.errors.describe`), output and trace files
  (:mod:`prefect_fanout.files`) and artifacts pass through it;
- a log-record factory redacts every log record of the process (message,
  arguments and traceback) before any handler sees it: the console, stderr and
  Prefect's API log handler alike.

Keys shorter than :data:`MIN_LENGTH` characters are not masked (a one-letter
key would mask that letter everywhere).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

__all__ = ["MIN_LENGTH", "mask", "redact", "redact_value", "register_secret"]

MIN_LENGTH = 6
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()
_guard = threading.Lock()
_installed = False


def mask(secret: str) -> str:
    """The masked form of a secret: ``sk-****WXYZ`` for long keys, ``****`` otherwise."""
    if len(secret) >= 16:
        return f"{secret[:3]}****{secret[-4:]}"
    return "****"


def register_secret(value: str | None) -> None:
    """Mask ``value`` from now on in every message, log record, file and artifact."""
    global _ordered
    if not value or len(value) < MIN_LENGTH or value in _secrets:
        return
    with _guard:
        _secrets.add(value)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))
        _install_log_redaction()


def register_environment() -> None:
    """Register the keys the environment holds (``OPENAI_API_KEY``)."""
    register_secret(os.environ.get("OPENAI_API_KEY"))


def redact(text: str) -> str:
    """``text`` with every known secret replaced by its masked form."""
    if not _ordered or not isinstance(text, str):
        return text
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, mask(secret))
    return text


def redact_value(value: Any) -> Any:
    """Strings, and strings inside lists, tuples and dicts (keys too), redacted."""
    if not _ordered:
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_value(k): redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def _install_log_redaction() -> None:
    """Wrap the log-record factory once (lock held by the caller)."""
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed format: leave it to the handler's own error path
            return record
        record.msg, record.args = redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)
