"""Real OpenAI-compatible servers with a real small model, for the ``realmodel`` test tier.

``scripts/local-model.sh`` builds (once, into a cache outside the repository) the Gemma 3
270M GGUF, llama.cpp's ``llama-server`` and llama-cpp-python's server; ``scripts/test.sh``
runs it before pytest. :func:`start` runs one of the servers on a free loopback port.

Run ``python -m tests.realmodel llama-server`` (or ``llama-cpp-python``) to serve one in
the foreground, e.g. to try ``fanout`` against it by hand.
"""

from __future__ import annotations

import os
import signal
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
    # A server counts as built once its build passed the script's smoke test (its .ok stamp).
    if kind in (None, "llama-server"):
        needed["llama-server"] = cache / "bin" / "llama-server"
        needed["llama-server (its smoke test did not pass)"] = cache / "bin" / ".ok"
    if kind in (None, "llama-cpp-python"):
        needed["llama-cpp-python"] = cache / "llama-cpp-python" / "bin" / "python"
        needed["llama-cpp-python (its smoke test did not pass)"] = (
            cache / "llama-cpp-python" / ".ok"
        )
    absent = [name for name, path in needed.items() if not path.exists()]
    if not absent:
        return None
    log = cache / "build.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no build log)"
    return (
        f"not built in {cache}: {', '.join(absent)}. `bash scripts/local-model.sh` builds them "
        f"(scripts/test.sh runs it). Last build output:\n{tail}"
    )


def model_threads() -> str:
    """Threads the model runs on: 2, or 1 while other tests run beside it (pytest-xdist).

    llama.cpp's threads wait for each other at every step by spinning; with another
    worker's tests on the same 2 cores a spinning thread holds a core its partner needs,
    and the model ran 3-8 times slower (a 20-item map passed its 280 s bound). One
    thread has no partner to wait for.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return "1" if workers > 1 else "2"


def command(kind: str, port: int) -> list[str]:
    """The command line that serves the model with server ``kind`` on 127.0.0.1:port."""
    model = str(gguf_path())
    threads = model_threads()
    if kind == "llama-server":
        return [
            str(cache_dir() / "bin" / "llama-server"),
            "-m", model, "--host", "127.0.0.1", "--port", str(port),
            "-c", "4096", "-np", "2", "-t", threads, "--no-jinja", "--chat-template", "gemma",
            "-a", MODEL_ALIAS,
        ]  # fmt: skip
    if kind == "llama-cpp-python":
        return [
            str(cache_dir() / "llama-cpp-python" / "bin" / "python"),
            "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
            "--port", str(port), "--chat_format", "gemma", "--n_ctx", "4096",
            "--n_threads", threads, "--n_threads_batch", threads,
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

    def death(self) -> str | None:
        """None while the server runs; else how it ended and the end of its log."""
        if self.process.poll() is None:
            return None
        return f"{self.kind} {describe_exit(self.process.returncode)}:\n{self.log_tail()}"


def describe_exit(code: int) -> str:
    """An exit code in words; a negative code is the signal that killed the process."""
    if code < 0:
        name = signal.Signals(-code).name
        why = " (it uses CPU instructions this machine lacks)" if name == "SIGILL" else ""
        return f"died of {name}{why} (exit {128 - code})"
    return f"exited with {code}"


def start(kind: str, port: int, log: Path, argv: list[str] | None = None) -> LocalServer:
    """Start server ``kind``, wait until it lists its model, then make one short completion.

    The first completion is where a binary built for another CPU dies (SIGILL), so it is made
    here: a dead server fails the fixture once, with its exit and log, instead of every call
    retrying "Connection refused".

    Args:
        kind: One of :data:`SERVERS`.
        port: The loopback port to serve on.
        log: Where the server's output goes.
        argv: The command to run instead of :func:`command` (tests of this module).

    Raises:
        RuntimeError: It exited, did not answer within :data:`START_TIMEOUT` seconds, or
            failed its first completion; the message has its exit code and log tail.
    """
    began = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv or command(kind, port),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = began + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{kind} {describe_exit(process.returncode)} at start:\n{tail}")
        try:
            answer = httpx.get(f"{base_url}/models", timeout=2)
            # llama-server answers 503 while it loads the model
            if answer.status_code == 200 and answer.json().get("data"):
                model = str(answer.json()["data"][0]["id"])
                server = LocalServer(kind, base_url, model, process, log)
                first_completion(server)
                server.started_s = time.monotonic() - began
                return server
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)  # readiness polling of an external process, not synchronisation
    process.kill()
    raise RuntimeError(f"{kind} did not start in {START_TIMEOUT:.0f}s:\n{log.read_text()[-3000:]}")


def first_completion(server: LocalServer) -> None:
    """One short completion; raises RuntimeError with the exit and log if the server dies."""
    try:
        answer = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=START_TIMEOUT,
        )
        answer.raise_for_status()
    except httpx.HTTPError as exc:
        try:
            server.process.wait(timeout=5)  # a crashing server: let it finish dying
        except subprocess.TimeoutExpired:
            pass
        death = server.death()
        if death is None:
            server.process.kill()
            raise RuntimeError(f"{server.kind} failed its first completion: {exc}") from exc
        raise RuntimeError(f"{death}\n(during its first completion)") from exc


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
