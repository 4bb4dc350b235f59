"""The content cache of agent calls, built on Prefect's cache policies.

The key is :meth:`CallRequest.cache_key` of the request *after* upstream context
is added: endpoint URL, model, messages, sampling, output schema and the
profile's prompt parts. Never the flow-run id, the API key or client objects.
Results persist in Prefect result storage (local by default, configurable), so
the cache hits across flow runs and processes. Identical calls running at the
same time serialise on a lock (:mod:`prefect_fanout.call.locks`): the first makes the
HTTP request, the others read its record.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.filesystems import LocalFileSystem
from prefect.results import (
    ResultRecord,
    ResultStore,
    get_default_result_storage,
    resolve_result_storage,
)
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH
from prefect.transactions import IsolationLevel

from prefect_fanout.call.locks import FlockLockManager
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.result import AgentResult
from prefect_fanout.options import CacheMode, CacheOptions

logger = logging.getLogger("prefect_fanout.cache")


@dataclass
class AgentCallCachePolicy(CachePolicy):
    """Keys an agent call by the content of its request (with upstream context)."""

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """The request's content hash; upstream context is part of the content."""
        request = inputs.get("request")
        if request is None:
            return None
        return request.with_context(inputs.get("context")).cache_key()


_lock_managers: dict[Path, FlockLockManager] = {}
_lock_managers_guard = threading.Lock()


def lock_directory() -> Path:
    """Where call locks live: beside the local result storage."""
    return Path(str(PREFECT_LOCAL_STORAGE_PATH.value())).expanduser() / ".fanout-locks"


def _lock_manager() -> FlockLockManager:
    directory = lock_directory()
    with _lock_managers_guard:
        manager = _lock_managers.get(directory)
        if manager is None:
            manager = FlockLockManager(directory)
            _lock_managers[directory] = manager
        return manager


def task_cache_options(options: CacheOptions) -> dict[str, Any]:
    """The Prefect ``Task.with_options`` arguments for these cache options."""
    if options.mode is CacheMode.OFF:
        return {"cache_policy": NO_CACHE, "persist_result": False, "refresh_cache": False}
    policy = AgentCallCachePolicy().configure(
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=_lock_manager(),
    )
    settings: dict[str, Any] = {
        "cache_policy": policy,
        "persist_result": True,
        "refresh_cache": options.mode is CacheMode.REFRESH,
        "cache_expiration": options.expiration,
    }
    if options.result_storage is not None:
        settings["result_storage"] = options.result_storage
    return settings


_stores: dict[str, ResultStore] = {}
_stores_guard = threading.Lock()


def _result_store(options: CacheOptions) -> ResultStore:
    """A result store reading from the options' storage (Prefect's default when None)."""
    name = repr(options.result_storage)
    with _stores_guard:
        store = _stores.get(name)
        if store is None:
            if options.result_storage is None:
                storage = get_default_result_storage(_sync=True)
            else:
                storage = resolve_result_storage(options.result_storage, _sync=True)
            store = ResultStore(result_storage=storage)
            _stores[name] = store
        return store


def _local_record_path(store: ResultStore, key: str) -> Path | None:
    """Where a local result storage keeps the record of ``key``; None for other storage."""
    storage = store.result_storage
    if store.metadata_storage is not None or not isinstance(storage, LocalFileSystem):
        return None
    if not storage.basepath:
        return None
    return Path(storage.basepath).expanduser() / key


def _read_record(store: ResultStore, key: str, path: Path | None) -> ResultRecord[Any] | None:
    """The stored record of ``key``, or None when there is none.

    On local storage the file is read and deserialised directly: a cache hit of a rerun
    is then one read (1,000 hits: 0.07 s), where the storage block resolves the path
    four times per read (0.7 s). Other storage goes through the result store.
    """
    if path is None:
        return store.read(key)
    try:
        content = path.read_bytes()
    except FileNotFoundError:  # a miss: the common case of a first run
        return None
    return ResultRecord.deserialize(content, backup_serializer=store.serializer)


def stored_answer(request: CallRequest, options: CacheOptions) -> AgentResult | None:
    """The stored answer of a call, read straight from result storage, or None.

    This is the cache's fast path: a hit costs one read of the stored record, not a
    task run, so a rerun whose answers are all stored takes seconds. The run's
    per-call table artifact still lists every hit (``cached: true``). Only mode
    ``on`` reads; a missing, expired or unreadable record is a miss, and the call
    then goes through the agent-call task as usual (which writes the record).

    Args:
        request: The request with its upstream context already applied.
        options: The call's cache options.

    Returns:
        The stored result marked ``cached``, or None.
    """
    if options.mode is not CacheMode.ON:
        return None
    store = _result_store(options)
    key = request.cache_key()
    try:
        record = _read_record(store, key, _local_record_path(store, key))
    except Exception as exc:  # missing, or damaged: the task asks again and rewrites it
        if "does not exist" not in str(exc):
            logger.warning(
                "[%s] the cached answer %s is unreadable (%s); asking again and rewriting it",
                request.label,
                key,
                " ".join(str(exc).split())[:200],
            )
        return None
    if record is None:
        return None
    expiration = record.metadata.expiration
    if expiration is not None and expiration <= datetime.now(UTC):
        return None
    result = record.result
    if not isinstance(result, AgentResult):
        return None
    return result.as_cached()


def store_answer(request: CallRequest, result: AgentResult, options: CacheOptions) -> None:
    """Store an answer made outside the agent-call task where that task would store it.

    The record is the one the task's cache writes: the same result store (the options'
    storage, Prefect's default when None), the call's cache key as the storage key, and the
    options' expiration. So :func:`stored_answer` and the agent-call task's own cache lookup
    both find it (batch mode answers calls this way; see :mod:`prefect_fanout.batch`).
    Mode ``off`` stores nothing.

    Args:
        request: The request with its upstream context applied.
        result: Its answer.
        options: The call's cache options.
    """
    if options.mode is CacheMode.OFF:
        return
    expiration = None
    if options.expiration is not None:
        expiration = datetime.now(UTC) + options.expiration
    _result_store(options).write(obj=result, key=request.cache_key(), expiration=expiration)
