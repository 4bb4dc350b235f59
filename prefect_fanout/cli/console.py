"""What a ``fanout`` command shows on the console while its flow runs.

Prefect's console handler prints every run log line, with tracebacks, through Rich,
which reads ``:a:`` as an emoji code and ``[b]`` as markup. For the duration of a
command, :func:`command_console` puts a plain :class:`logging.StreamHandler` in the
place of each of Prefect's console handlers (same stream, level and format), so names
and messages print literally. Without ``--verbose`` it also keeps the console to one
line per problem: no INFO lines, no tracebacks, none of the run engine's own reports of
a task or flow run failing or retrying (the command's last line says what failed, which
item, why and what to do), and no per-attempt retry notices. Prefect's API log handler
is left alone, so the run's logs in the UI keep every line and traceback.

Nothing is changed on import: only a running command swaps the handlers, and puts
Prefect's back when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

#: Loggers of Prefect's run engine: their lines report run states (failed, retrying,
#: crashed), which the command's own last line sums up.
RUN_ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


def _is_retry_notice(record: logging.LogRecord) -> bool:
    """True for the per-attempt notice of a call about to be retried (prefect_fanout.llm)."""
    template = record.msg if isinstance(record.msg, str) else ""
    return "attempt" in template and "retrying in" in template


def _from_prefect(record: logging.LogRecord) -> bool:
    """True when Prefect's own code (not ours, logging through a run logger) wrote the line."""
    path = record.pathname.replace("\\", "/")
    return "/prefect/" in path and "/prefect_fanout/" not in path


class QuietConsole(logging.Filter):
    """The default console: warnings and errors, one line each, no run-engine reports."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record when it is a warning or error worth one line on the console."""
        if record.levelno < logging.WARNING or _is_retry_notice(record):
            return False
        return not (record.name.startswith(RUN_ENGINE_LOGGERS) and _from_prefect(record))


class PlainConsoleHandler(logging.StreamHandler):
    """A console handler that writes messages as they are: no emoji codes, no markup.

    Args:
        stream: Where to write (Prefect's console stream, stderr).
        tracebacks: Print tracebacks; without, a record is its first message line only.
    """

    def __init__(self, stream: object, *, tracebacks: bool) -> None:
        super().__init__(stream)  # type: ignore[arg-type]
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """The record as Prefect's formatter writes it, on one line unless tracebacks are on."""
        if self.tracebacks:
            return super().format(record)
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return super().format(bare).split("\n", 1)[0].rstrip()


def _console_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    """Each logger with one of Prefect's console handlers attached, and the handler."""
    from prefect.logging.handlers import PrefectConsoleHandler

    # Prefect's logging.yml attaches its console handler to the root and to several "prefect.*"
    # loggers (and PREFECT_LOGGING_EXTRA_LOGGERS to more), so every logger the logging module
    # knows is looked at. tests/test_console.py fails if one of Prefect's handlers is missed.
    loggers = [logging.getLogger()]
    loggers += [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    return [
        (logger, handler)
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, PrefectConsoleHandler)
    ]


@contextmanager
def command_console(*, verbose: bool, restore: bool = True) -> Iterator[None]:
    """Show the command's logs plainly, and without ``verbose`` one line per problem.

    Args:
        verbose: Show every line Prefect's console would (INFO, tracebacks, retries).
        restore: Put Prefect's console handlers back at the end; ``False`` keeps this
            console until the process exits, so its teardown (stopping a temporary
            server) is quiet too.
    """
    from prefect import flow  # noqa: F401  (importing Prefect's flows sets up its logging)
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # the handlers to replace exist from here on

    swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
    plain: dict[int, logging.Handler] = {}  # one replacement per Prefect handler
    for logger, handler in _console_handlers():
        if id(handler) not in plain:
            replacement = PlainConsoleHandler(handler.stream, tracebacks=verbose)  # type: ignore[attr-defined]
            replacement.setLevel(handler.level)
            replacement.setFormatter(handler.formatter)
            if not verbose:
                replacement.addFilter(QuietConsole())
            plain[id(handler)] = replacement
        logger.removeHandler(handler)
        logger.addHandler(plain[id(handler)])
        swapped.append((logger, handler, plain[id(handler)]))
    try:
        yield
    finally:
        for logger, handler, replacement in swapped if restore else ():
            logger.removeHandler(replacement)
            logger.addHandler(handler)
