"""The documentation site builds with `mkdocs build --strict`, offline, and its generated
reference pages hold every command and every public name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")


def test_mkdocs_build_strict_offline(tmp_path):
    env = dict(os.environ)
    dead = "http://127.0.0.1:9"  # any attempt to fetch something at build time fails
    env.update(HTTP_PROXY=dead, HTTPS_PROXY=dead, http_proxy=dead, https_proxy=dead)
    env.update(NO_MKDOCS_2_WARNING="1", NO_PROXY="", no_proxy="")
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("call", "validate", "dispatch", "map", "server"):
        assert f"usage: fanout {command}" in cli
    assert "--max-workers" in cli and "--verbose" in cli
    api = (site / "reference" / "api" / "index.html").read_text()
    import prefect_fanout

    for name in prefect_fanout.__all__:
        module = getattr(prefect_fanout, name).__module__
        assert f'id="{module}.{name}"' in api, name  # documented from its own module
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()
