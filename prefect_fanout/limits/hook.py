"""The transport's one call into the limits: each HTTP attempt waits for a permit.

``limited(endpoint, messages, max_tokens, send, clock)`` wraps a function that
makes one HTTP request. Every attempt (retries included) gets a permit from the
endpoint's limiter first, counts against its limits, learns from the answer's
``x-ratelimit-*`` headers, settles the tokens the answer reports, and on a 429
pauses the endpoint's other callers
(:mod:`~prefect_fanout.limits.backoff`) before the error goes on to the retry
loop, which keeps its exact budget. ``alimited`` is the same for a coroutine.
Once the process is stopping (a signal), no attempt starts a request
(:mod:`prefect_fanout.stopping`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

import openai

from prefect_fanout.errors import ConfigurationError, NonRetryableAPIError
from prefect_fanout.limits.backoff import pause_seconds
from prefect_fanout.limits.estimate import (
    DEFAULT_COMPLETION_TOKENS,
    estimate_tokens,
    reported_tokens,
)
from prefect_fanout.limits.limiter import EndpointLimiter, Permit
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


class Peak:
    """The most HTTP requests this process had on their way at once, since it was made.

    Attributes:
        value: That most.
    """

    def __init__(self, now: int) -> None:
        self.value = now


class RequestGauge:
    """HTTP requests of this process on their way to any endpoint (sent, not yet answered).

    This is what "concurrency reached" means in a run's summary: requests at the
    server, not calls waiting for a limit, a probe or a lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self._peaks: weakref.WeakSet[Peak] = weakref.WeakSet()

    def peak(self) -> Peak:
        """A peak that follows this process's requests from now on."""
        with self._lock:
            peak = Peak(self.in_flight)
            self._peaks.add(peak)
            return peak

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Count one request while it is on its way."""
        with self._lock:
            self.in_flight += 1
            for peak in self._peaks:
                peak.value = max(peak.value, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1


REQUESTS = RequestGauge()
"""The process's one :class:`RequestGauge`."""


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


def _note(limiter: EndpointLimiter, exc: BaseException, permit: Permit) -> None:
    """An error answer: learn from its headers; a 429 also pauses and slows the endpoint."""
    response = getattr(exc, "response", None)
    if isinstance(exc, openai.APIStatusError):
        limiter.learn(getattr(response, "headers", None), permit, None)
        if exc.status_code == 429:
            limiter.note_rate_limited(pause_seconds(exc))


def _answered(limiter: EndpointLimiter, permit: Permit, answer: Any, max_tokens: int | None) -> Any:
    """A successful answer ``(body, headers)``: learn, settle the tokens; the body."""
    body, headers = answer
    reported = reported_tokens(body)
    limiter.learn(headers, permit, reported)
    permit.settle(reported)
    budget = DEFAULT_COMPLETION_TOKENS if max_tokens is None else max_tokens
    limiter.say_token_bound(budget, permit.tokens, reported)
    return body


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
    """``send`` behind the endpoint's limiter.

    ``send`` makes one HTTP request and returns ``(JSON body, response headers)``; the
    wrapped function returns the body, having learned from the headers
    (:mod:`~prefect_fanout.limits.learning`).
    """
    limiter = limiter_for(endpoint)
    tokens = _counted(limiter, messages, max_tokens)

    def attempt() -> Any:
        _refuse_too_big(limiter, tokens, max_tokens)
        hold_if_stopping()
        with limiter.request(tokens) as permit:
            clock.add(permit.waited_s)
            hold_if_stopping()  # a signal while it waited: no new request
            try:
                with REQUESTS.sending():
                    answer = send()
            except Exception as exc:
                _note(limiter, exc, permit)
                raise
            return _answered(limiter, permit, answer, max_tokens)

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
                with REQUESTS.sending():
                    answer = await send()
            except Exception as exc:
                _note(limiter, exc, permit)
                raise
            return _answered(limiter, permit, answer, max_tokens)

    return attempt
