"""What a 429 does to every caller of an endpoint in the process: a pause and a slower pace.

The rule:

- **Pause.** New requests to the endpoint wait until the time the 429 asked for:
  ``retry-after-ms`` or ``Retry-After``, else the longer of the
  ``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` headers (``1s``,
  ``6m0s``, ``20ms``...), else :data:`DEFAULT_PAUSE_SECONDS`; a pause is capped at
  :data:`MAX_PAUSE_SECONDS`. Requests already on their way are not stopped.
- **Slower pace.** Each 429 halves the process's *factor* (down to
  :data:`MIN_FACTOR`). The factor slows the request and token rates (their
  intervals last ``1 / factor`` times as long) and caps the requests in flight at
  ``factor`` times ``max_concurrency`` (or, with no ``max_concurrency``, times the
  most requests the process has had in flight so far, never the accidental low of
  the moment: a 429 while one probe is alone in flight must not cap a run at 1),
  at least 1.
- **Recovery.** After :data:`RECOVERY_SECONDS` without a 429 the factor doubles,
  and so on every :data:`RECOVERY_SECONDS` until it is back to 1.

The call that got the 429 keeps its own retry budget and wait (see
:mod:`prefect_fanout.llm.retry`): the pause only holds back the other callers.
"""

from __future__ import annotations

import email.utils
import re
import time
from typing import Any

DEFAULT_PAUSE_SECONDS = 1.0
MAX_PAUSE_SECONDS = 60.0
MIN_FACTOR = 1.0 / 16.0
RECOVERY_SECONDS = 30.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def reset_seconds(text: str) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value (``1s``, ``6m0s``, ``20ms``, or a number)."""
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def retry_after_seconds(exc: BaseException) -> float | None:
    """The wait the server asked for, from ``retry-after-ms`` or ``Retry-After``."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(raw) if raw else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - time.time())


def pause_seconds(exc: BaseException) -> float:
    """How long a 429 asks every caller to wait (see the module's rule)."""
    asked = retry_after_seconds(exc)
    if asked is None:
        headers: Any = getattr(getattr(exc, "response", None), "headers", None) or {}
        resets = [
            reset_seconds(str(headers.get(name)))
            for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens")
            if headers.get(name)
        ]
        known = [value for value in resets if value is not None]
        asked = max(known) if known else DEFAULT_PAUSE_SECONDS
    return min(asked, MAX_PAUSE_SECONDS)


class Adaptation:
    """The factor of the rule above, for one endpoint in one process.

    Not thread-safe: the limiter calls it under its lock.
    """

    def __init__(self) -> None:
        self.factor = 1.0
        self.changed = 0.0
        self.reference: int | None = None

    def on_429(self, now: float, in_flight: int) -> None:
        """A 429: halve the factor; remember the most requests in flight so far."""
        if self.factor >= 1.0:
            self.reference = max(1, in_flight, self.reference or 0)
        self.factor = max(MIN_FACTOR, self.factor / 2.0)
        self.changed = now

    def current(self, now: float) -> float:
        """The factor now, doubled once per :data:`RECOVERY_SECONDS` without a 429."""
        while self.factor < 1.0 and now - self.changed >= RECOVERY_SECONDS:
            self.factor = min(1.0, self.factor * 2.0)
            self.changed += RECOVERY_SECONDS
        return self.factor

    def cap(self, now: float, max_concurrency: int | None) -> int | None:
        """The most requests in flight the factor allows (None: no cap from the rule)."""
        factor = self.current(now)
        if factor >= 1.0:
            return max_concurrency
        base = max_concurrency or self.reference or 1
        return max(1, int(base * factor))
