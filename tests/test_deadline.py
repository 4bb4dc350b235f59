"""One deadline per HTTP request, the request made in the caller's thread (llm/deadline.py).

A plain socket server on 127.0.0.1 plays the slow servers httpx's per-operation timeouts
miss: headers sent a line every 0.1 s, never finished. (The dripping body, through the
``openai`` client and the retry loop, is in tests/test_never_hang.py.)
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import openai
import pytest

from prefect_fanout.llm.deadline import DeadlineTransport, httpx, on_status

BODY = b'{"ok": true, "padding": "' + b"x" * 20000 + b'"}'


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(65536)  # the request (small: one read)
        stop: threading.Event = self.server.stop  # type: ignore[attr-defined]
        if self.server.mode == "drip-headers":  # type: ignore[attr-defined]
            self.request.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.wait(0.1):  # a header line every 0.1 s, the headers never end
                try:
                    self.request.sendall(b"X-Slow: yes\r\n")
                except OSError:  # the client gave up and closed the connection
                    return
            return
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n"
        self.request.sendall(head.encode() + b"Content-Type: application/json\r\n\r\n")
        self.request.sendall(BODY)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A server on 127.0.0.1 in the mode the test's parameter names; its base URL."""
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler) as tcp:
        tcp.daemon_threads = True
        tcp.mode = request.param  # type: ignore[attr-defined]
        tcp.stop = threading.Event()  # type: ignore[attr-defined]
        threading.Thread(target=tcp.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{tcp.server_address[1]}"
        finally:
            tcp.stop.set()  # type: ignore[attr-defined]
            tcp.shutdown()


def _client() -> httpx.Client:
    return httpx.Client(transport=DeadlineTransport(openai.DEFAULT_CONNECTION_LIMITS))


@pytest.mark.parametrize("server", ["drip-headers"], indirect=True)
def test_headers_that_never_end_are_cut_off_at_the_deadline(server: str) -> None:
    # each line comes well within the read timeout: only the request's deadline ends it
    with _client() as client, pytest.raises(httpx.ReadTimeout, match="deadline"):
        client.get(server, timeout=httpx.Timeout(1.0))


@pytest.mark.parametrize("server", ["whole"], indirect=True)
def test_the_answer_is_read_whole_in_the_callers_thread(server: str) -> None:
    heard: list[tuple[int, threading.Thread]] = []
    with (
        _client() as client,
        on_status(lambda status: heard.append((status, threading.current_thread()))),
    ):
        response = client.get(server, timeout=5.0)
    assert response.status_code == 200
    assert response.content == BODY  # the whole body, read before the response is handed back
    assert response.json()["ok"] is True
    assert heard == [(200, threading.current_thread())]  # no helper thread per request


def test_a_port_nobody_listens_on_is_a_connect_error() -> None:
    with socket.socket() as probe:  # a free port, closed again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with _client() as client, pytest.raises(httpx.ConnectError):
        client.get(f"http://127.0.0.1:{port}", timeout=5.0)


@pytest.mark.parametrize("server", ["drip-headers"], indirect=True)
def test_the_openai_client_hears_a_timeout(server: str) -> None:
    """What the retry loop sees: ``APITimeoutError``, a transient error."""
    client = openai.OpenAI(
        base_url=server, api_key="sk-test", max_retries=0, timeout=1.0, http_client=_client()
    )
    with pytest.raises(openai.APITimeoutError):
        client.models.list()


@pytest.mark.parametrize("server", ["whole"], indirect=True)
def test_an_httpx_without_a_public_tls_context_maker_still_works(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """openai 1.x may bring an httpx whose ``create_ssl_context`` is not public."""
    monkeypatch.delattr(httpx, "create_ssl_context")
    with _client() as client:
        assert client.get(server, timeout=5.0).content == BODY
