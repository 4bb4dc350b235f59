"""The map stage on a Prefect work pool: each chunk a flow run of a deployed ``fanout-partition``.

With ``partition_deployment`` (``--partition-deployment FLOW/DEPLOYMENT``) the map
writes each chunk's calls to ``.fanout-chunks/`` beside local result storage and starts
one flow run of that deployment per chunk (``run_deployment``); any Prefect worker
of the deployment's work pool (process, Docker, Kubernetes) picks it up and runs
the chunk's calls as agent-call task runs, ``max_workers`` at once, storing each
answer in result storage as the call ends. The parent waits for its child runs
(bounded; it says which runs it waits for), reads their answers from result
storage, writes the partition files, merges and reduces.

Calls already stored are answered in the parent and never sent, so rerunning the
same command after a child crashed or was cancelled starts flow runs only for the
chunks with missing answers, and those ask only their missing calls. The workers
must share the result storage, the output directory and the Prefect API with the
parent (README "Task runners").
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect_fanout.call.cache import stored_answer
from prefect_fanout.call.window import CallOutcome
from prefect_fanout.engine.child_runs import child_run_name
from prefect_fanout.engine.chunks import (
    WAIT_NOTE_SECONDS,
    ChunkDone,
    ChunkRun,
    ChunkWork,
    chunk_size,
    cut_chunks,
    wait_bound,
)
from prefect_fanout.errors import AgentCallError, ConfigurationError
from prefect_fanout.files import write_text_atomic
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.mapping.corpus import Item
from prefect_fanout.options import CacheMode, CacheOptions, RunOptions

__all__ = [
    "CHUNKS_DIR",
    "check_partition_deployment",
    "read_chunk_file",
    "run_deployed_chunks",
    "run_partition_chunk",
]

CHUNKS_DIR = ".fanout-chunks"
"""Where the parent writes each chunk's calls for its flow run (beside local result storage)."""

POLL_SECONDS = 1.0
"""How often the parent reads its child runs' states."""

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def check_partition_deployment(options: RunOptions) -> None:
    """Refuse ``partition_deployment`` where child runs could not answer for the parent.

    Raises:
        ConfigurationError: The cache is off (answers reach the parent through result
            storage), or the endpoint is an object (its key cannot travel as a
            parameter: give an ``LLMEndpoint`` block's name, or set ``OPENAI_*`` on the
            workers).
    """
    if not options.partition_deployment:
        return
    if options.cache == CacheMode.OFF:
        raise ConfigurationError(
            "--partition-deployment needs the cache: child runs hand their answers to the "
            "map through result storage; drop --no-cache"
        )
    if options.endpoint is not None and not isinstance(options.endpoint, str):
        raise ConfigurationError(
            "partition_deployment: the endpoint must be an LLMEndpoint block's name (its key "
            "cannot travel in a flow run's parameters), or unset with OPENAI_* on the workers"
        )


def write_chunk_file(calls: list[tuple[str, CallRequest]]) -> Path:
    """Write a chunk's calls (item id, request) as JSON beside result storage; its path.

    The file is named by its content, in ``.fanout-chunks`` beside local result storage
    (which the workers share with the map), so the same chunk is one file.
    """
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    document = {
        "calls": [
            {"id": item_id, "request": request.model_dump(mode="json")}
            for item_id, request in calls
        ]
    }
    text = json.dumps(document)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    folder = Path(str(PREFECT_LOCAL_STORAGE_PATH.value())).expanduser() / CHUNKS_DIR
    path = folder / f"{digest}.json"
    if not path.exists():
        write_text_atomic(path, text)
    return path


def read_chunk_file(path: str) -> list[tuple[str, CallRequest]]:
    """A chunk's calls from the file the parent wrote."""
    document = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(c["id"], CallRequest.model_validate(c["request"])) for c in document["calls"]]


def run_partition_chunk(
    chunk_file: str, options: RunOptions | None, threads: int
) -> dict[str, Any]:
    """The body of a ``fanout-partition`` flow run: one chunk's calls, ``threads`` at once.

    Returns:
        Counts of the chunk's calls: ``calls``, ``completed``, ``failed``, ``cached``.
    """
    from prefect_fanout.agents.resolver import Resolver
    from prefect_fanout.engine.chunks import run_chunk

    calls = read_chunk_file(chunk_file)
    options = RunOptions.of(options)
    resolver = Resolver(options)
    work = ChunkWork(
        key="",
        index=0,
        calls=tuple(calls),
        transports={model: resolver.transport(model) for model in {r.model for _, r in calls}},
        cache=options.cache_options(),
        threads=max(1, threads),
    )
    done: ChunkDone = run_chunk.fn(work)
    failed = [item_id for item_id, _result, error in done.outcomes if error is not None]
    return {
        "calls": len(calls),
        "completed": len(calls) - len(failed),
        "failed": len(failed),
        "cached": sum(1 for _, result, _ in done.outcomes if result is not None and result.cached),
        "failed_ids": failed[:50],
    }


