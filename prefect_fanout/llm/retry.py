"""Which API errors are transient, how long to wait, and the retry loop.

The ``openai`` client is created with ``max_retries=0``; this module owns every
retry, so the attempt budget is exact: with ``max_attempts=n`` the server sees
at most ``n`` requests for one call. Prefect task retries stay at zero for
agent calls, so they never multiply this budget.

The budget's time is bounded too (:func:`retry_budget_seconds`): each request
ends by its deadline (``timeout_seconds`` for connect, send and the whole body,
see :mod:`prefect_fanout.llm.deadline`), and each wait between requests is at
most ``max(max_retry_after_seconds, backoff_max_seconds)`` (a longer Retry-After
fails at once). So one ask of a call takes at most ``n * timeout + (n - 1) *
max(max_retry_after_seconds, backoff_max_seconds)`` seconds, plus the time it
waits for the endpoint's limits (reported apart as ``limit_wait_s``). With the
defaults (4 attempts, 60 s, 30 s) and a 600 s timeout that is 2,580 s; with a
60 s timeout, 420 s.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import openai
import tenacity

from prefect_fanout.errors import (
    AgentCallError,
    CallTimeoutError,
    NonRetryableAPIError,
    RetriesExhaustedError,
    RetryAfterTooLongError,
    describe,
)
from prefect_fanout.limits.backoff import retry_after_seconds

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 409, 429})
#: Error codes that look transient by status but are not worth retrying.
PERMANENT_CODES = frozenset({"context_length_exceeded", "insufficient_quota", "invalid_api_key"})


@dataclass(frozen=True)
class RetryOptions:
    """The retry budget of one call: the one options object for retries.

    An :class:`~prefect_fanout.AgentProfile` carries these as flat fields (so
    blocks and agent files stay flat); :meth:`AgentProfile.retry_options` builds
    this object once, and the request carries it to the transport.

    Attributes:
        max_attempts: Requests per call, the first included.
        max_retry_after_seconds: The longest server-requested wait honoured;
            a longer ask fails at once with :class:`RetryAfterTooLongError`.
        backoff_initial_seconds: First exponential backoff wait (no Retry-After).
        backoff_max_seconds: Cap of the exponential backoff.

    """

    max_attempts: int = 4
    max_retry_after_seconds: float = 60.0
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 30.0


def error_code(exc: BaseException) -> str | None:
    """The ``error.code`` of an OpenAI error body, if any."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("code"):
            return str(inner["code"])
    code = getattr(exc, "code", None)
    return str(code) if code else None


