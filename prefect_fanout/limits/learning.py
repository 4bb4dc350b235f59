"""Learning an endpoint's rate limits from its answers, when nobody typed them.

The rules (the limiter applies them under its lock):

- **A first request alone.** While an endpoint's request and token rates are both
  unknown (no flag, no endpoint field, nothing learned), its first request goes
  alone; the others wait for its answer (at most :data:`PROBE_WAIT_SECONDS`: a slow or
  hung first request does not hold the run back), whose ``x-ratelimit-*`` headers
  (:mod:`~prefect_fanout.limits.learned`) give the provider's rates. With a Prefect
  server, what one process learned is kept there (a variable named after the
  endpoint), so the next process starts from it without a probe, and both take the
  learned rate from one shared limit, never each the whole of it. An endpoint whose
  first answer carried no such headers (a local server, vLLM) is kept as such, so the
  next process sends its first requests at once too.
- **Explicit values win.** A rate set by a flag, an endpoint field or a plan's config
  is never replaced by a learned one; the other rate may still be learned.
- **How tokens are counted.** OpenAI counts a request's prompt plus ``max_tokens``
  when it admits it; other servers count what was used. The probe's answer tells
  which: if the drop in ``x-ratelimit-remaining-tokens`` is nearer the estimate
  (prompt + ``max_tokens``) than the reported usage, tokens a request did not use are
  not handed back to the pace.
- **No headers: the 429s settle the pace.** At a 429 with no known request rate
  (at most one a second), the rate becomes 95% of the rate at which requests were
  answered over the last :data:`GUESS_WINDOW_SECONDS` (what the provider admits when
  it turns requests away), at least :data:`GUESS_FLOOR_PER_MINUTE`, and never goes up at
  a 429; after :data:`GUESS_RECOVERY_SECONDS` without a 429 it grows by 10%, and after
  :data:`GUESS_EXPIRY_SECONDS` without one the guess is dropped (a passing 429 does not
  slow a run for good).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from prefect_fanout.limits.learned import ProviderLimits

GUESS_RECOVERY_SECONDS = 20.0
"""Seconds without a 429 after which a guessed request rate grows by 10%."""

PROBE_WAIT_SECONDS = 10.0
"""The longest the other requests wait for the first one's answer to learn the limits."""

GUESS_EXPIRY_SECONDS = 60.0
"""Seconds without a 429 after which a guessed request rate is dropped."""

GUESS_FLOOR_PER_MINUTE = 60
"""The lowest request rate a guess sets (one a second)."""

GUESS_WINDOW_SECONDS = 10.0
"""The window whose answered requests give the guess of a provider's request rate."""


@dataclass
class Probe:
    """Where the first request to an endpoint whose rates are unknown stands.

    Attributes:
        state: ``wanted`` (nobody has gone yet), ``asking`` (a caller reads what
            another process learned), ``running`` (the first request is on its way)
            or ``done``.
    """

    state: str = "done"
    started: float = 0.0


class Learning:
    """What one endpoint's limiter knows of the provider's limits (not thread-safe).

    Args:
        explicit_rpm: The request rate the user set (None: learn it).
        explicit_tpm: The token rate the user set (None: learn it).
    """

    def __init__(self, explicit_rpm: int | None, explicit_tpm: int | None) -> None:
        self.explicit = {"rpm": explicit_rpm, "tpm": explicit_tpm}
        self.probe = Probe("done" if explicit_rpm or explicit_tpm else "wanted")
        self.heard = False
        self.guessed = False
        self.hand_back = True
        self.said_token_bound = False
        self._recent: deque[float] = deque()
        self._first: float | None = None
        self._last_429 = -math.inf
        self._last_change = -math.inf

    def rates_from(self, said: ProviderLimits) -> dict[str, int]:
        """The rates to set from what an answer said (only those not set explicitly)."""
        self.heard = True
        self.guessed = False
        found = {"rpm": said.requests_per_minute, "tpm": said.tokens_per_minute}
        return {k: v for k, v in found.items() if v and self.explicit[k] is None}

    def counting_from(self, said: ProviderLimits, estimate: int, reported: int | None) -> None:
        """Decide from the probe's answer whether the provider counts ``max_tokens`` up front."""
        if said.tokens_per_minute is None or said.remaining_tokens is None or reported is None:
            return
        drop = said.tokens_per_minute - said.remaining_tokens
        self.hand_back = abs(drop - reported) < abs(drop - estimate)

    def answered(self, now: float) -> None:
        """A request was answered (kept while the request rate may have to be guessed)."""
        if self.heard or self.explicit["rpm"]:
            return
        if self._first is None:
            self._first = now
        self._recent.append(now)
        while self._recent and self._recent[0] < now - GUESS_WINDOW_SECONDS:
            self._recent.popleft()

    def on_429(self, now: float, current_rpm: int | None) -> int | None:
        """A 429 without rate headers: the request rate to pace at from now (None: keep)."""
        self._last_429 = now
        if self.heard or self.explicit["rpm"] or now - self._last_change < 1.0:
            return None
        window = min(GUESS_WINDOW_SECONDS, max(1.0, now - (self._first or now)))
        answered = sum(1 for t in self._recent if t >= now - window)
        guess = max(GUESS_FLOOR_PER_MINUTE, int(answered / window * 60 * 0.95))
        if self.guessed and current_rpm is not None:
            guess = min(guess, current_rpm)
        self.guessed = True
        self._last_change = now
        return guess

    def recovered(self, now: float, current_rpm: int | None) -> int | None:
        """A guessed rate after a quiet stretch: 10% more, 0 to drop it (None: keep it)."""
        if not self.guessed or current_rpm is None:
            return None
        if now - self._last_429 >= GUESS_EXPIRY_SECONDS:
            self.guessed = False
            return 0
        quiet = now - max(self._last_429, self._last_change)
        if quiet < GUESS_RECOVERY_SECONDS:
            return None
        self._last_change = now
        return max(current_rpm + 1, int(current_rpm * 1.1))
