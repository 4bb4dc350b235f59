"""The batch phase of a map: what is not cached goes in batches; what they answer is stored.

Inside the map's flow run, before the map stage (:func:`run_batch_phase`):

1. calls whose answers are stored are left to the map stage (cache hits, nothing sent);
2. batches recorded by an earlier run of the same output directory and not yet collected
   are waited for (their lines are not sent again);
3. the rest are written as input files (:mod:`~prefect_fanout.batch.lines`), each recorded
   (:mod:`~prefect_fanout.batch.ledger`), uploaded and submitted as a batch, while the
   estimated tokens in flight stay within ``batch_max_tokens``; the others queue;
4. each batch is polled by a ``poll-batch`` task (:mod:`~prefect_fanout.batch.poll`); when it
   ends its lines are taken in (:mod:`~prefect_fanout.batch.results`); a batch the provider
   rejected for its enqueued-token limit is re-submitted once another ended (or split in
   two when none is in flight), never lost;
5. the map stage then uses the batch answers, and sends online the calls whose lines failed,
   expired or were cancelled, with the usual retry budget and failure policy.

With ``batch_wait`` false the phase submits, records and returns: the calls in flight are
``pending`` and the map ends without sending them online; the next run collects them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.futures import PrefectFuture, as_completed

from prefect_fanout.batch.api import FINAL, BatchAPI
from prefect_fanout.batch.ledger import BATCH_DIR, BatchEntry, BatchLedger
from prefect_fanout.batch.lines import MAX_REQUESTS, write_input_files
from prefect_fanout.batch.poll import describe_batch, poll_task
from prefect_fanout.batch.report import BatchReport, BatchRow
from prefect_fanout.batch.results import Settled, line_answer, line_error, settle
from prefect_fanout.bounded import call_within
from prefect_fanout.call.cache import stored_answer
from prefect_fanout.errors import AgentCallError, FanoutError
from prefect_fanout.llm.endpoints import LLMEndpoint
from prefect_fanout.llm.pricing import add_costs
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.llm.transport import Transport
from prefect_fanout.options import CacheMode, CacheOptions, RunOptions

__all__ = ["BatchPendingError", "BatchPhase", "run_batch_phase"]

TOKEN_LIMIT_CODE = "token_limit_exceeded"
ARTIFACT_WAIT_SECONDS = 5.0
SETTLE_WORKERS = 8
"""Lines settled at once when ``max_workers`` is not set."""


class BatchPendingError(FanoutError):
    """Calls still wait in batches at the provider (``batch_wait`` false, outside a map)."""


@dataclass
class BatchPhase:
    """What the batch phase did.

    Attributes:
        outcomes: Item id -> its batch answer, or the error that failed it for good.
        batch_of: Item id -> the batch that answered (or tried to answer) it.
        pending: Item ids still in batches in flight (``batch_wait`` false).
        report: The figures for the summary.
    """

    outcomes: dict[str, AgentResult | AgentCallError] = field(default_factory=dict)
    batch_of: dict[str, str] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    report: BatchReport = field(default_factory=BatchReport)


class _Phase:
    def __init__(
        self,
        requests: Mapping[str, CallRequest],
        *,
        endpoint: LLMEndpoint,
        transport: Transport,
        cache: CacheOptions,
        options: RunOptions,
        output_dir: Path,
        logger: Any,
    ) -> None:
        self.endpoint = endpoint
        self.api = BatchAPI(endpoint)
        self.transport = transport
        self.cache = cache
        self.options = options
        self.logger = logger
        self.ledger = BatchLedger(output_dir)
        self.result = BatchPhase(report=BatchReport(wait=options.batch_wait is not False))
        self.items: dict[str, list[str]] = {}  # cache key -> item ids
        self.request: dict[str, CallRequest] = {}  # cache key -> request
        for item_id, request in requests.items():
            key = request.cache_key()
            self.items.setdefault(key, []).append(item_id)
            self.request.setdefault(key, request)
        self.queue: deque[BatchEntry] = deque()
        self.in_flight: dict[str, tuple[BatchEntry, PrefectFuture[Any]]] = {}
        self.artifacts: dict[str, UUID | None] = {}
        self.resumed: set[str] = set()
        self.mine: list[BatchEntry] = []  # the entries this run queued, in order
        self.held = False  # after a rejection: submit nothing more until a batch ends well

    # ------------------------------------------------------------- what to send

    def missing(self) -> set[str]:
        """Keys of the calls with no stored answer (all of them unless the cache reads).

        The stored answers found are handed to the map stage as they are (cache hits),
        so it does not read them again.
        """
        if self.cache.mode is not CacheMode.ON:
            return set(self.items)
        missing: set[str] = set()
        for key, request in self.request.items():
            stored = stored_answer(request, self.cache)
            if stored is None:
                missing.add(key)
                continue
            for item_id in self.items[key]:
                self.result.outcomes[item_id] = stored.model_copy(update={"item_id": item_id})
        return missing

    def plan(self, missing: set[str]) -> None:
        """Queue the open entries of earlier runs, then new input files for the rest."""
        covered: set[str] = set()
        for entry in self.ledger.open_entries():
            keys = set(self.ledger.keys(entry))
            if not keys & missing:
                entry.collected = True  # every line is stored already
                continue
            covered |= keys
            if entry.batch_id is not None:
                self.resumed.add(entry.batch_id)
            self.queue.append(entry)
            self.mine.append(entry)
        self.ledger.save()
        fresh = [self.request[key] for key in self.items if key in missing - covered]
        if not fresh:
            return
        files = write_input_files(
            fresh,
            self.ledger.directory,
            first=len(self.ledger.entries) + 1,
            max_requests=self.options.batch_max_requests or MAX_REQUESTS,
            max_tokens=self.options.batch_max_tokens,
        )
        self.result.report.sent += self._queue(files)

    # ------------------------------------------------------------- submitting

    def enqueued(self) -> int:
        return sum(entry.tokens for entry, _ in self.in_flight.values())

    def admit(self) -> None:
        """Submit queued entries while the tokens in flight allow (always one if none fly).

        After a rejection nothing more is submitted until a batch in flight has ended.
        """
        limit = self.options.batch_max_tokens
        if self.held and self.in_flight:
            return
        self.held = False
        while self.queue:
            entry = self.queue[0]
            if limit is not None and self.in_flight and self.enqueued() + entry.tokens > limit:
                return
            self.queue.popleft()
            self.submit(entry)

    def submit(self, entry: BatchEntry) -> None:
        """Upload (once), create (or find) the batch, record it, start polling it."""
        if entry.batch_id is None:
            # uploaded by an earlier run that may have created its batch before it died
            recovering = entry.input_file_id is not None and not entry.errors
            if entry.input_file_id is None:
                entry.input_file_id = self.api.upload(self.ledger.output_dir / entry.input_file)
                entry.status = "uploaded"
                self.ledger.save()
            found = self.api.find(entry.input_file_id) if recovering else None
            if found is not None:  # created by a run killed before it could record it
                self.resumed.add(found["id"])
            batch = found or self.api.create(
                entry.input_file_id, {"fanout_input": entry.input_file}
            )
            if found is None:
                self.result.report.created += 1
            entry.batch_id = batch["id"]
            entry.status = batch.get("status", "validating")
            self.ledger.save()
            self.logger.info("batch %s: created for %s", entry.batch_id, entry.input_file)
        else:
            self.logger.info(
                "batch %s: waiting for it (recorded by an earlier run)", entry.batch_id
            )
        if self.options.batch_wait is False:
            self.in_flight[entry.batch_id] = (entry, None)  # type: ignore[arg-type]
            return
        assert entry.batch_id is not None
        artifact = self.artifact(entry)
        future = poll_task(entry.batch_id, self.options.batch_poll_seconds).submit(
            entry.batch_id, self.endpoint, artifact
        )
        self.in_flight[entry.batch_id] = (entry, future)

    def artifact(self, entry: BatchEntry) -> UUID | None:
        """A progress artifact for the batch (best effort)."""
        from prefect.artifacts import create_progress_artifact

        text = f"{entry.batch_id}: {entry.status}, {entry.requests} requests ({entry.input_file})"
        try:
            return call_within(
                ARTIFACT_WAIT_SECONDS,
                "a batch progress artifact",
                create_progress_artifact,
                0.0,
                None,
                text,
            )
        except Exception:
            return None

    # ------------------------------------------------------------- collecting

    def wait(self) -> None:
        """Poll until every batch ended and was taken in, submitting the queue as room opens."""
        self.admit()
        while self.in_flight:
            futures = {id(f): batch_id for batch_id, (_, f) in self.in_flight.items()}
            done = next(iter(as_completed([f for _, f in self.in_flight.values()])))
            batch_id = futures[id(done)]
            entry, _ = self.in_flight.pop(batch_id)
            try:
                batch = done.result()
            except Exception as exc:  # polls gave up: its lines go online
                self.logger.error(
                    "batch %s: polling failed for good (%s); its calls go online", batch_id, exc
                )
                entry.status, entry.collected = "unknown", True
                entry.errors.append(f"poll: {exc}")
                self.ledger.save()
                self.fail_online(self.ledger.keys(entry), batch_id)
            else:
                self.ended(entry, batch)
            self.admit()

    def ended(self, entry: BatchEntry, batch: dict[str, Any]) -> None:
        """Take in an ended batch: re-queue a rejected one, else settle its lines."""
        self.logger.info("batch %s", describe_batch(batch))
        entry.status = str(batch.get("status"))
        entry.request_counts = dict(batch.get("request_counts") or {})
        errors = ((batch.get("errors") or {}).get("data")) or []
        entry.errors += [f"{e.get('code')}: {e.get('message')}" for e in errors]
        if entry.status == "failed" and any(e.get("code") == TOKEN_LIMIT_CODE for e in errors):
            self.rejected(entry)
            return
        keys = self.ledger.keys(entry)
        seen: set[str] = set()
        answers: list[tuple[str, Any]] = []
        for name in ("output_file_id", "error_file_id"):
            for line in self.api.lines(batch.get(name)):
                key = line.get("custom_id")
                if key not in self.items or key in seen:
                    continue
                seen.add(key)
                answer = line_answer(line)
                if answer is None:
                    self.logger.warning(
                        "batch %s: %s failed: %s; sending it online",
                        entry.batch_id,
                        key,
                        line_error(line),
                    )
                    self.fail_online([key], entry.batch_id)
                else:
                    answers.append((key, answer))
        self.take_all(answers, entry.batch_id)
        unanswered = [key for key in keys if key not in seen]
        if unanswered:
            self.logger.warning(
                "batch %s ended %s with %d request(s) unanswered; sending them online",
                entry.batch_id,
                entry.status,
                len(unanswered),
            )
            self.fail_online(unanswered, entry.batch_id)
        entry.collected = True
        self.held = False  # a batch ended: the limit has room again
        self.ledger.save()

    def rejected(self, entry: BatchEntry) -> None:
        """A batch over the enqueued-token limit: send it again later, or split it."""
        self.result.report.resubmitted += 1
        old = entry.batch_id
        self.logger.warning(
            "batch %s was rejected (%s); sending it again later", old, entry.errors[-1]
        )
        if self.in_flight:  # others hold the limit: send it again once one of them ended
            entry.batch_id, entry.status = None, "queued"
            self.ledger.save()
            self.queue.appendleft(entry)
            self.held = True
            return
        keys = self.ledger.keys(entry)
        entry.replaced_by = "split"
        self.ledger.save()
        if len(keys) == 1:
            self.fail_online(keys, old)
            return
        half = len(keys) // 2
        for part in (keys[:half], keys[half:]):
            files = write_input_files(
                [self.request[key] for key in part],
                self.ledger.directory,
                first=len(self.ledger.entries) + 1,
            )
            self._queue(files)

    def _queue(self, files: list[Any]) -> int:
        """Record written input files as queued batches of this run; the requests they hold."""
        for written in files:
            entry = BatchEntry(
                input_file=f"{BATCH_DIR}/{written.path.name}",
                requests=len(written.keys),
                tokens=written.tokens,
                status="queued",
            )
            self.queue.append(self.ledger.add(entry))
            self.mine.append(entry)
        return sum(len(written.keys) for written in files)

    def take_all(self, answers: list[tuple[str, Any]], batch_id: str | None) -> None:
        """Settle answered lines, ``max_workers`` at a time (validation, re-asks, storing)."""

        def one(entry: tuple[str, Any]) -> Settled:
            return settle(self.request[entry[0]], entry[1], self.transport, self.cache)

        workers = self.options.workers(SETTLE_WORKERS)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fanout-batch") as pool:
            for (key, _), settled in zip(answers, pool.map(one, answers), strict=True):
                self.take(key, settled, batch_id)

    def take(self, key: str, settled: Settled, batch_id: str | None) -> None:
        """Record one settled line for every item that asked it."""
        report = self.result.report
        for item_id in self.items[key]:
            if batch_id:
                self.result.batch_of[item_id] = batch_id
            if settled.result is not None:
                self.result.outcomes[item_id] = settled.result.model_copy(
                    update={"item_id": item_id}
                )
            elif settled.error is not None:
                self.result.outcomes[item_id] = settled.error
        if settled.result is not None:
            report.answered += len(self.items[key])
            report.cost_usd = add_costs(report.cost_usd, settled.result.cost_usd)
            report.online_cost_usd = add_costs(report.online_cost_usd, settled.online_cost_usd)
        else:
            report.failed += len(self.items[key])

    def fail_online(self, keys: list[str], batch_id: str | None) -> None:
        """These calls go online in the map stage (their batch gave no answer)."""
        for key in keys:
            for item_id in self.items.get(key, []):
                if batch_id:
                    self.result.batch_of[item_id] = batch_id
                self.result.report.online += 1

    def finish(self) -> BatchPhase:
        """The phase's result, with its report's batch rows."""
        if self.options.batch_wait is False:
            for entry in [*self.queue, *(e for e, _ in self.in_flight.values())]:
                for key in self.ledger.keys(entry):
                    for item_id in self.items.get(key, []):
                        self.result.pending.add(item_id)
                        if entry.batch_id:
                            self.result.batch_of[item_id] = entry.batch_id
            self.result.report.pending = len(self.result.pending)
        self.result.report.resumed = len(self.resumed)
        self.result.report.batches = [
            BatchRow(
                batch_id=e.batch_id,
                input_file=e.input_file,
                status=e.status,
                requests=e.requests,
                completed=e.request_counts.get("completed", 0),
                failed=e.request_counts.get("failed", 0),
                resumed=e.batch_id in self.resumed,
            )
            for e in self.mine
        ]
        return self.result

    def check_once(self) -> None:
        """Without waiting: take in the batches that ended, submit what the queue allows."""
        for entry in list(self.queue):
            if entry.batch_id is None:
                continue
            batch = self.api.retrieve(entry.batch_id)
            if batch.get("status") in FINAL:
                self.queue.remove(entry)
                self.ended(entry, batch)
        self.admit()


def run_batch_phase(
    requests: Mapping[str, CallRequest],
    *,
    endpoint: LLMEndpoint,
    transport: Transport,
    cache: CacheOptions,
    options: RunOptions,
    output_dir: Path,
    logger: Any | None = None,
) -> BatchPhase:
    """Answer a map's uncached calls through the Batch API (inside its flow run).

    Args:
        requests: Item id -> its call (context applied).
        endpoint: The endpoint whose Batch API answers them.
        transport: The run's transport (re-asks of invalid answers go online through it).
        cache: The run's cache settings.
        options: The run's options (``batch_wait``, ``batch_max_tokens``,
            ``batch_max_requests``, ``batch_poll_seconds``).
        output_dir: The map's output directory (``batches/`` is written there).
        logger: Where progress goes.

    Returns:
        The answers, the batch of each item, the pending items and the report.
    """
    phase = _Phase(
        requests,
        endpoint=endpoint,
        transport=transport,
        cache=cache,
        options=options,
        output_dir=output_dir,
        logger=logger or logging.getLogger("prefect_fanout.batch"),
    )
    phase.plan(phase.missing())
    if options.batch_wait is False:
        phase.check_once()
    else:
        phase.wait()
    return phase.finish()
