"""The agent call as a Prefect task: one call is one task run.

The path of a call, top to bottom::

    CallPath.submit / call_agent / submit_agent_call: the ways in (call/path.py, single.py, door.py)
      -> Resolver.request                   (agents/resolver.py: profile, model, endpoint, once)
      -> open_call                          (call/door.py: stored answer, reserve, start, settle)
      -> agent_call task                    (this module: run name, tags, cache options)
      -> execute_request                    (llm/execute.py: ask, validate, re-ask, account)
      -> Transport.complete                 (llm/transport.py: HTTP with retries, or `test`)

A task run is named ``agent:item`` and tagged ``agent:NAME`` and ``model:MODEL``,
so the Prefect UI is the trace. Prefect task retries stay at zero: the
transport owns every retry. The cache lives in :mod:`prefect_fanout.call.cache`.
A successful call's lines stay out of the run's logs unless ``log_call`` is set
(:mod:`prefect_fanout.ui.quiet_logs`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from prefect import task
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.results import ResultRecord
from prefect.states import State
from prefect.utilities.annotations import quote

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Prompt, Resolver
from prefect_fanout.call.cache import lock_directory, task_cache_options
from prefect_fanout.call.tags import run_tags
from prefect_fanout.errors import AgentCallError
from prefect_fanout.llm.execute import execute_request
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.llm.transport import Transport
from prefect_fanout.options import CacheOptions, RunOptions
from prefect_fanout.ui.quiet_logs import install_quiet_calls


@task(name="agent-call", retries=0, persist_result=True)
def agent_call(
    request: CallRequest,
    context: Mapping[str, Any] | None = None,
    transport: Transport | None = None,
) -> AgentResult:
    """Make one agent call as a Prefect task run.

    Args:
        request: The resolved request (see :func:`build_request`).
        context: Upstream results by id; appended to the prompt in the documented
            ``## Upstream results`` format and part of the cache key.
        transport: What sends the request (it holds the endpoint and its key,
            never part of the cache key); None resolves it from the request's
            model and the ``OPENAI_*`` environment.

    Returns:
        The call's :class:`AgentResult`.

    """
    install_quiet_calls()  # a worker process running calls sent one by one has none yet
    if transport is None:
        transport = Resolver().transport(request.model)
    return execute_request(request.with_context(context), transport, get_run_logger())


def call_parameters(request: CallRequest, transport: Transport | None) -> dict[str, Any]:
    """The agent-call task's positional parameters, request and transport quoted.

    Prefect walks every parameter looking for upstream futures and results (to draw
    the run graph's edges). A request holds none, and walking it costs time per call
    and can draw false edges (Prefect matches strings of upstream results by ``id``),
    so both are passed through ``quote``; only ``context`` is walked.
    """
    return {"request": quote(request), "transport": quote(transport)}


def _run_name(parameters: dict[str, Any]) -> str:
    """A call's task-run name, ``agent:item``, from its request parameter."""
    request = parameters.get("request")
    return request.label if isinstance(request, CallRequest) else "agent-call"


_configured: dict[tuple[Any, ...], Any] = {}
_configured_lock = threading.Lock()


def configured_call_task(request: CallRequest, cache: CacheOptions | None = None) -> Any:
    """The agent-call task with this request's run name, tags and cache settings.

    The task run carries only the request's tags that a concurrency limit uses
    (see :mod:`prefect_fanout.call.tags` for why). Configured tasks are reused
    for calls with the same tags and cache settings: building a Prefect task
    object is one of the dearest steps of a call, and the run name comes from
    each call's own request.
    """
    options = cache or CacheOptions()
    tags = frozenset(run_tags(request.tags))
    key = (tags, options.mode, options.expiration, id(options.result_storage), lock_directory())
    with _configured_lock:
        entry = _configured.get(key)
        if entry is None or entry[0] is not options.result_storage:
            task_ = agent_call.with_options(
                task_run_name=_run_name, tags=set(tags), **task_cache_options(options)
            )
            entry = (options.result_storage, task_)
            if len(_configured) >= 256:
                _configured.clear()
            _configured[key] = entry
        return entry[1]


def result_from_state(state: State[Any]) -> AgentResult:
    """The call's result from its final state, marked ``cached`` for a cache hit.

    A completed call's state holds its result record in memory; it is read from there.
    (``State.result()`` runs a coroutine on Prefect's event-loop thread for every call: a
    hand-over that cost the map's one collecting thread 3.6 ms a call, 5 s of B1's 14.)

    Raises:
        Exception: The call's own error when the state is not completed.

    """
    data = state.data
    if state.is_completed() and isinstance(data, ResultRecord):  # in memory: no event-loop hop
        result = data.result
    else:  # a failure (raised here), or a result to read from storage
        result = state.result(raise_on_failure=True)
    if not isinstance(result, AgentResult):
        raise AgentCallError(f"agent call returned {type(result).__name__}, not AgentResult")
    if state.name == "Cached":
        return result.as_cached()
    return result


def result_from_future(future: PrefectFuture[Any]) -> AgentResult:
    """Wait for a submitted call and return its result (see :func:`result_from_state`)."""
    future.wait()
    return result_from_state(future.state)


def answered_request(request: CallRequest, context: Mapping[str, Any] | None) -> CallRequest:
    """The request with its upstream results rendered in (futures are waited for)."""
    if not context:
        return request
    return request.with_context(
        {
            key: value.result() if isinstance(value, PrefectFuture) else value
            for key, value in context.items()
        }
    )


def build_request(
    prompt: Prompt,
    *,
    agent: str | AgentProfile = "default",
    agents: Mapping[str, AgentProfile] | None = None,
    system: str | None = None,
    variables: Mapping[str, Any] | None = None,
    item_id: str | None = None,
    tags: Iterable[str] = (),
    options: RunOptions | None = None,
) -> CallRequest:
    """Resolve a profile and an input into a fully specified request.

    A shortcut for ``Resolver(options, agents=...).request(...)``; runs of many calls
    keep one :class:`~prefect_fanout.agents.resolver.Resolver`.

    Args:
        prompt: The user prompt, or a full list of chat messages.
        agent: An agent name or profile.
        agents: Extra profiles by name (e.g. a plan's ``agents``).
        system: A system prompt overriding the profile's.
        variables: Values for the profile's prompt template.
        item_id: The item or task id, for the run name.
        tags: Extra tags for the task run.
        options: The run's options (model, endpoint, max_tokens, temperature,
            timeout_seconds apply here).

    Returns:
        The request.

    Raises:
        ConfigurationError: Unknown agent, no endpoint, or a bad template.

    """
    return Resolver(options, agents=agents).request(
        prompt, agent=agent, system=system, variables=variables, item_id=item_id, tags=tags
    )
