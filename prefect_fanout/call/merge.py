"""Structured answers of one input's chunks, merged field by field into one (no call).

For an object schema: lists are joined in chunk order without duplicates, up to the schema's
``maxItems``; objects are merged the same way, field by field; any other value takes the first
chunk's that is set (not null, not empty). The merge is validated against the schema (into the
Pydantic class when the agent has one). See :mod:`prefect_fanout.call.longinputs`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from prefect_fanout.llm.request import CallRequest

__all__ = ["merge_outputs", "mergeable"]


def mergeable(schema: Mapping[str, Any]) -> bool:
    """True for an object schema with properties: its answers merge field by field."""
    return schema.get("type") == "object" and isinstance(schema.get("properties"), Mapping)


def merge_outputs(outputs: list[Any], request: CallRequest) -> Any:
    """Structured chunk answers merged field by field (see the module), then validated.

    Raises:
        ValueError, jsonschema.ValidationError: The merge does not match the schema.
    """
    data = [o.model_dump(mode="json") if hasattr(o, "model_dump") else o for o in outputs]
    schema = request.output_schema or {}
    merged = _merge(data, schema, schema)
    if request.output_type is not None:
        return request.output_type.model_validate(merged)
    jsonschema.validate(merged, schema)
    return merged


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        node: Any = root
        for part in ref[2:].split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        return node if isinstance(node, Mapping) else {}
    return schema


def _merge(values: list[Any], schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    schema = _resolve(schema, root)
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, list) for v in present):
        joined: list[Any] = []
        seen: set[str] = set()
        for value in present:
            for entry in value:
                key = json.dumps(entry, sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    joined.append(entry)
        most = schema.get("maxItems")
        return joined[:most] if isinstance(most, int) else joined
    if all(isinstance(v, dict) for v in present):
        properties = schema.get("properties")
        properties = properties if isinstance(properties, Mapping) else {}
        keys = list(dict.fromkeys(k for v in present for k in v))
        return {
            key: _merge([v.get(key) for v in present], properties.get(key, {}), root)
            for key in keys
        }
    for value in present:  # a scalar: the first chunk's value that is set
        if value != "":
            return value
    return present[0]
