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


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "bash scripts/test.sh" in readme  # the test command CI runs (.ci/run)
    assert "bash scripts/demo.sh" in readme
    assert "pip install -e ." in readme


def test_every_relative_link_of_the_readme_and_the_pages_resolves():
    import re

    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            if page.parent.name == "docs" and target.startswith("reference/"):
                continue  # generated at build time; the strict build above checks these links
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.name}: {target}")
    assert not broken, broken
