"""The console script ends once the exit handlers have run, without the interpreter's teardown."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = """
import atexit, logging, sys
from prefect_fanout.cli.lifecycle import bounded_exit, end_once_exit_handlers_ran

end_once_exit_handlers_ran()
log = logging.getLogger("exit-test")
log.addHandler(logging.FileHandler(sys.argv[1], delay=True))
log.warning("a line the file handler holds until it is flushed")
atexit.register(print, "a later exit handler ran", flush=True)


class Teardown:
    def __del__(self):
        print("the interpreter tore the module down", flush=True)


kept = Teardown()
print("the command's result")
if sys.argv[2] == "error":
    raise RuntimeError("an uncaught error")
sys.exit(bounded_exit(int(sys.argv[2])))
"""


def _run(tmp_path: Path, how: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    log = tmp_path / "log.txt"
    return subprocess.run(
        [sys.executable, str(script), str(log), how],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("code", [0, 3])
def test_the_process_ends_with_its_code_after_the_handlers_and_skips_the_teardown(
    tmp_path: Path, code: int
) -> None:
    done = _run(tmp_path, str(code))
    assert done.returncode == code, done.stderr
    assert done.stdout.splitlines() == ["the command's result", "a later exit handler ran"]
    # the file handler's line was flushed although logging's own exit handler never ran
    assert "file handler holds" in (tmp_path / "log.txt").read_text(encoding="utf-8")


def test_an_uncaught_error_gets_the_interpreter_s_usual_teardown(tmp_path: Path) -> None:
    done = _run(tmp_path, "error")
    assert done.returncode == 1
    assert "RuntimeError: an uncaught error" in done.stderr
    assert "the interpreter tore the module down" in done.stdout
