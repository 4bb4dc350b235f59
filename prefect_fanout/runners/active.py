"""Putting the task runner a run's options name in place for a flow body."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from prefect.context import FlowRunContext

from prefect_fanout.options import RunOptions
from prefect_fanout.runners.choice import build_task_runner, check_task_runner, runner_matches

__all__ = ["chosen_runner", "on_task_runner", "sends_chunks"]


def sends_chunks(options: RunOptions) -> bool:
    """True when a map or fan_out with these options sends its calls in chunks.

    A budget is spent call by call in the calling process, and batch mode answers the
    calls before they would be sent: both go call by call.
    """
    return not options.budgeted() and not options.batch


def chosen_runner(
    options: RunOptions, max_workers: int, *, cli: bool = False, chunked: bool = False
) -> Any:
    """The task runner the options choose, checked first (a wrong choice raises).

    Args:
        options: The run's options (``task_runner``, ``dask_address``, ``ray_address``).
        max_workers: Calls in flight at most.
        cli: Name the CLI's flags in errors.
        chunked: For a run that sends its calls to the workers in chunks.

    Raises:
        ConfigurationError: The runner is unknown, its extra is missing, or an address
            is given to the wrong runner or answers nothing.
    """
    choice = {"dask_address": options.dask_address, "ray_address": options.ray_address}
    check_task_runner(options.runner(), **choice, cli=cli)
    return build_task_runner(options.runner(), max_workers=max_workers, chunked=chunked, **choice)


@contextlib.contextmanager
def on_task_runner(
    options: RunOptions, max_workers: int, *, chunked: bool = False
) -> Iterator[None]:
    """Submit this flow body's task runs to the runner the options choose.

    A flow run whose runner is already the chosen kind (started by ``run_map_flow``,
    or a user's flow on a Dask runner) keeps it; otherwise (a flow started from the
    UI, a deployment or a pattern, on its default thread pool) the runner is started
    here and shut down when the body ends.
    """
    context = FlowRunContext.get()
    if context is None or runner_matches(context.task_runner, options.runner()):
        yield
        return
    runner = chosen_runner(options, max_workers, chunked=chunked)
    with runner, context.model_copy(update={"task_runner": runner}):
        yield