def run_deployed_chunks(
    deployment: str,
    groups: Mapping[str, list[Item]],
    requests: Mapping[str, CallRequest],
    *,
    options: RunOptions,
    cache: CacheOptions,
    max_workers: int,
    measured: ChunkRun,
    logger: Any,
) -> Iterator[CallOutcome[tuple[str, Item]]]:
    """Send every chunk with a missing answer as a flow run of ``deployment``; yield outcomes.

    Args:
        deployment: ``FLOW/DEPLOYMENT`` of the ``fanout-partition`` flow.
        groups: Partition key -> items.
        requests: Each item's request (tagged ``partition:KEY``), by id.
        options: The run's options (the child runs' ``options`` parameter).
        cache: The cache settings of every call.
        max_workers: Calls in flight at most in each child run.
        measured: Filled with the chunk count, size and threads.
        logger: Where the waits are reported.
    """
    from prefect import get_client
    from prefect.deployments import run_deployment

    total = sum(len(items) for items in groups.values())
    size = chunk_size(total, 2, options.chunk_size)
    measured.size, measured.threads = size, max_workers
    started: dict[str, tuple[str, list[tuple[str, Item]]]] = {}  # flow run id -> name, missing
    for key, items in groups.items():
        chunks = cut_chunks(items, size)
        for index, chunk in enumerate(chunks):
            missing: list[tuple[str, Item]] = []
            for item in chunk:
                on = cache.mode is CacheMode.ON
                hit = stored_answer(requests[item.id], cache) if on else None
                if hit is not None:
                    yield CallOutcome((key, item), hit, None)
                else:
                    missing.append((key, item))
            if not missing:
                continue
            path = write_chunk_file([(item.id, requests[item.id]) for _, item in missing])
            name = child_run_name(f"partition {key}", index + 1, len(chunks))
            flow_run = run_deployment(
                deployment,
                parameters={
                    "chunk_file": str(path.resolve()),
                    "options": options.model_dump(mode="json", exclude_none=True),
                    "threads": max_workers,
                },
                flow_run_name=name,
                timeout=0,  # started, not awaited here: the loop below waits for all of them
            )
            started[str(flow_run.id)] = (name, missing)
            measured.chunks += 1
    if not started:
        return
    logger.info(
        "map: %d chunk(s) of up to %d calls sent as flow runs of %s", len(started), size, deployment
    )
    bound = wait_bound(total, max_workers, options.timeout_seconds or 120.0)
    deadline = time.monotonic() + bound
    noted = time.monotonic()
    with get_client(sync_client=True) as client:
        while started:
            for run_id in list(started):
                run = client.read_flow_run(run_id)
                state = run.state
                if state is None or state.type.value not in FINAL:
                    continue
                name, missing = started.pop(run_id)
                yield from _answers(name, state.name, missing, requests, cache)
            if not started:
                break
            now = time.monotonic()
            if now > deadline:
                for name, missing in started.values():
                    reason = f"flow run {name} not finished within {bound:.0f} s; rerun to resume"
                    for key_item in missing:
                        yield CallOutcome(key_item, None, AgentCallError(reason))
                return
            if now - noted > WAIT_NOTE_SECONDS:
                noted = now
                names = ", ".join(name for name, _ in list(started.values())[:5])
                logger.info(
                    "map: waiting for %d flow run(s) of %s (at most %.0f s more): %s",
                    len(started),
                    deployment,
                    deadline - now,
                    names,
                )
            time.sleep(POLL_SECONDS)


def _answers(
    name: str,
    state: str,
    missing: list[tuple[str, Item]],
    requests: Mapping[str, CallRequest],
    cache: CacheOptions,
) -> Iterator[CallOutcome[tuple[str, Item]]]:
    """A finished child run's calls: the answers it stored, the others failed."""
    for key, item in missing:
        answer = stored_answer(requests[item.id], replace(cache, mode=CacheMode.ON))
        if answer is not None:
            yield CallOutcome((key, item), answer.model_copy(update={"cached": False}), None)
        else:
            error = AgentCallError(
                f"no answer stored by flow run {name} ({state}); see its logs, rerun to ask again"
            )
            yield CallOutcome((key, item), None, error)
