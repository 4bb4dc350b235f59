"""The prompt and request of a plan task, before upstream results, built once per run.

A task's request for its own agent is built when the plan is checked (its prompt's length,
its budget) and kept for the run: the dispatcher sends that same request. A fallback
agent's request is built when the task falls back to it.
"""

from __future__ import annotations

import json
import threading
from weakref import WeakKeyDictionary

from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.dispatch.acceptance import criteria_block
from prefect_fanout.dispatch.result import DISPATCH_TAG
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.plan.model import TaskSpec

__all__ = ["task_prompt", "task_request"]

# The requests a run's resolver built for its tasks' own agents, by task id: a run's
# checks and its dispatcher share one resolver, so they share these too.
_built: WeakKeyDictionary[Resolver, dict[str, tuple[TaskSpec, CallRequest]]] = WeakKeyDictionary()
_built_lock = threading.Lock()


def task_request(resolver: Resolver, task: TaskSpec, agent: str) -> CallRequest:
    """A task's request for ``agent``; the one for its own agent is built once per resolver."""
    if agent != task.agent:
        return _build(resolver, task, agent)
    with _built_lock:
        known = _built.setdefault(resolver, {})
        entry = known.get(task.task_id)
    if entry is not None and entry[0] is task:
        return entry[1]
    request = _build(resolver, task, agent)
    with _built_lock:
        known[task.task_id] = (task, request)
    return request


def _build(resolver: Resolver, task: TaskSpec, agent: str) -> CallRequest:
    return resolver.request(
        task_prompt(task),
        agent=agent,
        variables=task.input_data,
        item_id=task.task_id,
        tags=(DISPATCH_TAG,),
    )


def task_prompt(task: TaskSpec) -> str:
    """The prompt of a plan task, before upstream results are added.

    The format is the task's ``description``, then, when ``input_data`` is not
    empty, a blank line, ``## Input data`` and the data as JSON (2-space indent,
    sorted keys)::

        Generate the user writer

        ## Input data
        {
          "node_type": "Effect"
        }

    A task with ``acceptance`` criteria gets them next, as a blank line,
    ``## Acceptance criteria`` and one ``- criterion`` line each.

    The call then appends the dependencies' outputs, in the order of the
    task's ``dependencies``, as ``## Upstream results`` / ``### <task_id>`` /
    output (see :meth:`prefect_fanout.llm.request.CallRequest.with_context`).

    Args:
        task: The plan task.

    Returns:
        The prompt text.

    """
    prompt = task.description.rstrip()
    if task.input_data:
        data = json.dumps(task.input_data, indent=2, sort_keys=True, ensure_ascii=False)
        prompt = f"{prompt}\n\n## Input data\n{data}" if prompt else f"## Input data\n{data}"
    if task.acceptance:
        block = criteria_block(task.acceptance)
        prompt = f"{prompt}\n\n{block}" if prompt else block
    return prompt
