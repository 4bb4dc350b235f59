"""A counting relay in front of a Prefect server: how many API requests a run makes.

``with Relay(api_url) as relay:`` serves on a free loopback port and forwards every
request to the server; ``relay.api_url`` is what the client is pointed at, and
``relay.counts`` maps ``METHOD /path`` (ids replaced by ``{id}``) to requests seen.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import Counter

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class Relay:
    """Forward HTTP requests to ``target`` (a Prefect API URL), counting them."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._client = httpx.AsyncClient(timeout=120)
        self.app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self._forward,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"],
                )
            ]
        )

    @property
    def total(self) -> int:
        """Requests forwarded so far."""
        with self._lock:
            return sum(self.counts.values())

    def reset(self) -> None:
        """Forget the counts."""
        with self._lock:
            self.counts.clear()

    async def _forward(self, request: Request) -> Response:
        path = request.url.path
        prefix = "/api"
        rest = path[len(prefix) :] if path.startswith(prefix) else path
        with self._lock:
            self.counts[f"{request.method} {_ID.sub('{id}', rest)}"] += 1
        url = self.target + rest + (f"?{request.url.query}" if request.url.query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        answer = await self._client.request(
            request.method, url, headers=headers, content=await request.body()
        )
        out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        return Response(answer.content, answer.status_code, headers=out)

    def __enter__(self) -> Relay:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.api_url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)
