"""The realmodel tier's harness: a server that dies is reported at once with its exit and log,
and the build script's smoke test refuses a broken binary.

These run without the real model: a tiny Python server stands in for llama-server, so they
check the harness itself (tests/realmodel.py and scripts/smoke_model_server.py).
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests import realmodel
from tests.conftest import free_port, stop_process_group

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "scripts" / "smoke_model_server.py"

# Lists a model, then dies of SIGILL at its first completion, as a binary built for another
# CPU does; with "ok" as its first argument it answers the completion instead.
DYING_SERVER = r"""
import json, os, signal, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self._send({"data": [{"id": "stand-in"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if sys.argv[1] != "ok":
            print("llama threadpool init", flush=True)
            os.kill(os.getpid(), signal.SIGILL)
        self._send({"choices": [{"message": {"content": "red"}}],
                    "usage": {"completion_tokens": 1}})

    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

print("stand-in listening", flush=True)
HTTPServer(("127.0.0.1", int(sys.argv[2])), Handler).serve_forever()
"""


def stand_in(tmp_path: Path) -> Path:
    script = tmp_path / "stand_in.py"
    script.write_text(DYING_SERVER)
    return script


def test_a_server_that_dies_at_its_first_completion_fails_start_with_exit_and_log(tmp_path):
    port = free_port()
    argv = [sys.executable, str(stand_in(tmp_path)), "die", str(port)]
    with pytest.raises(RuntimeError) as caught:
        realmodel.start("llama-server", port, tmp_path / "server.log", argv=argv)
    message = str(caught.value)
    assert "died of SIGILL" in message and "exit 132" in message
    assert "llama threadpool init" in message  # the last lines of its log


def test_a_healthy_server_starts_and_reports_no_death(tmp_path):
    port = free_port()
    argv = [sys.executable, str(stand_in(tmp_path)), "ok", str(port)]
    server = realmodel.start("llama-server", port, tmp_path / "server.log", argv=argv)
    try:
        assert server.model == "stand-in" and server.death() is None
    finally:
        stop_process_group(server.process)
    assert "llama-server" in (server.death() or "")


def smoke(tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SMOKE), "stand-in", str(tmp_path / "smoke.log"), "--", *command],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_smoke_test_passes_a_server_that_answers(tmp_path):
    done = smoke(tmp_path, sys.executable, str(stand_in(tmp_path)), "ok", "{port}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok tokens_per_s=")


def test_the_smoke_test_catches_a_server_that_dies_of_sigill(tmp_path):
    done = smoke(tmp_path, sys.executable, str(stand_in(tmp_path)), "die", "{port}")
    assert done.returncode == 1
    assert "killed by SIGILL" in done.stderr and "during its first completion" in done.stderr
    assert "llama threadpool init" in done.stderr


def test_the_smoke_test_catches_a_truncated_binary(tmp_path):
    broken = tmp_path / "llama-server"
    broken.write_bytes(Path(sys.executable).resolve().read_bytes()[:4096])  # a cut ELF file
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    done = smoke(tmp_path, str(broken), "--port", "{port}")
    assert done.returncode == 1
    assert "smoke test failed" in done.stderr
