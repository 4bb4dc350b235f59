"""Endpoint limits: ``max_concurrency``, ``requests_per_minute`` and ``tokens_per_minute``.

- :mod:`~prefect_fanout.limits.spec`: the limits as one checked value;
- :mod:`~prefect_fanout.limits.estimate`: the tokens a request is counted for;
- :mod:`~prefect_fanout.limits.pacer`: spreading a rate over time;
- :mod:`~prefect_fanout.limits.server`: sharing limits through the Prefect server;
- :mod:`~prefect_fanout.limits.backoff`: what a 429 does to every caller;
- :mod:`~prefect_fanout.limits.limiter`: the in-process limiter of one endpoint;
- :mod:`~prefect_fanout.limits.registry`: one limiter per endpoint in a process;
- :mod:`~prefect_fanout.limits.hook`: the transport's one call into all this.
"""

from prefect_fanout.limits.estimate import DEFAULT_COMPLETION_TOKENS, estimate_tokens
from prefect_fanout.limits.limiter import EndpointLimiter, LimiterStats, Permit
from prefect_fanout.limits.registry import forget_limiters, limiter_for
from prefect_fanout.limits.spec import LimitSpec

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "EndpointLimiter",
    "LimitSpec",
    "LimiterStats",
    "Permit",
    "estimate_tokens",
    "forget_limiters",
    "limiter_for",
]