def is_response_format_error(exc: BaseException) -> bool:
    """True for a 4xx/5xx whose message or body names ``response_format``.

    Such an error means the server does not take the structured-output style it
    was sent (llama-cpp-python answers ``json_schema`` with a 500). Retrying the
    same request cannot help: it is never transient, and the ``auto`` style falls
    back to the next style instead (see :mod:`prefect_fanout.llm.transport`).
    """
    if not isinstance(exc, openai.APIStatusError) or exc.status_code < 400:
        return False
    parts = [str(getattr(exc, "message", "") or ""), str(getattr(exc, "body", "") or "")]
    try:
        parts.append(exc.response.text)
    except Exception:  # a streamed or closed body: the message and body are enough
        pass
    return any("response_format" in part for part in parts)


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection, timeout, 408, 409, 429, >= 500.

    A 5xx naming ``response_format`` is not transient (see :func:`is_response_format_error`).
    """
    if error_code(exc) in PERMANENT_CODES or is_response_format_error(exc):
        return False
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in TRANSIENT_STATUS or exc.status_code >= 500
    return False


def backoff_seconds(attempt: int, options: RetryOptions) -> float:
    """Exponential backoff with full jitter for the given (1-based) failed attempt."""
    ceiling = min(options.backoff_max_seconds, options.backoff_initial_seconds * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_budget_seconds(options: RetryOptions, timeout_seconds: float) -> float:
    """The longest one ask with retries can take, waits for limits aside (see the module).

    Args:
        options: The retry budget.
        timeout_seconds: Each request's deadline.
    """
    longest_wait = max(options.max_retry_after_seconds, options.backoff_max_seconds)
    return options.max_attempts * timeout_seconds + (options.max_attempts - 1) * longest_wait


def describe_api_error(exc: BaseException) -> str:
    """A one-line description of an API error, without secrets."""
    if isinstance(exc, openai.APIStatusError):
        code = error_code(exc)
        message = getattr(exc, "message", str(exc))
        return f"HTTP {exc.status_code}{f' ({code})' if code else ''}: {message}"
    if isinstance(exc, openai.APITimeoutError):
        return "request timed out"
    if isinstance(exc, openai.APIConnectionError):
        cause = exc.__cause__
        return f"connection error: {cause or exc}"
    if isinstance(exc, ValueError):  # the client could not parse the body
        return f"malformed response from the server ({describe(exc)})"
    return describe(exc)


def connection_hint(exc: BaseException, base_url: str | None) -> str:
    """For an error that never reached a server: which URL was tried, and what to check."""
    if base_url is None or not isinstance(exc, openai.APIConnectionError):
        return ""
    if isinstance(exc, openai.APITimeoutError):
        return ""
    return (
        f". Nothing answered at {base_url}: is a server running there? Check the endpoint's "
        "base_url (or OPENAI_BASE_URL) and that the server is up"
    )


def call_with_retries(
    send: Callable[[], T],
    options: RetryOptions,
    label: str,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    timeout_seconds: float | None = None,
    base_url: str | None = None,
) -> tuple[T, int]:
    """Call ``send`` until it succeeds, retrying transient API errors only.

    Args:
        send: Makes one HTTP request.
        options: The retry budget.
        label: Names the call in error messages (agent and item).
        logger: Where retries are reported (WARNING).
        timeout_seconds: The per-request timeout, quoted in timeout errors.
        base_url: Where the requests went, named (with the likely fix) when none connected.

    Returns:
        The value of the successful request and the number of attempts made.

    Raises:
        NonRetryableAPIError: A permanent error (400, 401, 403, 404, 422, context length).
        RetryAfterTooLongError: The server asked for a wait above the cap.
        RetriesExhaustedError: Transient errors used up the budget.
        CallTimeoutError: As above, the last attempt having timed out.

    """
    attempts = 0

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        try:
            return send()
        except Exception as exc:
            if is_transient(exc) and attempts < options.max_attempts:
                wait = retry_after_seconds(exc)
                if wait is not None and wait > options.max_retry_after_seconds:
                    raise RetryAfterTooLongError(
                        f"{label}: the server asked to retry after {wait:.1f}s, more than the "
                        f"cap of {options.max_retry_after_seconds:.1f}s (max_retry_after_seconds); "
                        f"failing fast after {attempts} attempt(s): {describe_api_error(exc)}",
                        attempts,
                    ) from exc
            raise

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after_seconds(exc) if exc else None
        return asked if asked is not None else backoff_seconds(state.attempt_number, options)

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if logger is not None and state.outcome is not None and state.next_action is not None:
            logger.warning(
                "[%s] attempt %d/%d failed (%s); retrying in %.2fs",
                label,
                state.attempt_number,
                options.max_attempts,
                describe_api_error(state.outcome.exception()),  # type: ignore[arg-type]
                state.next_action.sleep,
            )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(options.max_attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    try:
        return retrying(attempt), attempts
    except AgentCallError:
        raise
    except openai.APITimeoutError as exc:
        raise CallTimeoutError(
            f"{label}: timed out after {timeout_seconds}s on attempt {attempts} of "
            f"{options.max_attempts} (timeout_seconds); the server did not answer",
            attempts,
        ) from exc
    except Exception as exc:
        if is_transient(exc):
            raise RetriesExhaustedError(
                f"{label}: failed after {attempts} attempt(s): {describe_api_error(exc)}"
                + connection_hint(exc, base_url),
                attempts,
            ) from exc
        raise NonRetryableAPIError(
            f"{label}: {describe_api_error(exc)} (not retried)", attempts
        ) from exc
