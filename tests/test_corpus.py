"""Tests for prefect_fanout.mapping.corpus: JSONL and directory loading."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from prefect_fanout.mapping.corpus import CorpusError, Item, load_items


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and nanosecond mtime of every file (hidden ones included) under root."""
    paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in paths}


# --------------------------------------------------------------------------- JSONL


def test_jsonl_basic(tmp_path: Path) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "a", "text": "hello"}),
            "",
            "   ",
            json.dumps({"id": 7, "body": "no text", "meta": {"k": 1}}),
            json.dumps({"id": "ü", "text": 5}),
        ],
    )
    items = load_items(src)
    assert [i.id for i in items] == ["a", "7", "ü"]
    assert [i.index for i in items] == [0, 1, 2]
    assert items[0].text == "hello"
    assert items[0].prompt_text() == "hello"
    assert items[1].text is None
    assert items[1].record == {"id": 7, "body": "no text", "meta": {"k": 1}}
    assert items[1].prompt_text() == json.dumps(items[1].record, sort_keys=True)
    assert items[2].text is None  # a non-string "text" field is not used as text
    assert items[2].prompt_text() == '{"id": "ü", "text": 5}'
    assert all(i.path is None and i.mtime is None for i in items)


def test_jsonl_accepts_str_path_bom_and_crlf(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"id": "x"}\r\n\r\n{"id": "y"}')
    assert [i.id for i in load_items(str(src))] == ["x", "y"]


def test_empty_jsonl_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="has no items; nothing to map"):
        load_items(src)


def test_item_is_frozen() -> None:
    item = Item(id="a", text="t", record={"id": "a"}, index=0)
    with pytest.raises(ValidationError):
        item.id = "b"  # type: ignore[misc]
    same = Item(id="a", text="t", record={"id": "a"}, index=0)
    assert item == same and hash(item) == hash(same)
    assert len({item, same}) == 1


@pytest.mark.parametrize(
    ("lines", "line_no", "fragments"),
    [
        (['{"id": "a"}', '{"id": "b",}'], 2, ["invalid JSON", "column 12"]),
        (['{"id": "a"}', "", "not json"], 3, ["invalid JSON", "column 1"]),
        (['["id", "a"]'], 1, ["expected a JSON object", "list"]),
        (['{"id": "a"}', '"just a string"'], 2, ["expected a JSON object", "str"]),
        (['{"id": "a"}', '{"text": "no id"}'], 2, ["missing 'id'"]),
        (['{"id": 1.5}'], 1, ["string or an integer", "float"]),
        (['{"id": true}'], 1, ["string or an integer", "bool"]),
        (['{"id": null}'], 1, ["string or an integer", "NoneType"]),
        (['{"id": ["a"]}'], 1, ["string or an integer", "list"]),
        (['{"id": "  "}'], 1, ["must not be empty"]),
    ],
)
def test_jsonl_errors_name_file_and_line(
    tmp_path: Path, lines: list[str], line_no: int, fragments: list[str]
) -> None:
    src = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(CorpusError) as info:
        load_items(src)
    message = str(info.value)
    assert str(src) in message
    assert f"line {line_no}" in message
    for fragment in fragments:
        assert fragment in message


def test_duplicate_id_names_both_lines(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "dup.jsonl", ['{"id": "a"}', '{"id": 1}', "", '{"id": "1"}'])
    with pytest.raises(CorpusError) as info:
        load_items(src)
    message = str(info.value)
    assert str(src) in message
    assert "line 4" in message and "line 2" in message
    assert "duplicate id '1'" in message


def test_invalid_utf8_line(tmp_path: Path) -> None:
    src = tmp_path / "bin.jsonl"
    src.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n')
    with pytest.raises(CorpusError, match=r"line 2: not valid UTF-8"):
        load_items(src)


def test_corpus_error_is_value_error() -> None:
    assert issubclass(CorpusError, ValueError)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(CorpusError) as info:
        load_items(missing)
    assert str(missing) in str(info.value)
    assert "no such file or directory" in str(info.value)


# ----------------------------------------------------------------------- directory


def make_tree(root: Path) -> Path:
    files = {
        "b.txt": "bee",
        "a/z.md": "zed",
        "a/b/c.txt": "deep",
        "a-c.txt": "dash",
        ".hidden.txt": "secret",
        ".git/config": "git",
        "a/.cache/x.txt": "cached",
        "2024/01/notes.md": "january",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "bad.bin").write_bytes(b"ok \xff\xfe end")
    return root


def test_directory_items(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "corpus")
    with pytest.raises(CorpusError, match=r"bad\.bin: not valid utf-8 at byte 3"):
        load_items(root)  # strict by default: never send mangled text
    items = load_items(root, errors="replace")
    ids = [i.id for i in items]
    assert ids == sorted(ids)
    assert ids == ["2024/01/notes.md", "a-c.txt", "a/b/c.txt", "a/z.md", "b.txt", "bad.bin"]
    assert [i.index for i in items] == list(range(len(items)))
    deep = items[2]
    assert deep.text == "deep"
    assert deep.path == str((root / "a" / "b" / "c.txt").absolute())
    assert Path(deep.path).is_absolute()
    assert deep.mtime == (root / "a" / "b" / "c.txt").stat().st_mtime
    assert deep.record == {
        "id": "a/b/c.txt",
        "path": deep.path,
        "text": "deep",
        "mtime": deep.mtime,
    }
    assert deep.prompt_text() == "deep"
    assert items[-1].text == "ok \ufffd\ufffd end"


def test_directory_order_is_deterministic(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "corpus")
    assert load_items(root, errors="replace") == load_items(str(root), errors="replace")


def test_a_directory_of_hidden_files_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".only-hidden").write_text("x", encoding="utf-8")
    with pytest.raises(CorpusError, match="no \\(non-hidden\\) files"):
        load_items(tmp_path / "empty")


# ----------------------------------------------------------------------- read-only


def test_sources_unchanged_after_loading(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "corpus")
    src = write_jsonl(tmp_path / "in.jsonl", ['{"id": "a", "text": "x"}', "", '{"id": 2}'])
    past = 1_600_000_000
    for path in [src, *root.rglob("*")]:
        if path.is_file():
            os.utime(path, (past, past))
    before = snapshot(root) | snapshot(src)
    load_items(root, errors="replace")
    load_items(src)
    after = snapshot(root) | snapshot(src)
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "in.jsonl"]


def test_failed_load_leaves_source_unchanged(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "bad.jsonl", ['{"id": "a"}', "{broken"])
    before = snapshot(src)
    with pytest.raises(CorpusError):
        load_items(src)
    assert snapshot(src) == before
