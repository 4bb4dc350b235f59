"""``fanout server start [ARGS...]``: ``prefect server start`` set up for many short task runs.

Every argument after ``start`` goes to ``prefect server start`` unchanged (``--host``,
``--port``, ``--background``, ``--no-ui``...). Before starting it, the command sets
:data:`~prefect_fanout.cli.tuning.STANDALONE_SETTINGS` in the server's environment,
each only where the environment does not set that variable already, so an exported
value (or a ``.env`` file's, which Prefect reads itself) always wins. Prefect's own
profile values are overridden by these defaults unless exported, as any environment
variable overrides a profile. The process then becomes ``prefect server start``
(``exec``): signals, output and exit code are Prefect's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from prefect_fanout.cli.tuning import STANDALONE_SETTINGS, server_environment
from prefect_fanout.errors import EXIT_USAGE

PROG = "fanout server"


def add_parser(subparsers: Any) -> None:
    """Register the ``server`` command."""
    settings = ", ".join(f"{name}={value}" for name, value in STANDALONE_SETTINGS.items())
    parser = subparsers.add_parser(
        "server",
        help="start a Prefect server with settings for many short task runs",
        description=(
            "Start a Prefect server (prefect server start) with settings that let it keep "
            "up with runs of thousands of agent calls, on a new or a long-used database. "
            "Each setting applies only when the environment does not set it: " + settings
        ),
        epilog="Everything after 'start' goes to 'prefect server start' (see "
        "'fanout server start --help'). README: Server.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    # Listed for help only: cli.main hands ``server start ...`` to exec_server before
    # parsing, so every later argument (--help too) is prefect server start's.
    actions.add_parser(
        "start", help="prefect server start with these settings; other arguments are passed on"
    )
    parser.set_defaults(run=run, server_parser=parser)


def prefect_server_command(prefect_args: Sequence[str]) -> list[str]:
    """The ``prefect server start`` command line, run by this interpreter."""
    return [sys.executable, "-m", "prefect", "server", "start", *prefect_args]


def run(args: argparse.Namespace) -> int:
    """``fanout server`` without ``start``: print the help (``start`` never gets here)."""
    args.server_parser.print_help(sys.stderr)
    return EXIT_USAGE


def exec_server(prefect_args: Sequence[str], environ: Mapping[str, str]) -> NoReturn:
    """Replace this process with ``prefect server start``, with the settings as defaults."""
    env = server_environment(environ)
    command = prefect_server_command(prefect_args)
    chosen = " ".join(f"{n}={env[n]}" for n in STANDALONE_SETTINGS)
    print(f"fanout server: {chosen}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(command[0], command, env)
