"""The request of a plan task, before upstream results, as the dispatcher builds it."""

from __future__ import annotations

from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.dispatch.loop import task_prompt
from prefect_fanout.dispatch.result import DISPATCH_TAG
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.plan.model import TaskSpec

__all__ = ["task_request"]


def task_request(resolver: Resolver, task: TaskSpec, agent: str) -> CallRequest:
    """A task's request for ``agent`` (as :meth:`Dispatcher._request` builds it)."""
    return resolver.request(
        task_prompt(task),
        agent=agent,
        variables=task.input_data,
        item_id=task.task_id,
        tags=(DISPATCH_TAG,),
    )
