"""Reading a corpus (a JSONL file or a directory of files) into `Item`s.

The module is pure: it does not import Prefect and never modifies its sources
(files are only opened for reading).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from prefect_fanout.errors import CorpusError
from prefect_fanout.textcheck import clean_text, unencodable

__all__ = ["CorpusError", "Item", "load_items"]


class Item(BaseModel):
    """One unit of work read from a corpus.

    Attributes:
        id: Stable identifier: the JSONL `id` (ints become strings) or, for a
            directory, the file's path relative to it with forward slashes.
        text: The file's content for file items; for JSONL items the record's
            `text` field when it is a string, else None.
        record: The JSONL object, or `{"id", "path", "text", "mtime"}` for a file.
        path: Absolute path of a file item, else None.
        mtime: Modification time (epoch seconds) of a file item, else None.
        index: Zero-based position in input order.

    """

    model_config = ConfigDict(frozen=True)

    id: str
    text: str | None = None
    record: dict[str, Any]
    path: str | None = None
    mtime: float | None = None
    index: int

    def __hash__(self) -> int:
        # The default frozen-model hash fails on the `record` dict; equal items
        # have equal scalar fields, so hashing those keeps hash/eq consistent.
        return hash((self.id, self.index, self.text, self.path, self.mtime))

    def prompt_text(self) -> str:
        """Return the text to put in a prompt for this item.

        Returns:
            `text` if it is not None, else the record as canonical JSON
            (sorted keys, non-ASCII kept).

        """
        if self.text is not None:
            return self.text
        return json.dumps(self.record, sort_keys=True, ensure_ascii=False)


def load_items(
    source: str | Path,
    *,
    encoding: str = "utf-8",
    errors: str = "strict",
    follow_symlinks: bool = False,
) -> list[Item]:
    """Read a JSONL file or a directory of files into items, in input order.

    A JSONL file holds one JSON object per line, each with an `id` (a string or
    an int, converted to str); blank lines are skipped. A directory yields one
    item per non-hidden file, sorted by relative path; hidden files and
    directories (names starting with '.') are skipped. A source with no items
    (an empty or blank-only file, an empty directory, one with only hidden
    files) is an error: an empty run would only overwrite a finished one.

    Args:
        source: Path of a JSONL file or of a directory.
        encoding: How the files of a directory are decoded (JSONL is UTF-8).
        errors: ``strict`` (default: a file that does not decode, or a JSONL
            line whose text cannot be encoded -- a lone UTF-16 surrogate escape
            -- is an error naming the file and line), ``replace``
            or ``ignore``.
        follow_symlinks: Read links that point outside a directory corpus
            (default: such a link is an error naming it).

    Returns:
        The items, with `index` set to their position.

    Raises:
        CorpusError: The path does not exist or a line/file is invalid; the
            message names the file and, for JSONL, the line number.

    """
    path = Path(source)
    if path.is_dir() or path.is_file():
        if path.is_dir():
            items = _load_directory(path, encoding, errors, follow_symlinks)
        else:
            items = _load_jsonl(path, errors)
        if not items:
            what = "directory has no (non-hidden) files" if path.is_dir() else "file has no items"
            raise CorpusError(f"{path}: the {what}; nothing to map (no output was touched)")
        return items
    if not path.exists():
        raise CorpusError(f"{path}: no such file or directory")
    raise CorpusError(f"{path}: not a regular file or directory")


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _load_jsonl(path: Path, errors: str = "strict") -> list[Item]:
    data = _read_bytes(path)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    items: list[Item] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(data.splitlines(), start=1):
        where = f"{path}, line {lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{where}: not valid UTF-8 (byte {exc.start + 1})") from exc
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{where}, column {exc.colno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(record, dict):
            kind = type(record).__name__
            raise CorpusError(f"{where}: expected a JSON object, got {kind}")
        record = _encodable(record, where, errors)
        item_id = _record_id(record, where)
        if item_id in first_line:
            raise CorpusError(
                f"{where}: duplicate id {item_id!r} (first seen on line {first_line[item_id]})"
            )
        first_line[item_id] = lineno
        text = record.get("text")
        items.append(
            Item(
                id=item_id,
                text=text if isinstance(text, str) else None,
                record=record,
                index=len(items),
            )
        )
    return items


def _encodable(record: dict[str, Any], where: str, errors: str) -> dict[str, Any]:
    bad = unencodable(record)
    if not bad:
        return record
    if errors != "strict":
        return clean_text(record, errors)
    raise CorpusError(
        f"{where}: field {bad[0][0] or '(root)'}: text that cannot be encoded as UTF-8 "
        f"({bad[0][1]}, a lone surrogate); "
        "fix the line, or pass --errors replace (U+FFFD) or --errors ignore"
    )


def _record_id(record: dict[str, Any], where: str) -> str:
    if "id" not in record:
        raise CorpusError(f"{where}: missing 'id' field")
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, str | int):
        kind = type(value).__name__
        raise CorpusError(f"{where}: 'id' must be a string or an integer, got {kind}")
    item_id = str(value)
    if not item_id.strip():
        raise CorpusError(f"{where}: 'id' must not be empty")
    return item_id


def _walk_files(root: Path, follow_symlinks: bool = False) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    real_root = root.resolve()

    def on_error(exc: OSError) -> None:
        raise CorpusError(f"{exc.filename}: cannot list directory: {exc.strerror}") from exc

    for dirpath, dirnames, filenames in os.walk(
        root, onerror=on_error, followlinks=follow_symlinks
    ):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        base = Path(dirpath)
        for name in filenames:
            if name.startswith("."):
                continue
            full = base / name
            if not follow_symlinks:
                _refuse_outside_link(full, real_root)
            if full.is_file():
                found.append((full.relative_to(root).as_posix(), full))
    found.sort(key=lambda pair: pair[0])
    return found


def _refuse_outside_link(full: Path, real_root: Path) -> None:
    """A link (or a file under a linked directory) resolving outside the corpus is an error."""
    target = full.resolve()
    if target == real_root or real_root in target.parents:
        return
    raise CorpusError(
        f"{full}: a symbolic link to {target}, outside the corpus directory {real_root}; "
        "its content is not read unless --follow-symlinks is given"
    )


def _decode(full: Path, data: bytes, encoding: str, errors: str) -> str:
    try:
        return data.decode(encoding, errors=errors)
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{full}: not valid {encoding} at byte {exc.start} ({exc.reason}); convert the "
            "file, or choose --encoding ENCODING or --errors replace|ignore"
        ) from None
    except LookupError as exc:
        raise CorpusError(f"{full}: cannot decode: {exc}") from None


def _load_directory(
    root: Path, encoding: str = "utf-8", errors: str = "strict", follow_symlinks: bool = False
) -> list[Item]:
    items: list[Item] = []
    for rel, full in _walk_files(root, follow_symlinks):
        text = _decode(full, _read_bytes(full), encoding, errors)
        try:
            mtime = full.stat().st_mtime
        except OSError as exc:
            raise CorpusError(f"{full}: cannot stat: {exc.strerror or exc}") from exc
        abs_path = str(full.absolute())
        record = {"id": rel, "path": abs_path, "text": text, "mtime": mtime}
        items.append(
            Item(id=rel, text=text, record=record, path=abs_path, mtime=mtime, index=len(items))
        )
    return items
