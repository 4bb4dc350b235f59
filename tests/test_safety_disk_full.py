"""Issue 22, a full disk is reported once, clearly, and nothing is left half-written.

The full file systems are small tmpfs mounts, so these tests need root (and a
kernel that lets the container mount tmpfs); elsewhere they skip and say why.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_fanout.files import TEMP_SUFFIX
from tests.fakeopenai import FakeOpenAI
from tests.map_helpers import read_jsonl, tag, write_corpus
from tests.test_cli_dispatch import fanout

pytestmark = [pytest.mark.server, pytest.mark.faults]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs (resizable with ``mount -o remount,size=...``)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _resize(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


def _records(run: str, n: int = 40) -> list[dict[str, Any]]:
    return [{"id": f"{run}-{i}", "text": f"{run} {i} " + "word " * 400} for i in range(n)]


def _map(server: Any, fake: FakeOpenAI, source: Path, out: Path, *extra: str, **env: str) -> Any:
    environment = server.env(OPENAI_BASE_URL=fake.base_url, OPENAI_API_KEY="sk-test", **env)
    environment.pop("FANOUT_MODEL", None)
    return fanout(
        "map", str(source), "--agent", "default", "--partition", "count:2", "--output", str(out),
        "--partition-retries", "0", *extra, env=environment,
    )  # fmt: skip


def test_answers_that_could_not_be_stored_are_counted_once_and_asked_again(
    prefect_server: Any, fake_openai: FakeOpenAI, small_disk: Path, tmp_path: Path
) -> None:
    run = tag()
    source = write_corpus(tmp_path / "in.jsonl", _records(run))
    out = tmp_path / "out"
    first = _map(
        prefect_server, fake_openai, source, out, PREFECT_LOCAL_STORAGE_PATH=str(small_disk)
    )
    assert first.returncode == 1, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert summary["completed"] == 40 and 0 < summary["unstored"] == len(summary["unstored_ids"])
    assert first.stderr.count("could not be stored in result storage") == 1
    assert "No space left on device" in first.stderr
    assert "committing transaction" not in first.stderr  # no traceback per call
    assert f"{summary['unstored']} answer(s) not stored in result storage" in first.stderr
    assert not [p for p in small_disk.iterdir() if p.is_file() and p.stat().st_size == 0]
    assert all(row["status"] == "completed" for row in read_jsonl(out / "final.jsonl"))

    _resize(small_disk, "8m")
    second = _map(
        prefect_server, fake_openai, source, out, PREFECT_LOCAL_STORAGE_PATH=str(small_disk)
    )
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["cached"] == 40 - summary["unstored"] and again["unstored"] == 0
    unstored_prompt = next(
        r["text"] for r in _records(run) if r["id"] == summary["unstored_ids"][0]
    )
    assert fake_openai.count(unstored_prompt) == 2  # asked again, since it was never stored


def test_outputs_that_could_not_be_written_keep_the_previous_ones_and_are_named(
    prefect_server: Any, fake_openai: FakeOpenAI, small_disk: Path, tmp_path: Path
) -> None:
    run = tag()
    _resize(small_disk, "2m")
    source = write_corpus(tmp_path / "in.jsonl", _records(run))
    out = small_disk / "out"
    first = _map(prefect_server, fake_openai, source, out, "--prompt", "one: {text}")
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    stat = os.statvfs(small_disk)
    filler = small_disk / "filler"  # beside the output directory, not in it
    # 64 KiB free: room for a new partition file (about 42 KB), not for final.jsonl (85 KB)
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 64 * 1024))
    second = _map(prefect_server, fake_openai, source, out, "--prompt", "two: {text}")
    assert second.returncode == 1, second.stderr[-3000:]
    summary = json.loads(second.stdout)  # the summary is printed whatever was written
    assert [p["status"] for p in summary["partitions"]] == ["written", "written"]
    assert "final.jsonl" in summary["missing_outputs"]
    assert "No space left on device" in summary["missing_outputs"]["final.jsonl"]
    assert second.stderr.count("could not write final.jsonl") == 1
    assert "not written: " in second.stderr and "Traceback" not in second.stderr
    for name in summary["missing_outputs"]:
        assert (out / name).read_bytes() == before[out / name]  # the previous one, intact
    assert (out / "final.jsonl").read_bytes() == before[out / "final.jsonl"]
    assert not [p for p in out.rglob("*") if p.name.endswith(TEMP_SUFFIX)]
