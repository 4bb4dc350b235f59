"""The one path from a shape to a call: build the request, pick its transport, submit or reuse.

Every shape (the map stage, the classifier, the tree reduce, the dispatcher and its acceptance
loop, the patterns) reaches the agent-call task through a :class:`CallPath`, made once per run
with the run's resolver and cache settings. It never asks which transport answers a model:
the resolver does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from prefect_fanout.agents.profiles import AgentProfile
from prefect_fanout.agents.resolver import Resolver
from prefect_fanout.budget.meter import BudgetMeter
from prefect_fanout.call.door import open_call
from prefect_fanout.call.longinputs import LongInput, answer_in_chunks
from prefect_fanout.call.task import answered_request
from prefect_fanout.call.window import Submitted
from prefect_fanout.errors import ConfigurationError
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.options import CacheOptions, RunOptions

__all__ = ["CallPath"]


class CallPath:
    """How one run's calls are made: its resolver, its cache settings, one way to submit.

    Args:
        resolver: The run's resolver (agents, models, endpoint and transports, each once).
        cache: The cache settings of every call; None takes the resolver's options'.
        budget: The run's budget; None takes the one the resolver's options set (if any).
    """

    def __init__(
        self,
        resolver: Resolver,
        cache: CacheOptions | None = None,
        budget: BudgetMeter | None = None,
    ) -> None:
        self.resolver = resolver
        self.cache = cache or resolver.options.cache_options()
        options = resolver.options
        self.budget = budget or BudgetMeter.of(
            options.budget_tokens, options.budget_usd, options.budget_name
        )

    @classmethod
    def of(
        cls, options: RunOptions | None = None, agents: Mapping[str, AgentProfile] | None = None
    ) -> CallPath:
        """A path with a new resolver for ``options`` and the run's own ``agents``."""
        return cls(Resolver(options, agents=agents))

    @property
    def options(self) -> RunOptions:
        """The run's options."""
        return self.resolver.options

    @property
    def request(self) -> Callable[..., CallRequest]:
        """The fully resolved request of one call: the resolver's :meth:`Resolver.request`."""
        return self.resolver.request

    def submit(
        self,
        request: CallRequest,
        *,
        context: Mapping[str, Any] | None = None,
        answered: CallRequest | None = None,
        run_name: str | None = None,
        in_place: bool = False,
    ) -> Submitted:
        """The call's stored answer, or the call made as an agent-call task run.

        Every step of the call is :func:`~prefect_fanout.call.door.open_call`'s; this adds
        the long-input handling (``long_inputs``) and the run's transport and budget.

        Args:
            request: The call's request, before upstream context.
            context: Upstream results or futures by id.
            answered: The request with its context applied, when the caller has it.
            run_name: The task run's name, instead of ``agent:item``.
            in_place: Run the call in this thread and return its result, not a future
                (:func:`~prefect_fanout.call.single.call_agent`).

        Raises:
            BudgetExhausted: The run's budget is reached: the call is not made (a cache
                hit is still returned; it is free).
            ConfigurationError: The run is a dry run: a shape without a dry-run report
                never makes a call.
        """
        if self.options.dry_run:
            raise ConfigurationError(
                "dry_run: no call is made; this shape has no dry-run report (map and "
                "dispatch have one)"
            )
        if request.context_tokens is not None:
            answered = answered or answered_request(request, context)
            long_input = LongInput(answered, self.resolver.counter(request.model), _run_logger())
            if not long_input.fits:
                return self._long(long_input, run_name, in_place)
        return self._submit(request, context, answered, run_name, in_place)

    def fits(self, request: CallRequest) -> bool:
        """True when ``request`` (without upstream context) needs no long-input handling.

        A request fits when its context is unknown or its input and answer fit it; the
        calls sent to workers in chunks must fit (the workers send them as they are).
        """
        if request.context_tokens is None:
            return True
        return LongInput(request, self.resolver.counter(request.model), _run_logger()).fits

    def _long(self, long_input: LongInput, run_name: str | None, in_place: bool) -> Submitted:
        """A call whose input is over its context, as its ``long_inputs`` says."""
        mode = long_input.request.long_inputs
        if mode == "truncate":
            cut = long_input.truncated()
            if isinstance(cut, BaseException):
                return cut
            return self._submit(cut, None, cut, run_name, in_place)
        if mode == "chunk":
            chunks = long_input.chunks()
            if isinstance(chunks, BaseException):
                return chunks
            return answer_in_chunks(
                long_input, chunks, lambda chunk: self._submit(chunk, None, chunk, None, in_place)
            )
        return long_input.error()

    def _submit(
        self,
        request: CallRequest,
        context: Mapping[str, Any] | None,
        answered: CallRequest | None,
        run_name: str | None,
        in_place: bool = False,
    ) -> Submitted:
        door = partial(open_call, cache=self.cache, budget=self.budget)  # the run's settings
        how = {"context": context, "answered": answered, "run_name": run_name, "in_place": in_place}
        return door(request, transport=self.resolver.transport(request.model), **how)


def _run_logger() -> Any:
    """The flow run's logger, or this module's outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect_fanout.long_inputs")
