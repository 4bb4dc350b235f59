"""The one usage ledger: calls, cache hits, failures, tokens and cost of a run.

Every shape reports usage through :class:`Ledger`: dispatch results, map
summaries (per stage), the tree reduce and the UI's summary artifact. Its rule,
in one place: a ledger counts what *this run* spent. Tokens and cost add up
over the calls the model answered in this run; a cache hit counts as a call and
a hit but spends nothing; a failed call counts as a failure, and the tokens
its answered asks spent (invalid or cut answers) count too. Cost is ``None``
as soon as one paid call has an unknown price, never a made-up zero.

:class:`CallRecord` is one call as records, tables and ledgers see it; the
per-call figures keep the original usage of a cached answer (its cost in this
run is 0).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from pydantic import BaseModel

from prefect_fanout.llm.pricing import add_costs
from prefect_fanout.llm.result import AgentResult


class Usage(BaseModel):
    """Tokens and cost.

    Attributes:
        prompt_tokens: Tokens sent.
        completion_tokens: Tokens received.
        cost_usd: What this run paid in USD: 0 for cache hits, ``None`` when
            the price of a model that answered is unknown.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0


class CallRecord(BaseModel):
    """One call as the run's artifacts, summaries and ledgers see it.

    Attributes:
        id: The item, task or group id.
        agent: The agent that answered (or was asked).
        model: The model, when known (as the server reported it).
        finish_reason: Why the answer ended (``stop``, ``length``...), when known.
        status: ``completed``, ``failed``, ``skipped`` or ``dead_letter``.
        attempts: HTTP requests this run made for it (0 for a cache hit).
        cached: Answered from the cache.
        prompt_tokens: Prompt tokens of the answer (the original call's for a hit).
        completion_tokens: Completion tokens of the answer.
        cost_usd: What this run paid: 0 for cache hits, None for an unknown price.
        latency_s: Seconds the call took.
        error: Why it did not complete.
        partition: The map partition, if any.
        limit_wait_s: Seconds its requests waited for the endpoint's limits in this run.
        endpoint: The endpoint (base URL) the call went to, when known.
        batch_id: The Batch API batch that answered (or tried to answer) it, if any.
    """

    id: str
    agent: str
    model: str | None = None
    finish_reason: str | None = None
    status: str
    attempts: int = 0
    cached: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float | None = None
    error: str | None = None
    partition: str | None = None
    limit_wait_s: float = 0.0
    endpoint: str | None = None
    batch_id: str | None = None

    @classmethod
    def from_error(
        cls,
        call_id: str,
        agent: str,
        model: str | None,
        error: BaseException | None,
        status: str = "failed",
        message: str | None = None,
        partition: str | None = None,
    ) -> CallRecord:
        """A failed call's record, with what its asks spent (see ``AgentCallError``)."""
        return cls(
            id=call_id,
            agent=agent,
            model=getattr(error, "model", None) or model,
            finish_reason=getattr(error, "finish_reason", None),
            status=status,
            attempts=getattr(error, "attempts", 1),
            prompt_tokens=getattr(error, "prompt_tokens", 0),
            completion_tokens=getattr(error, "completion_tokens", 0),
            cost_usd=getattr(error, "cost_usd", None),
            error=message,
            partition=partition,
            limit_wait_s=getattr(error, "limit_wait_s", 0.0),
        )

    @classmethod
    def from_result(
        cls, call_id: str, result: AgentResult, partition: str | None = None
    ) -> CallRecord:
        """A completed call's record from its result."""
        return cls(
            id=call_id,
            agent=result.agent,
            model=result.model,
            finish_reason=result.finish_reason,
            status="completed",
            attempts=0 if result.cached else result.attempts,
            cached=result.cached,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            cost_usd=result.run_cost_usd,
            latency_s=result.latency_s,
            partition=partition,
            limit_wait_s=0.0 if result.cached else result.limit_wait_s,
            endpoint=result.endpoint,
        )


class Ledger(Usage):
    """Calls, cache hits, failures, and the tokens and cost this run spent.

    Attributes:
        calls: Calls made (cache hits and failures included).
        cached: Calls answered from the cache (this run paid nothing for them).
        failed: Calls that did not complete.
    """

    calls: int = 0
    cached: int = 0
    failed: int = 0

    def add(
        self,
        result: AgentResult | None,
        failed: bool = False,
        error: BaseException | None = None,
    ) -> None:
        """Count one finished call from its result (None or ``failed`` for a failure).

        A failure's ``error`` (an ``AgentCallError``) brings what its asks spent.
        """
        if failed or result is None:
            self._count(
                "failed",
                False,
                getattr(error, "prompt_tokens", 0),
                getattr(error, "completion_tokens", 0),
                getattr(error, "cost_usd", None),
            )
        else:
            self._count(
                "completed",
                result.cached,
                result.prompt_tokens,
                result.completion_tokens,
                result.cost_usd,
            )

    def add_record(self, record: CallRecord) -> None:
        """Count one call from its record."""
        self._count(
            record.status,
            record.cached,
            record.prompt_tokens,
            record.completion_tokens,
            record.cost_usd,
        )

    def _count(
        self, status: str, cached: bool, prompt: int, completion: int, cost: float | None
    ) -> None:
        self.calls += 1
        if status != "completed":
            self.failed += 1
            if prompt or completion:  # a failed call's asks were answered: they count
                self.prompt_tokens += prompt
                self.completion_tokens += completion
                self.cost_usd = add_costs(self.cost_usd, cost)
            return
        if cached:
            self.cached += 1
            return
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cost_usd = add_costs(self.cost_usd, cost)

    def merge(self, other: Ledger) -> None:
        """Add another ledger's figures to this one."""
        self.calls += other.calls
        self.cached += other.cached
        self.failed += other.failed
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd = add_costs(self.cost_usd, other.cost_usd)

    def usage(self) -> Usage:
        """Just the tokens and cost."""
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost_usd=self.cost_usd,
        )

    @classmethod
    def of_records(cls, records: Iterable[CallRecord]) -> Ledger:
        """The ledger of a set of call records."""
        ledger = cls()
        for record in records:
            ledger.add_record(record)
        return ledger


def limit_wait_by_endpoint(records: Sequence[CallRecord]) -> dict[str, tuple[int, float]]:
    """Per endpoint: the calls of this run and the seconds they waited for its limits.

    Cache hits are left out (they sent nothing); so are calls answered by the
    offline ``test`` model (no endpoint) that did not wait.
    """
    totals: dict[str, tuple[int, float]] = {}
    for record in records:
        if record.cached or (record.endpoint is None and not record.limit_wait_s):
            continue
        name = record.endpoint or "(unknown endpoint)"
        calls, waited = totals.get(name, (0, 0.0))
        totals[name] = (calls + 1, waited + record.limit_wait_s)
    return totals
