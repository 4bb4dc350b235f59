"""The ``fanout`` command line: a thin shell over the library.

Each command lives in ``prefect_fanout/cli/<name>.py`` and provides
``add_parser(subparsers)`` and ``run(args) -> int``. Command modules import
Prefect lazily so ``fanout --help`` stays fast. stdout carries only results;
the one-line summary, problems and (with ``--verbose``) logs go to stderr. Exit codes:
:data:`EXIT_CODES_HELP`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from prefect_fanout.cli.lifecycle import (
    Interrupted,
    bounded_exit,
    end_once_exit_handlers_ran,
    install_signal_handlers,
)
from prefect_fanout.cli.tuning import tune_embedded_server
from prefect_fanout.errors import EXIT_USAGE
from prefect_fanout.redact import register_environment

COMMANDS = ("call", "validate", "dispatch", "map", "server")
#: The commands that run flows: they take ``--verbose`` and keep a quiet console without it.
RUNS_FLOWS = ("call", "dispatch", "map")


EXIT_CODES_HELP = (
    "Exit codes: 0 success (and every dry run); 1 a call or task failed; 2 bad usage, input "
    "or configuration; 3 the run's budget was reached; 130/143 interrupted by SIGINT/SIGTERM "
    "(rerun to resume). Without --verbose the console shows one line per problem; --verbose "
    "adds Prefect's run lines and tracebacks."
)


def _version() -> str:
    """The installed prefect-fanout's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prefect-fanout")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with the project's usage code."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``fanout`` parser with every available command."""
    return command_parsers()["fanout"]


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """The ``fanout`` parser (key ``fanout``) and each command's parser, by command name.

    The command-line reference of the documentation is generated from these, and the
    documentation's tests check every flag they name against them.
    """
    parser = _Parser(
        prog="fanout",
        description="Run parallel LLM-agent work as Prefect flows.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"fanout {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"prefect_fanout.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"prefect_fanout.cli.{name}":
                continue
            raise
        module.add_parser(subparsers)
        subparsers.choices[name].set_defaults(command_parser=subparsers.choices[name])
        if name in RUNS_FLOWS:
            subparsers.choices[name].add_argument(
                "-v",
                "--verbose",
                action="store_true",
                help="show every log line on the console: Prefect's run lines, retries and "
                "tracebacks (the run's logs in the UI always have them)",
            )
    return {"fanout": parser, **subparsers.choices}


def main(argv: Sequence[str] | None = None, *, keep_console: bool = False) -> int:
    """Run the ``fanout`` command line and return its exit code.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        keep_console: Leave the command's console (:mod:`prefect_fanout.cli.console`) in
            place after the command, for the process's teardown (the console script).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["server", "start"]:  # every later argument is prefect server start's
        from prefect_fanout.cli.server import exec_server

        exec_server(argv[2:], os.environ)
    if argv[:1] != ["server"]:  # a standalone server gets its own defaults (cli/server.py)
        # before Prefect reads its settings; the server's own lines only with --verbose
        tune_embedded_server(quiet=not {"-v", "--verbose"} & set(argv))
    register_environment()  # OPENAI_API_KEY is masked in every message
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # say it with the command's own usage, not fanout's
        getattr(args, "command_parser", parser).error(
            f"unrecognized arguments: {' '.join(unknown)}"
        )
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    recording = sys.modules.get(_RECORDING)  # imported by a flow run only
    mark = recording.guard_mark() if recording else 0
    try:
        if args.command in RUNS_FLOWS:
            from prefect_fanout.bounded import best_effort_work_joined_at_end
            from prefect_fanout.cli.console import command_console
            from prefect_fanout.engine.child_runs import child_threads_joined_at_end
            from prefect_fanout.engine.heap import heap_frozen_while_calls_run

            with command_console(verbose=args.verbose, restore=not keep_console):
                with (
                    best_effort_work_joined_at_end(),
                    child_threads_joined_at_end(),
                    heap_frozen_while_calls_run(),
                ):
                    code = int(args.run(args))
        else:
            code = int(args.run(args))
    except Interrupted as stop:
        print(
            f"fanout {args.command}: interrupted ({stop}); finished answers are cached, "
            "rerun the command to resume",
            file=sys.stderr,
        )
        return stop.exit_code
    _say_if_server_fell_behind(args.command, mark)
    return code


_RECORDING = "prefect_fanout.call.recording"


def _say_if_server_fell_behind(command: str, mark: int) -> None:
    """One line on stderr when the Prefect server fell behind this command's flow runs."""
    recording = sys.modules.get(_RECORDING)
    if recording is None:  # no flow run made a task run: nothing to compare
        return
    line = recording.server_behind_line(mark)
    if line:
        print(f"fanout {command}: {line}", file=sys.stderr)


def run_command() -> None:
    """The ``fanout`` console script: run, then exit with a bounded teardown."""
    end_once_exit_handlers_ran()  # before Prefect is imported: its exit handlers run first
    install_signal_handlers()
    code = main(keep_console=True)
    from prefect_fanout.cli.settle import let_temporary_server_finish

    let_temporary_server_finish()  # a quiet exit: see prefect_fanout.cli.settle
    sys.exit(bounded_exit(code))


if __name__ == "__main__":
    run_command()
