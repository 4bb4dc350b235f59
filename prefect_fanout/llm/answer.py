"""An answer must be an answer: a 200 without usable text is a failed call, never a result.

A chat completion can succeed at the HTTP level and still carry no answer:

=====================================  ================================================
what the server sent                   the call fails with
=====================================  ================================================
``finish_reason: content_filter``      ``ContentFilterError`` "content_filter: ..."
``message.refusal`` set                ``RefusalError`` "refusal: ..."
``tool_calls`` and no text             ``EmptyAnswerError`` "empty answer: ... tool calls"
``content`` null, empty or blank       ``EmptyAnswerError`` "empty answer: ..."
=====================================  ================================================

None of these is retried: a filter, a refusal or a tool call comes back the same
when asked the same, and an empty answer from a server that did answer is not a
transient fault. Failed calls are never cached, so rerunning the command asks again.
"""

from __future__ import annotations

from typing import Any

from prefect_fanout.errors import NonRetryableAPIError

__all__ = ["ContentFilterError", "EmptyAnswerError", "RefusalError", "check_answer"]


class EmptyAnswerError(NonRetryableAPIError):
    """The server answered 200 without any text (null, empty, or only tool calls)."""


class ContentFilterError(NonRetryableAPIError):
    """The server's content filter withheld the answer (``finish_reason: content_filter``)."""


class RefusalError(NonRetryableAPIError):
    """The model refused (``message.refusal``)."""


def check_answer(label: str, choice: Any, attempts: int) -> None:
    """Raise when a completion choice carries no usable text answer.

    Args:
        label: Names the call (``agent:item``) in the message.
        choice: ``choices[0]`` of the chat-completions body.
        attempts: HTTP requests made for the call.

    Raises:
        ContentFilterError, RefusalError, EmptyAnswerError: As the module explains.
    """
    message = choice.get("message") or {}
    content = message.get("content")
    finish = choice.get("finish_reason")
    if finish == "content_filter":
        raise ContentFilterError(
            f"{label}: content_filter: the server's content filter withheld the answer", attempts
        )
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal.strip():
        raise RefusalError(
            f"{label}: refusal: the model refused: {refusal.strip()[:300]}", attempts
        )
    if isinstance(content, str) and content.strip():
        return
    tool_calls = message.get("tool_calls") or []
    if tool_calls:
        names = [str((call.get("function") or {}).get("name")) for call in tool_calls]
        raise EmptyAnswerError(
            f"{label}: empty answer: the model answered with tool calls ({', '.join(names)}) "
            "where text was asked",
            attempts,
        )
    shown = "null" if content is None else repr(content)
    raise EmptyAnswerError(
        f"{label}: empty answer: the server answered with content {shown} (finish_reason {finish})",
        attempts,
    )
