"""The built-in offline model ``test``: no network, no key, deterministic answers.

Text agents get a short answer derived from the prompt; structured agents get
an instance that is valid for their output schema. Token counts are word
counts, so usage and cost reports have something real to add up (at price 0).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect_fanout.llm.request import CallRequest

TEST_MODEL = "test"
"""The model name of the built-in offline model."""

TEST_BASE_URL = "test://offline"
"""The base URL recorded (and keyed) for calls answered by the ``test`` model."""


def is_offline(base_url: str | None) -> bool:
    """True when ``base_url`` is the offline ``test`` model's (no server, no endpoint)."""
    return bool(base_url) and str(base_url).startswith("test://")


def count_tokens(text: str) -> int:
    """A rough token count: whitespace-separated words (at least 1 for non-empty text)."""
    return len(text.split()) or (1 if text else 0)


def answer_text(request: CallRequest) -> str:
    """The deterministic plain-text answer to a request."""
    prompt = request.prompt
    digest = hashlib.sha256(
        json.dumps(request.messages, sort_keys=True).encode("utf-8")
    ).hexdigest()[:12]
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else ""
    excerpt = first_line[:120]
    return f"[test:{request.agent}] {digest} answer to: {excerpt}"


def example_for_schema(schema: dict[str, Any], seed: str = "test") -> Any:
    """A small instance that is valid for a JSON schema.

    Handles objects, arrays, strings (with enum/const/format/minLength), numbers,
    integers (with bounds), booleans, null, ``$ref`` into ``$defs``/``definitions``,
    and ``anyOf``/``oneOf``/``allOf``.
    """
    return _Example(schema, seed).build(schema, depth=0)


class _Example:
    def __init__(self, root: dict[str, Any], seed: str) -> None:
        self.root = root
        self.seed = seed

    def resolve(self, ref: str) -> dict[str, Any]:
        node: Any = self.root
        for part in ref.lstrip("#/").split("/"):
            node = node[part]
        return node

    def build(self, schema: dict[str, Any], depth: int) -> Any:
        if depth > 12:
            return None
        if "$ref" in schema:
            return self.build(self.resolve(schema["$ref"]), depth + 1)
        if "const" in schema:
            return schema["const"]
        if "enum" in schema:
            return schema["enum"][0]
        if "default" in schema:
            return schema["default"]
        for combo in ("anyOf", "oneOf"):
            if combo in schema:
                options = [o for o in schema[combo] if o.get("type") != "null"] or schema[combo]
                return self.build(options[0], depth + 1)
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self.resolve(part["$ref"]) if "$ref" in part else part)
            return self.build(merged, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or (kind is None and "properties" in schema):
            props = schema.get("properties", {})
            return {name: self.build(sub, depth + 1) for name, sub in props.items()}
        if kind == "array":
            count = max(1, int(schema.get("minItems", 1)))
            return [self.build(schema.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "string":
            return self.string(schema)
        if kind == "integer":
            return int(schema.get("minimum", schema.get("exclusiveMinimum", -1) + 1))
        if kind == "number":
            return float(schema.get("minimum", 0.0))
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.seed

    def string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2024-01-01T00:00:00Z"
        if fmt == "date":
            return "2024-01-01"
        if fmt in ("email", "idn-email"):
            return "test@example.com"
        if fmt in ("uri", "url"):
            return "https://example.com/"
        value = self.seed
        low = int(schema.get("minLength", 0))
        if len(value) < low:
            value = value + "x" * (low - len(value))
        high = schema.get("maxLength")
        return value[: int(high)] if high is not None else value


def answer(request: CallRequest) -> tuple[str, int, int]:
    """The raw answer, prompt tokens and completion tokens for a request."""
    if request.output_schema is not None:
        raw = json.dumps(example_for_schema(request.output_schema, seed=request.agent))
    else:
        raw = answer_text(request)
    prompt_tokens = sum(count_tokens(m.get("content", "")) for m in request.messages)
    return raw, prompt_tokens, count_tokens(raw)
