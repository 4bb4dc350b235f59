"""MkDocs hook: generate the reference pages at build time, so they cannot drift.

- ``reference/cli.md``: the help of ``fanout`` and of each command, from the argparse parsers
  themselves (:func:`prefect_fanout.cli.command_parsers`).
- ``reference/api.md``: one mkdocstrings section per public name of ``prefect_fanout``
  (its ``__all__``), documented from the docstrings of the module that defines it.
"""

from __future__ import annotations

import os
from typing import Any

from mkdocs.structure.files import File, Files

HELP_COLUMNS = "100"  # argparse wraps help to $COLUMNS: one width whatever the terminal


def cli_reference() -> str:
    """The command-line reference page, from the parsers' own help."""
    os.environ["COLUMNS"] = HELP_COLUMNS
    from prefect_fanout.cli import command_parsers

    parsers = command_parsers()
    lines = [
        "# Command-line reference",
        "",
        "Generated from the `fanout` parser when this site is built; conventions shared by "
        "every command are in [Command line](../command-line.md).",
        "",
    ]
    for name, parser in parsers.items():
        title = "fanout" if name == "fanout" else f"fanout {name}"
        lines += [f"## `{title}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    lines += [
        "`fanout server start` hands every argument after `start` to `prefect server start`; "
        "`fanout server start --help` prints Prefect's help.",
        "",
    ]
    return "\n".join(lines)


def api_reference() -> str:
    """The API reference page: each public name, from the module that defines it."""
    import prefect_fanout

    public = prefect_fanout._PUBLIC  # the package's one list of public names, by module
    lines = [
        "# Python API reference",
        "",
        "Generated from the docstrings when this site is built: every name of "
        "`prefect_fanout.__all__`, imported as `from prefect_fanout import NAME`.",
        "",
    ]
    for name in prefect_fanout.__all__:
        lines += [f"::: {public[name]}.{name}", ""]
    return "\n".join(lines)


def on_files(files: Files, config: Any) -> Files:
    """Add the generated reference pages to the site's files."""
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "reference/api.md", content=api_reference()))
    return files
