"""examples/shared_storage.py: one storage block as result storage of several processes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "shared_storage.py"
ITEMS = 20

pytestmark = pytest.mark.usefixtures("prefect_server")


def _start(prefect_server, fake_openai, machine: Path, *args: str, **env: str) -> subprocess.Popen:
    machine.mkdir(parents=True, exist_ok=True)
    environment = prefect_server.env(
        PREFECT_HOME=str(machine / "home"),
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY="sk-test",
        **env,
    )
    environment.pop("FANOUT_MODEL", None)
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_processes_share_answers_and_locks_through_one_block(
    prefect_server, fake_openai, tmp_path
):
    fake_openai.default_latency = 0.3  # the two runs' identical calls overlap
    shared = tmp_path / "shared"
    tag = uuid.uuid4().hex[:8]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": f"i{i}", "text": f"shared {tag} {i}"}) + "\n" for i in range(ITEMS)
        )
    )
    saved = _start(prefect_server, fake_openai, tmp_path / "admin", "save", str(shared / "results"))
    out, err = saved.communicate(timeout=300)
    assert saved.returncode == 0, err[-3000:]

    # Two "machines" at once: their own PREFECT_HOME and output directory; the block for
    # answers and PREFECT_LOCAL_STORAGE_PATH on the shared mount for the locks.
    locks = {"PREFECT_LOCAL_STORAGE_PATH": str(shared / "local")}
    runs = [
        _start(
            prefect_server,
            fake_openai,
            tmp_path / name,
            "map",
            str(corpus),
            str(tmp_path / name / "out"),
            **locks,
        )  # fmt: skip
        for name in ("machine-a", "machine-b")
    ]
    summaries = [_finish(run) for run in runs]
    assert all(s["completed"] == ITEMS for s in summaries)
    assert fake_openai.count(f"shared {tag}") == ITEMS  # every call made once, not twice
    assert sum(s["cached"] for s in summaries) == ITEMS
    records = [p for p in (shared / "results").iterdir() if p.name.startswith("fanout-")]
    assert len(records) == ITEMS
    for name in ("machine-a", "machine-b"):
        final = (tmp_path / name / "out" / "final.jsonl").read_text().splitlines()
        assert len(final) == ITEMS

    # A third machine with nothing shared but the block: every answer is a cache hit.
    third = _start(prefect_server, fake_openai, tmp_path / "machine-c", "map", str(corpus),
                   str(tmp_path / "machine-c" / "out"),
                   PREFECT_LOCAL_STORAGE_PATH=str(tmp_path / "machine-c" / "storage"))  # fmt: skip
    summary = _finish(third)
    assert summary["cached"] == ITEMS
    assert fake_openai.count(f"shared {tag}") == ITEMS
