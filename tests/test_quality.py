"""Repository-wide checks: lint, the public API, no top-level `flows`/`blocks` packages."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    done = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_flows_and_blocks_folders_are_not_installed_packages():
    # Prefect users have folders named flows/ and blocks/: never shadow them.
    assert not (ROOT / "flows" / "__init__.py").exists()
    assert not (ROOT / "blocks" / "__init__.py").exists()
    top_level = importlib.metadata.distribution("prefect-fanout").read_text("top_level.txt")
    assert (top_level or "").split() == ["prefect_fanout"]
