"""The Batch API of the fake OpenAI server: ``/v1/files`` and ``/v1/batches``, faithfully.

Served by :class:`tests.fakeopenai.FakeOpenAI` (``fake.batches``). What it implements:

- ``POST /v1/files`` (multipart: ``file``, ``purpose``), ``GET /v1/files`` (``purpose``,
  ``limit``), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``;
- ``POST /v1/batches`` (``input_file_id``, ``endpoint``, ``completion_window``, ``metadata``),
  ``GET /v1/batches`` (``limit``), ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``;
- statuses in time: ``validating`` -> ``in_progress`` -> ``finalizing`` -> ``completed`` over
  :attr:`FakeBatchAPI.completion_seconds`; ``failed`` with ``errors`` (bad lines, more than
  50,000 requests or 200 MB, or more enqueued tokens than :attr:`FakeBatchAPI.enqueued_token_limit`:
  ``token_limit_exceeded``); ``expired`` with partial output; ``cancelling`` -> ``cancelled``;
- ``request_counts`` that grow while in progress, an output file (``response.status_code``
  200) and an error file (non-200 answers, and ``batch_expired`` / ``batch_cancelled`` for
  requests never run).

Each line is answered like ``POST /v1/chat/completions``: scripted steps of the fake
(``fake.script(key, Error(400), ...)``) are consumed by batch lines too, so a test can make
chosen lines fail. Outcomes of whole batches are scripted with :meth:`FakeBatchAPI.script`.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
IN_FLIGHT = ("validating", "in_progress", "finalizing", "cancelling")


@dataclass
class Outcome:
    """How one batch ends (consumed in creation order by :meth:`FakeBatchAPI.script`).

    Attributes:
        status: ``completed``, ``failed``, ``expired`` or ``cancelled``.
        answered: For ``expired`` / ``cancelled``: how many lines (the first ones) were run.
        errors: For ``failed``: the ``errors.data`` entries (``code``, ``message``, ``line``).
    """

    status: str = "completed"
    answered: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BatchLine:
    """One request line of a batch as the fake ran it."""

    batch_id: str
    custom_id: str
    conversation: str
    status_code: int | None


def _now() -> int:
    return int(time.time())


def token_estimate(body: dict[str, Any]) -> int:
    """The prompt tokens a line is counted for against the enqueued limit: characters / 4
    (rounded up) plus 4 per message (completion budgets do not count)."""
    return sum(
        -(-len(str(m.get("content", ""))) // 4) + 4
        for m in body.get("messages", [])
        if isinstance(m, dict)
    )


def _multipart(request_headers: Any, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart body: name -> (file name, bytes)."""
    head = f"Content-Type: {request_headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        fields[str(name)] = (part.get_filename(), payload)
    return fields


