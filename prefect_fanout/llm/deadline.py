"""One deadline per HTTP request: connect, send, headers and the whole body.

httpx's timeouts (``httpx2``'s, under ``openai`` 3) are per operation: a server
that sends its headers and then one byte a second never trips a read timeout, so a
request with ``timeout=3`` can run for ever. :class:`DeadlineTransport` wraps
httpx's transport and gives each request one deadline, its timeout (the largest
value of the request's timeout, which the ``openai`` client sets from the call's
``timeout_seconds``), counted from when the request is handed to the transport:

- the request (connect, send, headers, and every byte of the body) runs on a helper
  thread; the caller waits for it until the deadline and then raises
  ``httpx.ReadTimeout``, which the ``openai`` client turns into ``APITimeoutError``
  (a transient error: the retry loop may ask again);
- the helper stops reading at the deadline too (it checks between chunks), so a
  dripping body never keeps a connection or a thread busy past the deadline plus
  one read.

The body is read in full before the response is handed back, so what the client
parses is complete. :func:`on_status` lets the caller hear the response's status as
soon as the headers arrive, before the body (the structured-output probe uses it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

try:  # the HTTP library the ``openai`` client is built on (``httpx2`` in openai 3)
    import httpx2 as httpx
except ImportError:  # pragma: no cover - openai 1.x and 2.x use httpx
    import httpx  # type: ignore[no-redef]

_hooks = threading.local()


@contextlib.contextmanager
def on_status(callback: Callable[[int], None]) -> Iterator[None]:
    """Call ``callback(status)`` when the headers of this thread's next requests arrive."""
    previous = getattr(_hooks, "callback", None)
    _hooks.callback = callback
    try:
        yield
    finally:
        _hooks.callback = previous


def _deadline_seconds(request: httpx.Request) -> float | None:
    timeout: Any = request.extensions.get("timeout") or {}
    values = [value for value in timeout.values() if value is not None]
    return max(values) if values else None


class DeadlineTransport(httpx.BaseTransport):
    """An httpx transport whose requests each end by one deadline (see the module).

    Args:
        inner: The transport that makes the requests.
    """

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its whole body, all before its deadline."""
        seconds = _deadline_seconds(request)
        callback = getattr(_hooks, "callback", None)
        if seconds is None and callback is None:
            return self._inner.handle_request(request)
        deadline = None if seconds is None else time.monotonic() + seconds
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["response"] = self._read(request, deadline, callback)
            except BaseException as exc:  # handed to the caller
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name="fanout-http-request", daemon=True).start()
        if not done.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
            raise httpx.ReadTimeout(
                f"no complete answer within {seconds:g}s (the request's deadline)",
                request=request,
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["response"]

    def _read(
        self,
        request: httpx.Request,
        deadline: float | None,
        callback: Callable[[int], None] | None,
    ) -> httpx.Response:
        response = self._inner.handle_request(request)
        try:
            if callback is not None:
                try:
                    callback(response.status_code)
                except Exception:  # a listener's fault must not fail the request
                    pass
            chunks = []
            for chunk in response.stream:  # type: ignore[union-attr]
                chunks.append(chunk)
                if deadline is not None and time.monotonic() > deadline:
                    raise httpx.ReadTimeout("the body did not end by the deadline", request=request)
        finally:
            response.close()
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(b"".join(chunks)),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        """Close the inner transport."""
        self._inner.close()
