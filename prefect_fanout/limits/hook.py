"""The transport's one call into the limits: each HTTP attempt waits for a permit.

``limited(endpoint, messages, max_tokens, send, clock)`` wraps a function that
makes one HTTP request. Every attempt (retries included) gets a permit from the
endpoint's limiter first, counts against its limits, settles the tokens the
answer reports, and on a 429 pauses the endpoint's other callers
(:mod:`~prefect_fanout.limits.backoff`) before the error goes on to the retry
loop, which keeps its exact budget. ``alimited`` is the same for a coroutine.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import openai

from prefect_fanout.limits.backoff import pause_seconds
from prefect_fanout.limits.estimate import estimate_tokens, reported_tokens
from prefect_fanout.limits.limiter import EndpointLimiter
from prefect_fanout.limits.registry import limiter_for


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


def limited(
    endpoint: Any,
    messages: Iterable[Mapping[str, Any]],
    max_tokens: int | None,
    send: Callable[[], Any],
    clock: WaitClock,
) -> Callable[[], Any]:
    """``send`` (one HTTP request returning the JSON body) behind the endpoint's limiter."""
    limiter = limiter_for(endpoint)
    tokens = estimate_tokens(messages, max_tokens)

    def attempt() -> Any:
        with limiter.request(tokens) as permit:
            clock.add(permit.waited_s)
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
    tokens = estimate_tokens(messages, max_tokens)

    async def attempt() -> Any:
        async with limiter.arequest(tokens) as permit:
            clock.add(permit.waited_s)
            try:
                body = await send()
            except Exception as exc:
                _note(limiter, exc)
                raise
            permit.settle(reported_tokens(body))
            return body

    return attempt