class FakeBatchAPI:
    """Files and batches of the fake server (see the module).

    Args:
        answer_line: Answers one chat-completions body: ``(status_code, response body,
            conversation)``; the fake's own scripted-or-default answer.

    Attributes:
        enabled: False makes every route answer 404 (a server with no Batch API).
        completion_seconds: Seconds from creation to ``completed`` (a tenth validating, the
            last tenth finalizing).
        enqueued_token_limit: Prompt tokens (see token_estimate) of the batches in flight above
            which a new batch fails with ``token_limit_exceeded``; None for no limit.
    """

    def __init__(self, answer_line: Callable[[dict[str, Any]], tuple[int, Any, str]]) -> None:
        self._answer_line = answer_line
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget files, batches, scripts and lines; back to the defaults."""
        with self._lock:
            self.enabled = True
            self.completion_seconds = 1.0
            self.enqueued_token_limit: int | None = None
            self.files: dict[str, dict[str, Any]] = {}
            self._content: dict[str, bytes] = {}
            self.batches: dict[str, dict[str, Any]] = {}
            self._plans: dict[str, dict[str, Any]] = {}
            self._outcomes: deque[Outcome] = deque()
            self.lines: list[BatchLine] = []

    def script(self, *outcomes: Outcome) -> None:
        """Queue how the next batches created end (the rest complete)."""
        with self._lock:
            self._outcomes.extend(outcomes)

    @property
    def created(self) -> int:
        """Batches created since the last reset."""
        with self._lock:
            return len(self.batches)

    def seconds_at_server(self, batch_id: str) -> float | None:
        """Seconds from the batch's creation to its end (None while it has not ended)."""
        with self._lock:
            plan = self._plans[batch_id]
            return plan["ended"] - plan["created"] if "ended" in plan else None

    def line_count(self, substring: str | None = None) -> int:
        """Batch lines run whose user messages contain ``substring`` (all when None)."""
        with self._lock:
            return sum(
                1 for line in self.lines if substring is None or substring in line.conversation
            )

    def routes(self) -> list[tuple[str, Callable[..., Any], list[str]]]:
        """(path, handler, methods) of every Batch API route."""
        return [
            ("/v1/files", self._files_create, ["POST"]),
            ("/v1/files", self._files_list, ["GET"]),
            ("/v1/files/{file_id}", self._file_get, ["GET"]),
            ("/v1/files/{file_id}/content", self._file_content, ["GET"]),
            ("/v1/batches", self._batch_create, ["POST"]),
            ("/v1/batches", self._batch_list, ["GET"]),
            ("/v1/batches/{batch_id}", self._batch_get, ["GET"]),
            ("/v1/batches/{batch_id}/cancel", self._batch_cancel, ["POST"]),
        ]

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _error(status: int, message: str, code: str | None = None) -> Response:
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "code": code, "param": None}}
        return JSONResponse(body, status)

    def _missing(self, request: Request) -> Response:
        return self._error(404, f"{request.method} {request.url.path}: Not Found", "not_found")

    def _store(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = "file-" + uuid.uuid4().hex[:24]
        entry = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": _now(),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = entry
        self._content[file_id] = content
        return entry

    # ------------------------------------------------------------------ files

    async def _files_create(self, request: Request) -> Response:
        if not self.enabled:
            return self._missing(request)
        fields = _multipart(request.headers, await request.body())
        if "file" not in fields:
            return self._error(400, "'file' is a required property")
        filename, content = fields["file"]
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if purpose not in ("batch", "assistants", "fine-tune", "user_data"):
            return self._error(400, f"Invalid purpose {purpose!r}")
        if purpose == "batch" and len(content) > MAX_BYTES:
            return self._error(400, "File is larger than the 200 MB limit for batch files")
        with self._lock:
            entry = self._store(content, filename or "upload.jsonl", purpose)
        return JSONResponse(entry)

    async def _files_list(self, request: Request) -> Response:
        if not self.enabled:
            return self._missing(request)
        purpose = request.query_params.get("purpose")
        limit = int(request.query_params.get("limit", 10000))
        with self._lock:
            data = [f for f in self.files.values() if purpose in (None, f["purpose"])]
        return JSONResponse({"object": "list", "data": data[:limit], "has_more": len(data) > limit})

    async def _file_get(self, request: Request) -> Response:
        if not self.enabled:
            return self._missing(request)
        entry = self.files.get(request.path_params["file_id"])
        if entry is None:
            return self._error(404, f"No such File object: {request.path_params['file_id']}")
        return JSONResponse(entry)

    async def _file_content(self, request: Request) -> Response:
        if not self.enabled:
            return self._missing(request)
        content = self._content.get(request.path_params["file_id"])
        if content is None:
            return self._error(404, f"No such File object: {request.path_params['file_id']}")
        return Response(content, 200, media_type="application/octet-stream")

    # ------------------------------------------------------------------ batches

    async def _batch_create(self, request: Request) -> Response:
        if not self.enabled:
            return self._missing(request)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._error(400, "The request body must be JSON.")
        file_id = body.get("input_file_id")
        if body.get("endpoint") != ENDPOINT:
            return self._error(400, f"endpoint must be {ENDPOINT!r} here")
        if body.get("completion_window") != "24h":
            return self._error(400, "completion_window must be '24h'")
        with self._lock:
            if file_id not in self.files:
                return self._error(404, f"No such File object: {file_id}")
            if self.files[file_id]["purpose"] != "batch":
                return self._error(400, "The input file must have purpose 'batch'")
            batch_id = "batch_" + uuid.uuid4().hex[:24]
            created = time.time()
            batch = {
                "id": batch_id,
                "object": "batch",
                "endpoint": ENDPOINT,
                "errors": None,
                "input_file_id": file_id,
                "completion_window": "24h",
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "created_at": int(created),
                "in_progress_at": None,
                "expires_at": int(created) + 86400,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelling_at": None,
                "cancelled_at": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata") or {},
            }
            outcome = self._outcomes.popleft() if self._outcomes else Outcome()
            tokens = sum(
                token_estimate(json.loads(raw).get("body") or {})
                for raw in self._content[file_id].splitlines()
                if raw.strip()
            )
            enqueued = sum(
                p.get("tokens", 0)
                for other, p in self._plans.items()
                if self.batches[other]["status"] in IN_FLIGHT and not p.get("over_limit")
            )
            over = None
            if (
                self.enqueued_token_limit is not None
                and enqueued + tokens > self.enqueued_token_limit
            ):
                over = (
                    f"Enqueued token limit reached: limit {self.enqueued_token_limit}, "
                    f"{enqueued} enqueued already, this batch {tokens}. Try again once some "
                    "batches have completed."
                )
            self.batches[batch_id] = batch
            self._plans[batch_id] = {
                "created": created,
                "outcome": outcome,
                "lines": None,
                "tokens": tokens,
                "over_limit": over,
            }
        return JSONResponse(batch)

    async def _batch_list(self, request: Request) -> Response:
        if not self.enabled:
            return self._missing(request)
        limit = int(request.query_params.get("limit", 20))
        with self._lock:
            ids = list(self.batches)[::-1]
        data = [self._advance(batch_id) for batch_id in ids[:limit]]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(ids) > limit,
            }
        )

    async def _batch_get(self, request: Request) -> Response:
        if not self.enabled:
            return self._missing(request)
        batch_id = request.path_params["batch_id"]
        if batch_id not in self.batches:
            return self._error(404, f"No such Batch object: {batch_id}")
        return JSONResponse(self._advance(batch_id))

    async def _batch_cancel(self, request: Request) -> Response:
        if not self.enabled:
            return self._missing(request)
        batch_id = request.path_params["batch_id"]
        if batch_id not in self.batches:
            return self._error(404, f"No such Batch object: {batch_id}")
        batch = self._advance(batch_id)
        if batch["status"] not in IN_FLIGHT:
            return self._error(409, f"Cannot cancel a batch with status {batch['status']!r}")
        with self._lock:
            plan = self._plans[batch_id]
            if batch["status"] != "cancelling":
                plan["cancelled"] = time.time()
                batch["status"] = "cancelling"
                batch["cancelling_at"] = _now()
        return JSONResponse(batch)

    # ------------------------------------------------------------------ time

    def _advance(self, batch_id: str) -> dict[str, Any]:
        """The batch with its status moved on to where time has brought it."""
        with self._lock:
            batch, plan = self.batches[batch_id], self._plans[batch_id]
            if batch["status"] not in IN_FLIGHT:
                return dict(batch)
            elapsed = time.time() - plan["created"]
            total = max(self.completion_seconds, 0.0)
            if plan["lines"] is None and elapsed >= total * 0.1:
                self._validate(batch, plan)
                if batch["status"] == "failed":
                    return dict(batch)
            if "cancelled" in plan:
                if time.time() - plan["cancelled"] >= total * 0.1:
                    self._finish(batch, plan, "cancelled", answered=plan.get("ran", 0))
                return dict(batch)
            if plan["lines"] is None:
                return dict(batch)
            lines = plan["lines"]
            outcome: Outcome = plan["outcome"]
            if outcome.status == "cancelled" and elapsed >= total * 0.5:
                plan["cancelled"] = time.time() - total  # as if someone cancelled it
                batch["status"], batch["cancelling_at"] = "cancelling", _now()
                self._finish(batch, plan, "cancelled", answered=outcome.answered)
                return dict(batch)
            share = min(1.0, max(0.0, (elapsed - total * 0.1) / max(total * 0.8, 1e-9)))
            plan["ran"] = int(len(lines) * share)
            batch["request_counts"]["completed"] = plan["ran"]
            if elapsed >= total:
                if outcome.status == "expired":
                    self._finish(batch, plan, "expired", answered=outcome.answered)
                else:
                    self._finish(batch, plan, "completed", answered=len(lines))
            elif elapsed >= total * 0.9:
                batch["status"] = "finalizing"
                batch["finalizing_at"] = batch["finalizing_at"] or _now()
            return dict(batch)

    def _validate(self, batch: dict[str, Any], plan: dict[str, Any]) -> None:
        """Read the input file; the batch fails (``errors``) or goes ``in_progress``."""
        outcome: Outcome = plan["outcome"]
        content = self._content[batch["input_file_id"]]
        errors: list[dict[str, Any]] = list(outcome.errors) if outcome.status == "failed" else []
        lines: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except ValueError:
                errors.append({"code": "invalid_json_line", "message": "not JSON", "line": number})
                continue
            custom_id = line.get("custom_id") if isinstance(line, dict) else None
            if not isinstance(custom_id, str) or custom_id in seen:
                errors.append(
                    {
                        "code": "duplicate_custom_id"
                        if custom_id
                        else "missing_required_parameter",
                        "message": f"custom_id {custom_id!r} is missing or repeated",
                        "line": number,
                    }
                )
                continue
            if line.get("method") != "POST" or line.get("url") != ENDPOINT:
                errors.append(
                    {"code": "invalid_url", "message": f"url must be {ENDPOINT}", "line": number}
                )
                continue
            seen.add(custom_id)
            lines.append(line)
        if len(lines) > MAX_REQUESTS:
            errors.append(
                {
                    "code": "too_many_requests",
                    "message": f"A batch may have at most {MAX_REQUESTS} requests",
                    "line": None,
                }
            )
        if plan.get("over_limit") and not errors:
            errors.append(
                {"code": "token_limit_exceeded", "message": plan["over_limit"], "line": None}
            )
        batch["request_counts"]["total"] = len(lines)
        if errors:
            batch["status"], batch["failed_at"] = "failed", _now()
            batch["errors"] = {"object": "list", "data": [{"param": None, **e} for e in errors]}
            plan["lines"] = []
            return
        plan["lines"] = lines
        batch["status"], batch["in_progress_at"] = "in_progress", _now()

    def _finish(
        self, batch: dict[str, Any], plan: dict[str, Any], status: str, answered: int
    ) -> None:
        """Run the first ``answered`` lines, write the output and error files, end the batch."""
        outputs: list[str] = []
        failures: list[str] = []
        code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(status)
        for position, line in enumerate(plan["lines"]):
            custom_id = line["custom_id"]
            if position >= answered and code is not None:
                error = {
                    "code": code,
                    "message": "This request could not be executed before the batch ended.",
                }
                entry = {"id": "batch_req_" + uuid.uuid4().hex[:20], "custom_id": custom_id}
                failures.append(json.dumps({**entry, "response": None, "error": error}))
                continue
            status_code, body, conversation = self._answer_line(line.get("body") or {})
            self.lines.append(BatchLine(batch["id"], custom_id, conversation, status_code))
            response = {
                "status_code": status_code,
                "request_id": "req_" + uuid.uuid4().hex[:24],
                "body": body,
            }
            entry = {
                "id": "batch_req_" + uuid.uuid4().hex[:20],
                "custom_id": custom_id,
                "response": response,
                "error": None,
            }
            (outputs if status_code == 200 else failures).append(json.dumps(entry))
        counts = batch["request_counts"]
        counts["completed"] = len(outputs)
        counts["failed"] = len(failures)
        if outputs:
            content = ("\n".join(outputs) + "\n").encode()
            batch["output_file_id"] = self._store(content, "batch_output.jsonl", "batch_output")[
                "id"
            ]
        if failures:
            content = ("\n".join(failures) + "\n").encode()
            batch["error_file_id"] = self._store(content, "batch_errors.jsonl", "batch_output")[
                "id"
            ]
        if status == "completed":
            batch["finalizing_at"] = batch["finalizing_at"] or _now()
        batch["status"] = status
        batch[f"{status}_at"] = _now()
        plan["ended"] = time.time()
