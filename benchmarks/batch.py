"""Batch mode at scale: 10,000 items through the test server's Batch API.

    python benchmarks/batch.py [--items 10000] [--completion 5] [--poll 1]

One ``fanout map --batch`` process (the embedded Prefect server, a new PREFECT_HOME and
result storage) against the fake OpenAI server, whose batches take ``--completion``
seconds from creation to their end. Reported: the process's wall time, the batches' time at
the server (creation of the first to the end of the last), the run's own overhead (wall
time minus that; also inside the flow run alone, without the process's start-up and the
embedded server's), the peak RSS of the process, and a fully cached rerun.

Run on demand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fakeopenai import FakeOpenAI  # noqa: E402


def _clock(line: str) -> float:
    hours, minutes, seconds = line[:12].split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def flow_seconds(stderr: str) -> float | None:
    """Seconds from the flow run's start to its end, from Prefect's log lines."""
    begun = [_clock(x) for x in stderr.splitlines() if "Beginning flow run" in x]
    ended = [_clock(x) for x in stderr.splitlines() if "Flow run" in x and "Finished in state" in x]
    return round(ended[-1] - begun[0], 2) if begun and ended else None


def _run(command: list[str], env: dict[str, str], log: str | None = None) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if log:
        Path(log).write_text(done.stderr)
    _run.flow_s = flow_seconds(done.stderr)  # type: ignore[attr-defined]
    if done.returncode != 0:
        raise SystemExit(f"fanout map failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, json.loads(done.stdout)


def main() -> None:
    """Run the benchmark and print its figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--completion", type=float, default=5.0)
    parser.add_argument("--poll", type=float, default=1.0, help="--batch-poll-seconds")
    parser.add_argument("--log", help="write the first run's stderr here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI() as fake:
        root = Path(tmp)
        fake.batches.completion_seconds = args.completion
        source = root / "in.jsonl"
        source.write_text(
            "".join(
                json.dumps({"id": f"i{n}", "text": f"item {n} text"}) + "\n"
                for n in range(args.items)
            )
        )
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(
            OPENAI_BASE_URL=fake.base_url,
            OPENAI_API_KEY="sk-bench",
            PREFECT_HOME=str(root / "home"),
            PREFECT_LOCAL_STORAGE_PATH=str(root / "storage"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        )
        command = [sys.executable, "-m", "prefect_fanout.cli", "map", str(source)]
        command += ["--agent", "default", "--partition", "count:8", "--output", str(root / "out")]
        command += ["--batch", "--batch-poll-seconds", str(args.poll)]
        wall, summary = _run(command, env, args.log)
        flow_s = _run.flow_s  # type: ignore[attr-defined]
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        at_server = 0.0
        with fake.batches._lock:
            plans = list(fake.batches._plans.values())
        if plans:
            at_server = max(p["ended"] for p in plans) - min(p["created"] for p in plans)
        rerun, again = _run(command, env)
        figures = {
            "items": args.items,
            "batches": fake.batches.created,
            "completion_s": args.completion,
            "poll_first_s": args.poll,
            "wall_s": round(wall, 2),
            "at_server_s": round(at_server, 2),
            "overhead_s": round(wall - at_server, 2),
            "flow_run_s": flow_s,
            "flow_overhead_s": None if flow_s is None else round(flow_s - at_server, 2),
            "peak_rss_mib": round(peak_mib, 1),
            "completed": summary["completed"],
            "answered_by_batch": summary["batch"]["answered"],
            "online_requests": fake.total,
            "cached_rerun_s": round(rerun, 2),
            "cached_rerun_cached": again["cached"],
        }
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
