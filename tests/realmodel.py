"""Real OpenAI-compatible servers with a real small model, for the ``realmodel`` test tier.

``scripts/local-model.sh`` builds (once, into a cache outside the repository) the Gemma 3
270M GGUF, llama.cpp's ``llama-server`` and llama-cpp-python's server; ``scripts/test.sh``
runs it before pytest. :func:`start` runs one of the servers on a free loopback port.

Run ``python -m tests.realmodel llama-server`` (or ``llama-cpp-python``) to serve one in
the foreground, e.g. to try ``fanout`` against it by hand.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("llama-server", "llama-cpp-python")
MODEL_ALIAS = "gemma-3-270m"
START_TIMEOUT = 180.0


def cache_dir() -> Path:
    """Where ``scripts/local-model.sh`` keeps the model and the servers."""
    default = Path.home() / ".cache" / "prefect-fanout-models"
    return Path(os.environ.get("FANOUT_MODEL_CACHE") or default)


def gguf_path() -> Path:
    """The assembled Gemma 3 270M GGUF."""
    return cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"


def missing(kind: str | None = None) -> str | None:
    """Why server ``kind`` (None: both) cannot run, or None when everything it needs is built."""
    cache = cache_dir()
    needed = {"the model": cache / "gguf" / ".ok"}
    if kind in (None, "llama-server"):
        needed["llama-server"] = cache / "bin" / "llama-server"
    if kind in (None, "llama-cpp-python"):
        needed["llama-cpp-python"] = cache / "llama-cpp-python" / "bin" / "python"
    absent = [name for name, path in needed.items() if not path.exists()]
    done = list((cache / "llama-cpp-python").glob(".ok-*"))
    if kind in (None, "llama-cpp-python") and not done and "llama-cpp-python" not in absent:
        absent.append("llama-cpp-python (its build did not finish)")
    if not absent:
        return None
    log = cache / "build.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no build log)"
    return (
        f"not built in {cache}: {', '.join(absent)}. `bash scripts/local-model.sh` builds them "
        f"(scripts/test.sh runs it). Last build output:\n{tail}"
    )


def command(kind: str, port: int) -> list[str]:
    """The command line that serves the model with server ``kind`` on 127.0.0.1:port."""
    model = str(gguf_path())
    if kind == "llama-server":
        return [
            str(cache_dir() / "bin" / "llama-server"),
            "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "-c", "4096", "-np", "2", "-t", "2", "--no-jinja", "--chat-template", "gemma",
            "-a", MODEL_ALIAS,
        ]  # fmt: skip
    if kind == "llama-cpp-python":
        return [
            str(cache_dir() / "llama-cpp-python" / "bin" / "python"),
            "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--chat_format", "gemma", "--n_ctx", "4096",
            "--n_threads", "2",
        ]  # fmt: skip
    raise ValueError(f"unknown server {kind!r}; one of {', '.join(SERVERS)}")


@dataclass
class LocalServer:
    """A running real server.

    Attributes:
        kind: ``llama-server`` or ``llama-cpp-python``.
        base_url: ``http://127.0.0.1:PORT/v1``.
        model: The model id it lists at ``/v1/models`` (what it reports).
        process: The server process (its own session: stop its group).
        log: Its output file.
    """

    kind: str
    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log: Path
    started_s: float = field(default=0.0)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def start(kind: str, port: int, log: Path) -> LocalServer:
    """Start server ``kind`` and wait until it lists its model.

    Raises:
        RuntimeError: It exited or did not answer within :data:`START_TIMEOUT` seconds.
    """
    began = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(kind, port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = began + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{kind} exited with {process.returncode}:\n{tail}")
        try:
            answer = httpx.get(f"{base_url}/models", timeout=2)
            # llama-server answers 503 while it loads the model
            if answer.status_code == 200 and answer.json().get("data"):
                model = str(answer.json()["data"][0]["id"])
                return LocalServer(kind, base_url, model, process, log, time.monotonic() - began)
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)  # readiness polling of an external process, not synchronisation
    process.kill()
    raise RuntimeError(f"{kind} did not start in {START_TIMEOUT:.0f}s:\n{log.read_text()[-3000:]}")


def main(argv: list[str] | None = None) -> None:
    """Serve the model with one server in the foreground until Ctrl-C."""
    args = argv if argv is not None else sys.argv[1:]
    kind = args[0] if args else "llama-server"
    port = int(args[1]) if len(args) > 1 else 8080
    problem = missing(kind)
    if problem:
        raise SystemExit(problem)
    os.execv(command(kind, port)[0], command(kind, port))


if __name__ == "__main__":
    main()
