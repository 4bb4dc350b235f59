"""One deadline per HTTP request: connect, send, headers and the whole body.

httpx's timeouts (``httpx2``'s, under ``openai`` 3) are per operation: a server
that sends its headers and then one byte a second never trips a read timeout, so a
request with ``timeout=3`` can run for ever. :class:`DeadlineTransport` is the
``openai`` client's HTTP transport and gives each request one deadline, its timeout
(the largest value of the request's timeout, which the ``openai`` client sets from
the call's ``timeout_seconds``), counted from when the request is handed to it:

- the request runs in the caller's thread, over an httpcore connection pool whose
  network backend (:class:`DeadlineBackend`) bounds every socket operation (connect,
  TLS handshake, each write, each read) by the time left before the deadline, and
  refuses to start one once it has passed. A server that drips its headers or its body
  is cut off at the deadline, within one read;
- the refusal is httpcore's ``ReadTimeout`` (``ConnectTimeout``, ``WriteTimeout``),
  which this transport hands on as httpx's, and the ``openai`` client as
  ``APITimeoutError`` (a transient error: the retry loop may ask again).

A host name is looked up before the connection's first socket exists; that lookup is
bounded by the system resolver's own timeouts, not by the deadline.

The body is read in full before the response is handed back, so what the client
parses is complete. :func:`on_status` lets the caller hear the response's status as
soon as the headers arrive, before the body (the structured-output probe uses it).

An earlier version ran each request on a helper thread that the caller waited for. A
thread per request cost about 0.9 ms of CPU a call (measured with 1,000 calls in one
process): on two cores at 50 calls in flight, that was B1's largest cost of its own.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

try:  # the HTTP library the ``openai`` client is built on (``httpx2`` in openai 3)
    import httpcore2 as httpcore
    import httpx2 as httpx
except ImportError:  # pragma: no cover - openai 1.x and 2.x use httpx
    import httpcore  # type: ignore[no-redef]
    import httpx  # type: ignore[no-redef]

T = TypeVar("T")

_hooks = threading.local()
_deadline = threading.local()


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


def _time_left(timeout: float | None, late: type[Exception]) -> float | None:
    """Time left to the deadline of this thread's request, at most ``timeout``; ``late`` once up."""
    deadline = getattr(_deadline, "at", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise late(f"no complete answer within {_deadline.seconds:g}s (the request's deadline)")
    return left if timeout is None else min(timeout, left)


def _by_the_deadline(
    operation: Callable[[float | None], T], timeout: float | None, late: type[Exception]
) -> T:
    """``operation(seconds)`` given at most the time left; a timeout at the deadline says so."""
    seconds = _time_left(timeout, late)
    try:
        return operation(seconds)
    except late:
        _time_left(None, late)  # the deadline's own message when it is what ran out
        raise


def _connected(
    connect: Callable[[float | None], httpcore.NetworkStream], timeout: float | None
) -> DeadlineStream:
    """A stream ``connect(seconds)`` opened by the deadline, its operations bounded by it too."""
    return DeadlineStream(_by_the_deadline(connect, timeout, httpcore.ConnectTimeout))


class DeadlineStream(httpcore.NetworkStream):
    """A connection's socket stream whose operations end by the request's deadline.

    Args:
        inner: The stream the network backend opened.
    """

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Read up to ``max_bytes``, waiting at most until the deadline."""
        return _by_the_deadline(
            lambda seconds: self._inner.read(max_bytes, seconds), timeout, httpcore.ReadTimeout
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Write ``buffer``, waiting at most until the deadline."""
        _by_the_deadline(
            lambda seconds: self._inner.write(buffer, seconds), timeout, httpcore.WriteTimeout
        )

    def close(self) -> None:
        """Close the socket."""
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        """The TLS stream over this one (its handshake bounded by the deadline too)."""
        return _connected(
            lambda seconds: self._inner.start_tls(ssl_context, server_hostname, seconds), timeout
        )

    def get_extra_info(self, info: str) -> Any:
        """What the inner stream says (``socket``, ``is_readable``...)."""
        return self._inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, its connections bounded by the request's deadline.

    Args:
        inner: The backend that opens sockets (httpcore's ``SyncBackend`` by default).
    """

    def __init__(self, inner: httpcore.NetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Open a TCP connection, giving up at the deadline."""
        return _connected(
            lambda seconds: self._inner.connect_tcp(
                host, port, seconds, local_address, socket_options
            ),
            timeout,
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Open a Unix socket connection, giving up at the deadline."""
        return _connected(
            lambda seconds: self._inner.connect_unix_socket(path, seconds, socket_options), timeout
        )

    def sleep(self, seconds: float) -> None:
        """Sleep (httpcore's connection retries)."""
        self._inner.sleep(seconds)


_CORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """Raise httpcore's errors as httpx's error of the same name (what ``openai`` maps)."""
    try:
        yield
    except _CORE_ERRORS as exc:
        raise _httpx_error(exc) from exc


def _httpx_error(exc: Exception) -> Exception:
    """The httpx error named as the most specific class of ``exc`` that httpx has."""
    for kind in type(exc).__mro__:
        mapped = getattr(httpx, kind.__name__, None)
        if isinstance(mapped, type) and issubclass(mapped, httpx.HTTPError):
            return mapped(str(exc))
    return httpx.TransportError(str(exc))  # pragma: no cover - every httpcore error has a name


def _tls_context(verify: bool | str) -> ssl.SSLContext | None:
    """The TLS context httpx would make for ``verify`` (``SSL_CERT_FILE`` applies).

    An older httpx without a public ``create_ssl_context`` (``openai`` 1.x may bring one)
    gets httpcore's default context instead: certifi's roots, verified.
    """
    create = getattr(httpx, "create_ssl_context", None)
    return create(verify=verify) if create is not None else None


class DeadlineTransport(httpx.BaseTransport):
    """An httpx transport whose requests each end by one deadline (see the module).

    Args:
        limits: The connection pool's limits.
        verify: TLS verification, as httpx takes it (``SSL_CERT_FILE`` and
            ``SSL_CERT_DIR`` apply, as for httpx's own transport).
    """

    def __init__(self, limits: httpx.Limits, verify: bool | str = True) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=_tls_context(verify),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=DeadlineBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read its whole body, all before its deadline."""
        seconds = _deadline_seconds(request)
        callback = getattr(_hooks, "callback", None)
        previous = getattr(_deadline, "at", None), getattr(_deadline, "seconds", None)
        _deadline.at = None if seconds is None else time.monotonic() + seconds
        _deadline.seconds = seconds
        try:
            return self._send(request, callback)
        finally:
            _deadline.at, _deadline.seconds = previous

    def _send(
        self, request: httpx.Request, callback: Callable[[int], None] | None
    ) -> httpx.Response:
        sent = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,  # type: ignore[arg-type]
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self._pool.handle_request(sent)
            try:
                if callback is not None:
                    try:
                        callback(response.status)
                    except Exception:  # a listener's fault must not fail the request
                        pass
                body = b"".join(response.stream)  # type: ignore[arg-type]
            finally:
                response.close()
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=httpx.ByteStream(body),
            extensions=response.extensions,
            request=request,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._pool.close()
