"""``fanout server start [ARGS...]``: ``prefect server start`` set up for many short task runs.

Every argument after ``start`` goes to ``prefect server start`` unchanged (``--host``,
``--port``, ``--background``, ``--no-ui``...). Before starting it, the command sets
:data:`~prefect_fanout.cli.tuning.STANDALONE_SETTINGS` in the server's environment,
each only where the environment does not set that variable already, so an exported
value, or one the Prefect profile the server uses sets, always wins. Values in ``.env``,
``prefect.toml`` or ``pyproject.toml`` rank below environment variables in Prefect's order,
so these defaults override them: export such a value or put it in the profile. The process
then becomes ``prefect server start`` (``exec``): signals, output and exit code are Prefect's.
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


def profile_setting_names(prefect_args: Sequence[str]) -> set[str]:
    """The settings the Prefect profile the server will use sets (``--profile`` or the active).

    An unreadable profile file sets nothing here; Prefect reports it when it starts.
    """
    from prefect.settings import load_current_profile, load_profiles

    name = None
    for i, arg in enumerate(prefect_args):
        if arg == "--profile" and i + 1 < len(prefect_args):
            name = prefect_args[i + 1]
        elif arg.startswith("--profile="):
            name = arg.split("=", 1)[1]
    try:
        profile = load_profiles()[name] if name else load_current_profile()
    except Exception:  # Prefect itself says what is wrong with its profiles when it starts
        return set()
    return {setting.name for setting in profile.settings}


def _option(prefect_args: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``prefect_args``, if given."""
    for i, arg in enumerate(prefect_args):
        if arg == name and i + 1 < len(prefect_args):
            return prefect_args[i + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def ui_api_url(prefect_args: Sequence[str]) -> str | None:
    """The API URL the UI of a server started with ``prefect_args`` should ask.

    Prefect's UI asks ``PREFECT_API_URL`` when one is set (often :4200, from the profile),
    not the port the server was started on; so with ``--port`` the UI is pointed at the
    server's own port (on 127.0.0.1 when ``--host`` is a wildcard address or not given).

    Returns:
        ``http://HOST:PORT/api``, or None without ``--port`` (Prefect's default stands).
    """
    port = _option(prefect_args, "--port")
    if port is None:
        return None
    host = _option(prefect_args, "--host") or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/api"


def exec_server(prefect_args: Sequence[str], environ: Mapping[str, str]) -> NoReturn:
    """Replace this process with ``prefect server start``, with the settings as defaults.

    A setting is left to the user when the environment or the Prefect profile the server
    uses sets it.
    """
    profile = profile_setting_names(prefect_args)
    env = server_environment(environ, profile)
    ui_api = ui_api_url(prefect_args)
    names = ("PREFECT_UI_API_URL", "PREFECT_SERVER_UI_API_URL")  # the setting and its alias
    if ui_api and not any(name in env or name in profile for name in names):
        env["PREFECT_UI_API_URL"] = ui_api
        print(f"fanout server: the UI asks its API at {ui_api}", file=sys.stderr)
    command = prefect_server_command(prefect_args)
    chosen = " ".join(f"{n}={env[n]}" for n in STANDALONE_SETTINGS if n in env)
    print(f"fanout server: {chosen}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execve(command[0], command, env)
