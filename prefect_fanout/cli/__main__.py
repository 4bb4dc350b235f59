"""``python -m prefect_fanout.cli``: the ``fanout`` command line."""

from prefect_fanout.cli import run_command

run_command()
