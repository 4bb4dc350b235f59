"""Pure, deterministic partitioners: `list[Item]` -> `{key: [items in input order]}`.

Nothing here uses Python's salted `hash()`, Prefect or an LLM, so the same items
and spec give the same partitions in every process.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect_fanout.errors import PartitionError, PartitionSpecError
from prefect_fanout.mapping.corpus import Item

__all__ = [
    "DEFAULT_PARTITION_SIZE", "UNKNOWN", "PartitionError", "PartitionSpec",
    "PartitionSpecError", "parse_partition_spec", "partition", "partition_by_labels",
    "safe_partition_filename", "safe_partition_filenames",
]  # fmt: skip

DEFAULT_PARTITION_SIZE = 250  # items per partition for a bare `size` (seed: 200-300 files)
UNKNOWN = "unknown"  # key for a missing or unusable time, field value or label

Partitions = dict[str, list[Item]]
_TIME_UNITS = ("year", "month", "day")
_VALID_FORMS = (
    "count:N | size | size:K | time:year|month|day[:FIELD] | topic:FIELD | "
    "topic:agent=NAME | key:FIELD (dots for nesting, e.g. key:meta.source)"
)
_PATH_DATE = re.compile(r"(?<!\d)(\d{4})[/\\](\d{2})(?:[/\\](\d{2}))?(?!\d)")
_PARTIAL_DATE = re.compile(r"\s*(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?\s*")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 100


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed partition spec; `str(spec)` gives its canonical string.

    Attributes:
        kind: "count", "size", "time", "topic" or "key".
        number: N for count, K for size.
        unit: "year", "month" or "day" for time.
        field: Record field for time (optional), topic and key (dots for nesting).
        classifier_agent: For `topic:agent=NAME`, the agent whose labels
            `apply(items, labels=...)` needs; nothing here calls it.

    """

    kind: str
    number: int | None = None
    unit: str | None = None
    field: str | None = None
    classifier_agent: str | None = None

    def __post_init__(self) -> None:
        positive = self.number is not None and self.number >= 1
        valid = {
            "count": positive,
            "size": positive,
            "time": self.unit in _TIME_UNITS,
            "topic": bool(self.field) != bool(self.classifier_agent),
            "key": bool(self.field),
        }
        if not valid.get(self.kind, False):
            raise PartitionSpecError(f"invalid {self!r}; valid forms: {_VALID_FORMS}")

    def __str__(self) -> str:
        if self.kind in ("count", "size"):
            return f"{self.kind}:{self.number}"
        if self.kind == "time":
            return f"time:{self.unit}" + (f":{self.field}" if self.field else "")
        if self.classifier_agent is not None:
            return f"topic:agent={self.classifier_agent}"
        return f"{self.kind}:{self.field}"

    def apply(self, items: list[Item], labels: dict[str, str] | None = None) -> Partitions:
        """Partition `items` according to this spec.

        Args:
            items: Items in input order.
            labels: Item id -> label; required for `topic:agent=NAME`.

        Returns:
            Key -> items in input order; keys sorted (numeric order for count/size).

        Raises:
            PartitionError: The spec needs classifier labels and none were given.

        """
        if self.classifier_agent is not None:
            if labels is None:
                raise PartitionError(
                    f"partition spec {str(self)!r} needs labels from classifier agent "
                    f"{self.classifier_agent!r}: run it, then call apply(items, labels=...)"
                )
            return partition_by_labels(items, labels)
        number, unit, field = self.number or 1, self.unit or "month", self.field or ""
        if self.kind in ("count", "size"):
            return _chunks(items, number if self.kind == "count" else -(-len(items) // number))
        if self.kind == "time":
            return _group(items, lambda item: _time_key(item, unit, self.field))
        if self.kind == "key":
            return _group(items, lambda item: _value_key(_lookup(item.record, field), True))
        return _group(items, lambda item: _value_key(item.record.get(field), False))


def _spec_error(spec: str, problem: str) -> PartitionSpecError:
    message = f"invalid partition spec {spec!r}: {problem}; valid forms: {_VALID_FORMS}"
    return PartitionSpecError(message)


def _positive_int(spec: str, kind: str, text: str) -> int:
    text = text.strip()
    if not text:
        raise _spec_error(spec, f"{kind} needs a number, e.g. {kind}:8")
    if not re.fullmatch(r"[+-]?\d+", text):
        raise _spec_error(spec, f"{kind} needs an integer, got {text!r}")
    if int(text) < 1:
        raise _spec_error(spec, f"{kind} must be at least 1, got {int(text)}")
    return int(text)


def _field_name(spec: str, text: str) -> str:
    name = text.strip()
    if not name or not all(name.split(".")):
        raise _spec_error(spec, f"bad or missing field name {text!r}")
    return name


def parse_partition_spec(spec: str) -> PartitionSpec:
    """Parse a partition spec string such as "count:8" or "time:month:created".

    Args:
        spec: count:N, size[:K], time:UNIT[:FIELD], topic:FIELD,
            topic:agent=NAME or key:FIELD.

    Returns:
        The parsed spec.

    Raises:
        PartitionSpecError: Unknown kind, missing or non-integer number,
            number < 1, unknown time unit, or empty field/agent name.

    """
    kind, _, rest = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "count":
        return PartitionSpec("count", number=_positive_int(spec, kind, rest))
    if kind == "size":
        size = _positive_int(spec, kind, rest) if rest.strip() else DEFAULT_PARTITION_SIZE
        return PartitionSpec("size", number=size)
    if kind == "time":
        unit, has_field, field = rest.partition(":")
        unit = unit.strip().lower()
        if unit not in _TIME_UNITS:
            raise _spec_error(spec, f"unknown time unit {unit!r} (use year, month or day)")
        field = _field_name(spec, field) if has_field else None
        return PartitionSpec("time", unit=unit, field=field)
    if kind == "topic" and rest.strip().startswith("agent="):
        agent = rest.strip().removeprefix("agent=").strip()
        if not agent:
            raise _spec_error(spec, "topic:agent= needs an agent name")
        return PartitionSpec("topic", classifier_agent=agent)
    if kind in ("topic", "key"):
        return PartitionSpec(kind, field=_field_name(spec, rest))
    raise _spec_error(spec, f"unknown kind {kind!r}")


def partition(
    items: list[Item],
    spec: str | PartitionSpec | Callable[[Item], str],
    *,
    labels: dict[str, str] | None = None,
) -> Partitions:
    """Partition items by a spec string, a parsed spec, or a key function.

    Args:
        items: Items in input order.
        spec: A spec string, a `PartitionSpec`, or a callable item -> key
            (keys sorted, items in input order).
        labels: Item id -> label, for `topic:agent=NAME`.

    Returns:
        Key -> items in input order.

    Raises:
        PartitionSpecError: The spec string is malformed.
        PartitionError: Labels are missing, or the callable returned a non-str.

    """
    if isinstance(spec, str):
        spec = parse_partition_spec(spec)
    if isinstance(spec, PartitionSpec):
        return spec.apply(items, labels=labels)
    return _group(items, spec)


def partition_by_labels(items: list[Item], labels: dict[str, str]) -> Partitions:
    """Group items by classifier labels, the second half of `topic:agent=NAME`.

    Args:
        items: Items in input order.
        labels: Item id -> label; labels are stripped, missing or blank -> "unknown".

    Returns:
        Label -> items in input order, labels sorted.

    """
    return _group(items, lambda item: _value_key(labels.get(item.id), False))


def _chunks(items: list[Item], parts: int) -> Partitions:
    """Split into min(parts, len) contiguous, balanced, non-empty chunks."""
    parts = min(parts, len(items))
    if parts < 1:
        return {}
    width = max(4, len(str(parts - 1)))
    base, extra = divmod(len(items), parts)
    result: Partitions = {}
    start = 0
    for number in range(parts):
        end = start + base + (number < extra)
        result[str(number).zfill(width)] = items[start:end]
        start = end
    return result


def _group(items: list[Item], key: Callable[[Item], str]) -> Partitions:
    groups: Partitions = {}
    for item in items:
        name = key(item)
        if not isinstance(name, str):
            kind = type(name).__name__
            raise PartitionError(f"partition key for item {item.id!r} must be a str, got {kind}")
        groups.setdefault(name, []).append(item)
    return {name: groups[name] for name in sorted(groups)}


def _lookup(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _value_key(value: Any, exact: bool) -> str:
    """Key for a field value: None -> unknown; str as is (stripped unless exact); else JSON."""
    if value is None:
        return UNKNOWN
    if isinstance(value, str):
        return value if exact else value.strip() or UNKNOWN
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _date_key(parts: Iterable[str | int | None], unit: str) -> str | None:
    """Key for (year, month, day) at `unit` precision; None if invalid or too coarse."""
    year, month, day = (int(part) if part else None for part in parts)
    try:
        datetime(year or 0, month or 1, day or 1)
    except ValueError:
        return None
    if unit == "year":
        return f"{year:04d}"
    if month is None or (unit == "day" and day is None):
        return None
    return f"{year:04d}-{month:02d}" + (f"-{day:02d}" if unit == "day" else "")


def _epoch_key(seconds: float | str, unit: str) -> str | None:
    try:
        moment = datetime.fromtimestamp(float(seconds), UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return _date_key((moment.year, moment.month, moment.day), unit)


def _field_time_key(value: Any, unit: str) -> str | None:
    """Key from an ISO date(time) string (aware -> UTC) or epoch seconds."""
    if isinstance(value, str) and (match := _PARTIAL_DATE.fullmatch(value)):
        return _date_key(match.groups(), unit)
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            return _epoch_key(value, unit)
        moment = moment.astimezone(UTC) if moment.tzinfo else moment
        return _date_key((moment.year, moment.month, moment.day), unit)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _epoch_key(value, unit)
    return None


def _time_key(item: Item, unit: str, field: str | None) -> str:
    """First usable of: YYYY/MM[/DD] in id then path, the field, the mtime (UTC)."""
    for text in (item.id, item.path or ""):
        for match in _PATH_DATE.finditer(text):
            if key := _date_key(match.groups(), unit):
                return key
    key = _field_time_key(_lookup(item.record, field), unit) if field else None
    if key is None and item.mtime is not None:
        key = _epoch_key(item.mtime, unit)
    return key or UNKNOWN


def _digest(key: str, length: int = 8) -> str:
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()[:length]


def safe_partition_filename(key: str) -> str:
    """Make a partition key safe as a file name, e.g. "2024/01" -> "2024-01".

    Keeps [A-Za-z0-9._-], replaces every other run with "-", strips leading
    dots/dashes and trailing dashes; empty -> "unknown". Names longer than 100
    characters are cut and get "-" plus a stable hash of the key. Different keys
    can give the same name: use `safe_partition_filenames` for unique names.

    Args:
        key: A partition key.

    Returns:
        A non-empty file name.

    """
    name = _UNSAFE_RUN.sub("-", key).lstrip(".-").rstrip("-") or UNKNOWN
    if len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME].rstrip('-')}-{_digest(key)}"
    return name


def safe_partition_filenames(keys: Iterable[str]) -> dict[str, str]:
    """Map distinct keys to safe file names, unique even case-insensitively.

    Keys whose names would collide get "-" plus a stable hash of the key
    appended (a longer hash if short ones still collide); others keep
    `safe_partition_filename(key)`.

    Args:
        keys: Partition keys (duplicates are ignored).

    Returns:
        Key -> file name, in first-seen key order.

    """
    bases = {key: safe_partition_filename(key) for key in keys}
    hashed: set[str] = set()
    length = 8
    # Each round with a clash hashes more keys or lengthens the hashes, so it ends.
    while True:
        names = {k: f"{b}-{_digest(k, length)}" if k in hashed else b for k, b in bases.items()}
        owners: dict[str, list[str]] = {}
        for key, name in names.items():
            owners.setdefault(name.lower(), []).append(key)
        clashes = {key for group in owners.values() if len(group) > 1 for key in group}
        if not clashes:
            return names
        if clashes <= hashed:  # only hashed names clash: the hashes are too short
            if length >= 64:
                raise AssertionError("unreachable: sha256 digests of distinct keys differ")
            length = 16 if length == 8 else 64
        hashed |= clashes
