"""Smoke-test a built model server: start it, ask for one short completion, stop it.

Used by ``scripts/local-model.sh`` right after a build (a build that fails is not cached) and
before a cached build is reused (a binary that cannot run on this CPU is rebuilt). Standard
library only, so it runs with any Python 3.

Usage::

    python scripts/smoke_model_server.py KIND LOG -- COMMAND...

KIND names the server in messages; COMMAND serves the model on ``127.0.0.1:{port}`` (the
literal ``{port}`` is replaced by a free port). On success it prints one line, ``ok
tokens_per_s=... completion_tokens=... seconds=...``, and exits 0. On failure it says what
failed (the exit code and signal if the server died, and the last lines of its log) on stderr
and exits 1. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 120.0
ANSWER_TIMEOUT_S = 120.0
PROMPT = "Name three colours."
MAX_TOKENS = 32


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def describe_exit(code: int) -> str:
    """An exit code in words; a negative code is the signal that killed the process."""
    if code < 0:
        name = signal.Signals(-code).name
        why = " (the binary uses CPU instructions this machine lacks)" if name == "SIGILL" else ""
        return f"killed by {name}{why}"
    return f"exited with {code}"


def log_tail(log: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of the server's log."""
    if not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


class SmokeFailure(Exception):
    """The server could not serve one completion."""


def wait_ready(process: subprocess.Popen[bytes], base: str, kind: str) -> None:
    """Wait until the server lists a model, or fail when it dies or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SmokeFailure(f"{kind} {describe_exit(process.returncode)} while starting")
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as answer:
                if answer.status == 200 and json.loads(answer.read()).get("data"):
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.25)  # readiness polling of an external process
    raise SmokeFailure(f"{kind} did not list a model within {START_TIMEOUT_S:.0f} s")


def one_completion(process: subprocess.Popen[bytes], base: str, kind: str) -> dict[str, float]:
    """Ask for one short completion; return its token count, seconds and tokens/s."""
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
    ).encode()
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    began = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_TIMEOUT_S) as answer:
            reply = json.loads(answer.read())
    except (OSError, ValueError) as exc:
        time.sleep(0.5)  # let a crashing server finish dying so its exit code can be read
        if process.poll() is not None:
            raise SmokeFailure(
                f"{kind} {describe_exit(process.returncode)} during its first completion"
            ) from exc
        raise SmokeFailure(f"{kind} gave no completion: {exc}") from exc
    seconds = time.monotonic() - began
    text = reply.get("choices", [{}])[0].get("message", {}).get("content")
    tokens = int(reply.get("usage", {}).get("completion_tokens") or 0)
    if not isinstance(text, str) or not text.strip() or tokens <= 0:
        raise SmokeFailure(f"{kind} answered without text or tokens: {json.dumps(reply)[:500]}")
    timings = reply.get("timings") or {}
    rate = float(timings.get("predicted_per_second") or tokens / seconds)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": rate}


def smoke(kind: str, log: Path, command: list[str]) -> dict[str, float]:
    """Run the whole smoke test and stop the server, whatever happened."""
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in command]
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(process, base, kind)
        return one_completion(process, base, kind)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def main(argv: list[str]) -> int:
    """Parse ``KIND LOG -- COMMAND...`` and run the smoke test."""
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    kind, log = argv[0], Path(argv[1])
    try:
        result = smoke(kind, log, argv[3:])
    except (SmokeFailure, OSError) as exc:
        print(f"smoke test failed: {exc}\nlast lines of {log}:\n{log_tail(log)}", file=sys.stderr)
        return 1
    print(
        f"ok tokens_per_s={result['tokens_per_s']:.1f} "
        f"completion_tokens={result['tokens']} seconds={result['seconds']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
