"""Tests for prefect_fanout.mapping.partition: partitioners, spec parsing, safe file names."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefect_fanout.mapping.corpus import Item, load_items
from prefect_fanout.mapping.partition import (
    DEFAULT_PARTITION_SIZE,
    UNKNOWN,
    PartitionError,
    PartitionSpec,
    PartitionSpecError,
    parse_partition_spec,
    partition,
    partition_by_labels,
    safe_partition_filename,
    safe_partition_filenames,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def make_items(n: int) -> list[Item]:
    return [
        Item(id=f"item-{i}", text=str(i), record={"id": f"item-{i}"}, index=i) for i in range(n)
    ]


def rec_item(index: int, record: dict[str, Any], **kwargs: Any) -> Item:
    item_id = str(record.get("id", index))
    return Item(id=item_id, record=record, index=index, **kwargs)


def ids(parts: dict[str, list[Item]]) -> dict[str, list[str]]:
    return {key: [item.id for item in group] for key, group in parts.items()}


def check_contiguous_balanced(items: list[Item], parts: dict[str, list[Item]]) -> None:
    groups = list(parts.values())
    # Coverage and input order: concatenating the groups gives the input back.
    assert [item for group in groups for item in group] == items
    assert all(groups), "no empty partition"
    if groups:
        sizes = [len(group) for group in groups]
        assert max(sizes) - min(sizes) <= 1
    keys = list(parts)
    assert keys == sorted(keys)
    assert [int(key) for key in keys] == list(range(len(keys)))
    assert all(len(key) == max(4, len(str(len(keys) - 1))) for key in keys)


# ------------------------------------------------------------------- count / size


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), count=st.integers(1, 400))
def test_count_properties(n: int, count: int) -> None:
    items = make_items(n)
    parts = partition(items, f"count:{count}")
    assert len(parts) == min(count, n)
    check_contiguous_balanced(items, parts)
    assert partition(items, f"count:{count}") == parts


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), size=st.integers(1, 120))
def test_size_properties(n: int, size: int) -> None:
    items = make_items(n)
    parts = partition(items, f"size:{size}")
    assert len(parts) == math.ceil(n / size)
    assert all(len(group) <= size for group in parts.values())
    check_contiguous_balanced(items, parts)
    assert partition(items, parse_partition_spec(f"size:{size}")) == parts


def test_count_examples() -> None:
    items = make_items(10)
    assert {k: len(v) for k, v in partition(items, "count:3").items()} == {
        "0000": 4,
        "0001": 3,
        "0002": 3,
    }
    assert list(partition(items, "count:50")) == [f"{i:04d}" for i in range(10)]
    assert partition([], "count:3") == {}


def test_size_avoids_tiny_last_chunk() -> None:
    sizes = [len(v) for v in partition(make_items(501), "size:250").values()]
    assert sizes == [167, 167, 167]


def test_default_size() -> None:
    assert DEFAULT_PARTITION_SIZE == 250
    assert parse_partition_spec("size").number == 250
    assert [len(v) for v in partition(make_items(600), "size").values()] == [200, 200, 200]


def test_wide_keys_are_zero_padded() -> None:
    parts = partition(make_items(10_001), "count:20000")
    keys = list(parts)
    assert keys[0] == "00000" and keys[-1] == "10000"
    assert keys == sorted(keys)


# ------------------------------------------------------------------------- time


def test_time_from_paths() -> None:
    items = [
        rec_item(0, {"id": "2024/01/notes.md"}),
        rec_item(1, {"id": "logs/2024/01/15/x.txt"}),
        rec_item(2, {"id": "2023/12/31/y.txt"}),
        rec_item(3, {"id": "nodate.txt"}),
        rec_item(4, {"id": "2024/13/bad-month.txt"}),
        rec_item(5, {"id": "x"}, path="/data/2022/06/x"),
    ]
    assert ids(partition(items, "time:month")) == {
        "2022-06": ["x"],
        "2023-12": ["2023/12/31/y.txt"],
        "2024-01": ["2024/01/notes.md", "logs/2024/01/15/x.txt"],
        UNKNOWN: ["nodate.txt", "2024/13/bad-month.txt"],
    }
    assert list(partition(items, "time:year")) == ["2022", "2023", "2024", UNKNOWN]
    by_day = ids(partition(items, "time:day"))
    assert by_day["2024-01-15"] == ["logs/2024/01/15/x.txt"]
    assert by_day["2023-12-31"] == ["2023/12/31/y.txt"]
    # A month-only path is too coarse for days and there is no other source.
    assert "2024/01/notes.md" in by_day[UNKNOWN]


def test_time_from_field() -> None:
    items = [
        rec_item(0, {"id": "a", "created": "2024-02-10"}),
        rec_item(1, {"id": "b", "created": "2024-02-29T23:30:00-05:00"}),  # UTC: March 1
        rec_item(2, {"id": "c", "created": 1_700_000_000}),  # 2023-11-14 UTC
        rec_item(3, {"id": "d", "created": "2021-07"}),
        rec_item(4, {"id": "e", "created": "garbage"}),
        rec_item(5, {"id": "f"}),
        rec_item(6, {"id": "g", "created": True}),
        rec_item(7, {"id": "2020/05/h", "created": "2024-02-10"}),  # path wins
        rec_item(8, {"id": "i", "meta": {"when": "2019-09-09"}}),
    ]
    assert ids(partition(items, "time:month:created")) == {
        "2020-05": ["2020/05/h"],
        "2021-07": ["d"],
        "2023-11": ["c"],
        "2024-02": ["a"],
        "2024-03": ["b"],
        UNKNOWN: ["e", "f", "g", "i"],
    }
    by_day = ids(partition(items, "time:day:created"))
    assert by_day["2024-03-01"] == ["b"]
    assert "d" in by_day[UNKNOWN]
    assert ids(partition(items, "time:year:meta.when"))["2019"] == ["i"]


def test_time_from_mtime(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "2021" / "03").mkdir(parents=True)
    files = {"old.txt": datetime(2020, 1, 31, 23, 59, tzinfo=UTC), "new.txt": None}
    for name, when in files.items():
        (root / name).write_text(name, encoding="utf-8")
        if when is not None:
            os.utime(root / name, (when.timestamp(), when.timestamp()))
    stamp = datetime(2022, 8, 1, 12, tzinfo=UTC).timestamp()
    (root / "2021" / "03" / "dated.txt").write_text("x", encoding="utf-8")
    os.utime(root / "new.txt", (stamp, stamp))
    os.utime(root / "2021" / "03" / "dated.txt", (stamp, stamp))
    items = load_items(root)
    assert ids(partition(items, "time:month")) == {
        "2020-01": ["old.txt"],
        "2021-03": ["2021/03/dated.txt"],
        "2022-08": ["new.txt"],
    }
    # The field is tried before the mtime; files have no such field, so mtime wins.
    assert list(partition(items, "time:day:created")) == ["2020-01-31", "2022-08-01"]


# ----------------------------------------------------------------- topic / key


FIELD_ITEMS = [
    {"id": "a", "lang": "python", "meta": {"source": "web", "n": 3}},
    {"id": "b", "lang": " go ", "meta": {"source": "mail"}},
    {"id": "c", "lang": "python", "meta": {"source": {"x": 1, "a": [1, 2]}}},
    {"id": "d", "meta": "flat"},
    {"id": "e", "lang": None, "meta": {"source": "web", "n": 3.5}},
    {"id": "f", "lang": "", "meta.source": "literal"},
    {"id": "g", "lang": 42},
]


def field_items() -> list[Item]:
    return [rec_item(i, record) for i, record in enumerate(FIELD_ITEMS)]


def test_topic_field() -> None:
    assert ids(partition(field_items(), "topic:lang")) == {
        "42": ["g"],
        "go": ["b"],
        "python": ["a", "c"],
        UNKNOWN: ["d", "e", "f"],
    }


def test_key_nested_and_missing() -> None:
    assert ids(partition(field_items(), "key:meta.source")) == {
        '{"a": [1, 2], "x": 1}': ["c"],
        "mail": ["b"],
        UNKNOWN: ["d", "f", "g"],
        "web": ["a", "e"],
    }
    assert ids(partition(field_items(), "key:meta.n")) == {
        "3": ["a"],
        "3.5": ["e"],
        UNKNOWN: ["b", "c", "d", "f", "g"],
    }
    assert ids(partition(field_items(), "key:lang"))[" go "] == ["b"]  # exact value


def test_key_on_directory_items(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("same", encoding="utf-8")
    (tmp_path / "b.txt").write_text("same", encoding="utf-8")
    assert ids(partition(load_items(tmp_path), "key:text")) == {"same": ["a.txt", "b.txt"]}


def test_callable_partition() -> None:
    items = make_items(6)
    parts = partition(items, lambda item: "even" if int(item.text or 0) % 2 == 0 else "odd")
    assert ids(parts) == {
        "even": ["item-0", "item-2", "item-4"],
        "odd": ["item-1", "item-3", "item-5"],
    }
    with pytest.raises(PartitionError, match="must be a str"):
        partition(items, lambda item: 1)  # type: ignore[arg-type, return-value]


# ----------------------------------------------------------------------- labels


def test_topic_agent_spec_and_labels() -> None:
    spec = parse_partition_spec("topic:agent=classifier")
    assert spec.classifier_agent == "classifier"
    assert str(spec) == "topic:agent=classifier"
    items = make_items(5)
    with pytest.raises(PartitionError, match="labels"):
        spec.apply(items)
    with pytest.raises(PartitionError, match="classifier"):
        partition(items, "topic:agent=classifier")
    labels = {"item-0": "billing", "item-1": "bugs", "item-2": "billing", "item-3": "  "}
    expected = {"billing": ["item-0", "item-2"], "bugs": ["item-1"], UNKNOWN: ["item-3", "item-4"]}
    assert ids(spec.apply(items, labels=labels)) == expected
    assert ids(partition_by_labels(items, labels)) == expected
    assert ids(partition(items, spec, labels=labels)) == expected


def test_plain_specs_have_no_classifier() -> None:
    assert parse_partition_spec("topic:lang").classifier_agent is None


# --------------------------------------------------------------------- stability

STABILITY_SCRIPT = """
import json, sys
from prefect_fanout.mapping.corpus import load_items
from prefect_fanout.mapping.partition import partition, safe_partition_filenames
items = load_items(sys.argv[1])
out = {}
for spec in ("topic:lang", "key:meta.source", "count:3", "time:month:created"):
    out[spec] = {k: [i.id for i in v] for k, v in partition(items, spec).items()}
