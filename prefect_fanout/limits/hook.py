"""The transport's one call into the limits: each HTTP attempt waits for a permit.

``limited(endpoint, messages, max_tokens, send, clock)`` wraps a function that
makes one HTTP request. Every attempt (retries included) gets a permit from the
endpoint's limiter first, counts against its limits, settles the tokens the
answer reports, and on a 429 pauses the endpoint's other callers
(:mod:`~prefect_fanout.limits.backoff`) before the error goes on to the retry
loop, which keeps its exact budget. ``alimited`` is the same for a coroutine.
Once the process is stopping (a signal), no attempt starts a request
(:mod:`prefect_fanout.stopping`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import openai

from prefect_fanout.errors import ConfigurationError, NonRetryableAPIError
from prefect_fanout.limits.backoff import pause_seconds
from prefect_fanout.limits.estimate import (
    DEFAULT_COMPLETION_TOKENS,
    estimate_tokens,
    reported_tokens,
)
from prefect_fanout.limits.limiter import EndpointLimiter
from prefect_fanout.limits.registry import limiter_for
from prefect_fanout.limits.spec import check_request_fits
from prefect_fanout.stopping import hold_if_stopping, stopping


def _counted(limiter: EndpointLimiter, messages: Any, max_tokens: int | None) -> int:
    """The request's token estimate."""
    return estimate_tokens(messages, max_tokens)


def _refuse_too_big(limiter: EndpointLimiter, tokens: int, max_tokens: int | None) -> None:
    """Fail the call, sending nothing, when its estimate is above the whole per-minute limit.

    A run checks the completion budget before any call (exit 2); this catches a prompt
    big enough to tip one request over.
    """
    budget = DEFAULT_COMPLETION_TOKENS if max_tokens is None else max_tokens
    try:
        check_request_fits(
            limiter.spec.tokens_per_minute, tokens, f"max_tokens {budget} + the prompt's estimate"
        )
    except ConfigurationError as exc:
        raise NonRetryableAPIError(str(exc), 0) from None


class WaitClock:
    """Seconds one call's attempts waited for capacity, added up.

    Attributes:
        seconds: The total so far.
    """

    def __init__(self) -> None:
        self.seconds = 0.0

    def add(self, seconds: float) -> None:
        """Count one attempt's wait."""
        self.seconds = round(self.seconds + seconds, 6)


def _note(limiter: EndpointLimiter, exc: BaseException) -> None:
    if isinstance(exc, openai.APIStatusError) and exc.status_code == 429:
        limiter.note_rate_limited(pause_seconds(exc))


async def _ahold_if_stopping() -> None:
    """As :func:`~prefect_fanout.stopping.hold_if_stopping`, on an event loop."""
    if stopping():
        await asyncio.Event().wait()


def limited(
    endpoint: Any,
    messages: Iterable[Mapping[str, Any]],
    max_tokens: int | None,
    send: Callable[[], Any],
    clock: WaitClock,
) -> Callable[[], Any]:
    """``send`` (one HTTP request returning the JSON body) behind the endpoint's limiter."""
    limiter = limiter_for(endpoint)
    tokens = _counted(limiter, messages, max_tokens)

    def attempt() -> Any:
        _refuse_too_big(limiter, tokens, max_tokens)
        hold_if_stopping()
        with limiter.request(tokens) as permit:
            clock.add(permit.waited_s)
            hold_if_stopping()  # a signal while it waited: no new request
            try:
                body = send()
            except Exception as exc:
                _note(limiter, exc)
                raise
            permit.settle(reported_tokens(body))
            return body

    return attempt


def alimited(
    endpoint: Any,
    messages: Iterable[Mapping[str, Any]],
    max_tokens: int | None,
    send: Callable[[], Awaitable[Any]],
    clock: WaitClock,
) -> Callable[[], Awaitable[Any]]:
    """As :func:`limited`, for a coroutine function making one HTTP request."""
    limiter = limiter_for(endpoint)
    tokens = _counted(limiter, messages, max_tokens)

    async def attempt() -> Any:
        _refuse_too_big(limiter, tokens, max_tokens)
        await _ahold_if_stopping()
        async with limiter.arequest(tokens) as permit:
            clock.add(permit.waited_s)
            await _ahold_if_stopping()
            try:
                body = await send()
            except Exception as exc:
                _note(limiter, exc)
                raise
            permit.settle(reported_tokens(body))
            return body

    return attempt
