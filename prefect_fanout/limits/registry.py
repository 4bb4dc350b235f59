"""One limiter per endpoint and limits in a process, and whether limits are shared.

Limits are shared through the Prefect server when one is configured
(``PREFECT_API_URL``, from the environment or the active profile): every process
that talks to that server and calls the endpoint takes its turn through the
server's global concurrency limits. Without one, Prefect starts an embedded
server for the run alone, which no other process can reach; the limits then hold
within the process only (no API calls are made for them).
"""

from __future__ import annotations

import threading
from typing import Any

from prefect_fanout.limits.limiter import EndpointLimiter
from prefect_fanout.limits.server import PrefectBackend, endpoint_key
from prefect_fanout.limits.spec import LimitSpec

_limiters: dict[tuple[str, LimitSpec, bool], EndpointLimiter] = {}
_backend: PrefectBackend | None = None
_lock = threading.Lock()


def shared_server() -> bool:
    """True when a Prefect server is configured, so limits can be shared across processes."""
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


def limiter_for(endpoint: Any) -> EndpointLimiter:
    """The process's limiter for an endpoint, created on first use.

    The endpoint is anything with ``base_url``, the three limits and ``key_value()``.
    An endpoint without limits still gets one: it learns the provider's limits from
    the answers' headers, and a 429 pauses its other callers.
    """
    global _backend
    spec = LimitSpec.of(endpoint)
    # With a server, even an endpoint without limits may share what it learns of the
    # provider's (prefect_fanout.limits.learning); the backend asks nothing until then.
    shared = shared_server()
    key = endpoint_key(endpoint.base_url, endpoint.key_value())
    with _lock:
        limiter = _limiters.get((key, spec, shared))
        if limiter is None:
            if shared and _backend is None:
                _backend = PrefectBackend()
            limiter = EndpointLimiter(key, spec, _backend if shared else None)
            _limiters[(key, spec, shared)] = limiter
        return limiter


def forget_limiters() -> None:
    """Drop every limiter of the process (a test, or a new run with other limits)."""
    with _lock:
        _limiters.clear()
