"""Batch input files: one request line per call, split within the API's limits.

A line is ``{"custom_id": KEY, "method": "POST", "url": "/v1/chat/completions", "body": ...}``
where ``KEY`` is the call's cache key (:meth:`CallRequest.cache_key`) and ``body`` what the
online call would post (:func:`~prefect_fanout.llm.transport.chat_body`, in the first
structured-output style the request would try). So an answer lands exactly where the online
call would have put it. Calls with the same key are one line. A file holds at most
``max_requests`` lines (the API: 50,000), ``max_bytes`` bytes (200 MB) and, when set,
``max_tokens`` estimated prompt tokens (the provider's enqueued-token limit).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_fanout.batch.api import ENDPOINT
from prefect_fanout.limits.estimate import estimate_tokens
from prefect_fanout.llm.request import CallRequest
from prefect_fanout.llm.transport import chat_body, styles_to_try

__all__ = ["MAX_BYTES", "MAX_REQUESTS", "InputFile", "request_line", "write_input_files"]

MAX_REQUESTS = 50_000
"""Requests per batch input file, at most (the API's limit)."""
MAX_BYTES = 200 * 1024 * 1024
"""Bytes per batch input file, at most (the API's limit)."""


@dataclass
class InputFile:
    """One written input file.

    Attributes:
        path: Where it is.
        keys: The ``custom_id`` (cache key) of each line, in order.
        tokens: Its estimated prompt tokens.
        size: Its bytes.
    """

    path: Path
    keys: list[str] = field(default_factory=list)
    tokens: int = 0
    size: int = 0


def request_line(request: CallRequest) -> dict[str, Any]:
    """The batch line of one call (see the module)."""
    style = styles_to_try(request, request.base_url)[0]
    return {
        "custom_id": request.cache_key(),
        "method": "POST",
        "url": ENDPOINT,
        "body": chat_body(request, list(request.messages), style),
    }


def write_input_files(
    requests: Iterable[CallRequest],
    directory: Path,
    *,
    first: int = 1,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
    max_tokens: int | None = None,
) -> list[InputFile]:
    """Write the calls' lines into as few files as the limits allow.

    Args:
        requests: The calls (their context already applied); repeated keys are written once.
        directory: Where the files go (``input-0001.jsonl``, ...).
        first: The number of the first file.
        max_requests: Lines per file, at most.
        max_bytes: Bytes per file, at most.
        max_tokens: Estimated prompt tokens per file, at most (None: no limit); a single
            line above it still gets a file of its own.

    Returns:
        The files, in order.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: list[InputFile] = []
    seen: set[str] = set()
    handle: Any = None
    current: InputFile | None = None

    def close() -> None:
        if handle is not None and current is not None:
            handle.close()
            os.replace(current.path.with_suffix(".jsonl.tmp"), current.path)

    for request in requests:
        line = request_line(request)
        if line["custom_id"] in seen:
            continue
        seen.add(line["custom_id"])
        data = (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        tokens = estimate_tokens(line["body"]["messages"], 0)
        full = current is not None and (
            len(current.keys) >= max_requests
            or current.size + len(data) > max_bytes
            or (max_tokens is not None and current.tokens + tokens > max_tokens)
        )
        if current is None or full:
            close()
            current = InputFile(directory / f"input-{first + len(files):04d}.jsonl")
            files.append(current)
            handle = current.path.with_suffix(".jsonl.tmp").open("wb")
        handle.write(data)
        current.keys.append(line["custom_id"])
        current.tokens += tokens
        current.size += len(data)
    close()
    return files