out["names"] = safe_partition_filenames(out["key:meta.source"])
print(json.dumps(out))
"""


def test_stable_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    langs = ["python", "go", "rust", "Go", "zig", None]
    src = tmp_path / "in.jsonl"
    with src.open("w", encoding="utf-8") as handle:
        for i in range(60):
            record = {
                "id": f"doc-{i}",
                "lang": langs[i % len(langs)],
                "meta": {"source": ["web", "mail", "web/2024", "Web", {"k": i % 2}][i % 5]},
                "created": f"2024-{i % 12 + 1:02d}-01",
            }
            handle.write(json.dumps(record) + "\n")
    outputs = []
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", STABILITY_SCRIPT, str(src)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            check=True,
            timeout=120,
        )
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    decoded = json.loads(outputs[0])
    items = load_items(src)
    assert decoded["topic:lang"] == ids(partition(items, "topic:lang"))
    assert list(decoded["topic:lang"]) == ["Go", "go", "python", "rust", UNKNOWN, "zig"]
    assert len(set(decoded["names"].values())) == len(decoded["names"])


# ------------------------------------------------------------------ spec parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("count:8", PartitionSpec("count", number=8)),
        (" COUNT : 8 ", PartitionSpec("count", number=8)),
        ("size", PartitionSpec("size", number=DEFAULT_PARTITION_SIZE)),
        ("size:100", PartitionSpec("size", number=100)),
        ("time:month", PartitionSpec("time", unit="month")),
        ("time:Day:created", PartitionSpec("time", unit="day", field="created")),
        ("topic:lang", PartitionSpec("topic", field="lang")),
        ("topic:agent=labeler", PartitionSpec("topic", classifier_agent="labeler")),
        ("key:meta.source", PartitionSpec("key", field="meta.source")),
    ],
)
def test_parse_valid(text: str, expected: PartitionSpec) -> None:
    spec = parse_partition_spec(text)
    assert spec == expected
    assert parse_partition_spec(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bogus:3", "unknown kind 'bogus'"),
        ("", "unknown kind ''"),
        ("count", "count needs a number"),
        ("count:0", "at least 1"),
        ("count:-2", "at least 1"),
        ("size:0", "at least 1"),
        ("count:abc", "needs an integer"),
        ("count:2.5", "needs an integer"),
        ("size:ten", "needs an integer"),
        ("time", "unknown time unit ''"),
        ("time:week", "unknown time unit 'week'"),
        ("time:month:", "field name"),
        ("topic:", "field name"),
        ("key:a..b", "field name"),
        ("topic:agent=", "agent name"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(PartitionSpecError) as info:
        parse_partition_spec(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text) in message
    for form in ("count:N", "size:K", "time:", "topic:FIELD", "topic:agent=NAME", "key:FIELD"):
        assert form in message
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------- safe filenames


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("2024/01", "2024-01"),
        ("plain_name-1.txt", "plain_name-1.txt"),
        ("a  b///c", "a-b-c"),
        ("../etc/passwd", "etc-passwd"),
        ("...", UNKNOWN),
        ("", UNKNOWN),
        ("日本語", UNKNOWN),
        ('{"a": 1}', "a-1"),
        ("-x-", "x"),
    ],
)
def test_safe_partition_filename(key: str, name: str) -> None:
    assert safe_partition_filename(key) == name


def test_long_keys_are_truncated_with_hash() -> None:
    first, second = "k" * 500 + "1", "k" * 500 + "2"
    name = safe_partition_filename(first)
    assert len(name) <= 110
    assert re.fullmatch(r"k{100}-[0-9a-f]{8}", name)
    assert safe_partition_filename(second) != name
    assert safe_partition_filename(first) == name


def test_filenames_on_collision() -> None:
    names = safe_partition_filenames(["2024/01", "2024-01", "2024?01", "other", "A", "a", "a"])
    assert list(names) == ["2024/01", "2024-01", "2024?01", "other", "A", "a"]
    assert names["other"] == "other"
    for key in ("2024/01", "2024-01", "2024?01"):
        assert re.fullmatch(r"2024-01-[0-9a-f]{8}", names[key])
    assert names["A"].startswith("A-") and names["a"].startswith("a-")
    assert len({name.lower() for name in names.values()}) == len(names)
    assert safe_partition_filenames(["x/y"]) == {"x/y": "x-y"}


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=30),
            st.text(alphabet="aA/-._ 0", max_size=6),
            st.text(alphabet="k/", min_size=95, max_size=130),
        ),
        max_size=25,
    )
)
def test_filenames_unique_property(keys: list[str]) -> None:
    names = safe_partition_filenames(keys)
    assert set(names) == set(keys)
    assert len({name.lower() for name in names.values()}) == len(names)
    for key, name in names.items():
        assert SAFE_NAME.fullmatch(name), name
        assert len(name) <= 200
        assert name not in (".", "..")
        assert name.startswith(safe_partition_filename(key))
    assert safe_partition_filenames(reversed(keys)) == names


def test_filenames_lengthen_hashes_when_short_hashes_collide(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prefect_fanout.mapping.partition as module

    real = module._digest
    monkeypatch.setattr(
        module, "_digest", lambda key, length=8: "0" * length if length < 64 else real(key, 64)
    )
    names = safe_partition_filenames(["a/", "a?", "b"])
    assert names["b"] == "b"
    assert names["a/"] == "a-" + real("a/", 64)
    assert names["a?"] == "a-" + real("a?", 64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "count", "number": 0},
        {"kind": "size"},
        {"kind": "time", "unit": "week"},
        {"kind": "topic"},
        {"kind": "topic", "field": "x", "classifier_agent": "y"},
        {"kind": "key", "field": ""},
        {"kind": "nope", "field": "x"},
    ],
)
def test_spec_object_is_validated(kwargs: dict[str, Any]) -> None:
    with pytest.raises(PartitionSpecError, match="valid forms"):
        PartitionSpec(**kwargs)
