"""Dask and Ray against threads: B6-B8, ratios against the thread runner in the same run.

    python benchmarks/runners.py [--only B6,B7,B8,D1,D2] [--runs 3] [--runner dask]

Every figure is a whole ``fanout map`` process (start to exit, the cluster's start-up
included) and its map stage (``items_per_second`` of ``summary.json``), the median of
``--runs`` runs, against the test suite's fake OpenAI server on 127.0.0.1 and a
standalone ``prefect server start`` (SQLite, README's settings):

- B6: 1,000 instant calls, ``--task-runner dask`` / thread at the same ``--max-workers``.
  Target <= 1.0.
- B7: 400 calls of 0.5 s, the same. Target <= 1.1.
- B8: 10,000 instant calls, dask with two worker processes / thread: calls/s of the
  map stage, the thread runner's over dask's. Target: dask >= 1.3x the thread runner.
  ``--postgres`` runs it on a PostgreSQL-backed server too.
- D1: a dispatch of a 3 x 20 plan (60 tasks of 2 s, each level on the last), dask /
  thread at ``--max-workers 20``: a dispatch sends each plan task to the cluster alone.
- D2: the same plan with instant tasks: what the per-task submission costs.

Run on demand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import (  # noqa: E402
    FANOUT,
    Standalone,
    client_env,
    corpus,
    median,
    plan_file,
    postgres_url,
    timed,
)

from tests.fakeopenai import FakeOpenAI  # noqa: E402


def map_once(
    fake: FakeOpenAI, api: str, items: int, workers: int, runner: str, extra: list[str]
) -> tuple[float, float]:
    """One ``fanout map`` of new items: (whole process s, map-stage calls/s)."""
    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    try:
        source = corpus(work / "c.jsonl", items, tag)
        out = work / "out"
        command = [*FANOUT, "map", str(source), "--output", str(out), "--agent", "default"]
        command += ["--partition", "count:8", "--max-workers", str(workers)]
        command += ["--model", "gpt-4o-mini", "--task-runner", runner, *extra]
        elapsed, _ = timed(command, client_env(fake, api, work))
        summary = json.loads((out / "summary.json").read_text())
        if summary["completed"] != items:
            raise SystemExit(f"{runner}: {summary['completed']} of {items} calls completed")
        return elapsed, float(summary["items_per_second"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def dispatch_once(fake: FakeOpenAI, api: str, runner: str) -> tuple[float, float]:
    """One ``fanout dispatch`` of a new 3 x 20 plan: (whole process s, tasks/s)."""
    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    try:
        plan = plan_file(work / "plan.json", tag, levels=3, width=20)
        command = [*FANOUT, "dispatch", str(plan), "--model", "gpt-4o-mini"]
        command += ["--max-workers", "20", "--task-runner", runner]
        elapsed, done = timed(command, client_env(fake, api, work))
        if done.returncode != 0:
            raise SystemExit(f"dispatch on {runner}: exit {done.returncode}: {done.stderr[-800:]}")
        return elapsed, round(60 / elapsed, 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compare_dispatch(
    fake: FakeOpenAI, api: str, *, runs: int, latency: float, runner: str
) -> dict[str, float]:
    """A dispatch on threads and on ``runner``, interleaved run by run; medians."""
    thread_s, thread_rate, remote_s, remote_rate = [], [], [], []
    for _ in range(runs):
        fake.default_latency = latency
        elapsed, rate = dispatch_once(fake, api, "thread")
        thread_s.append(elapsed)
        thread_rate.append(rate)
        elapsed, rate = dispatch_once(fake, api, runner)
        remote_s.append(elapsed)
        remote_rate.append(rate)
        fake.reset()
    return {
        "thread_s": median(thread_s),
        "thread_rate": median(thread_rate),
        "remote_s": median(remote_s),
        "remote_rate": median(remote_rate),
    }


def compare(
    fake: FakeOpenAI,
    api: str,
    *,
    runs: int,
    items: int,
    workers: int,
    latency: float,
    runner: str,
    extra: list[str],
) -> dict[str, float]:
    """Thread and ``runner`` side by side, interleaved run by run; medians."""
    fake.default_latency = latency
    thread_s, thread_rate, remote_s, remote_rate = [], [], [], []
    for _ in range(runs):
        elapsed, rate = map_once(fake, api, items, workers, "thread", [])
        thread_s.append(elapsed)
        thread_rate.append(rate)
        elapsed, rate = map_once(fake, api, items, workers, runner, extra)
        remote_s.append(elapsed)
        remote_rate.append(rate)
        fake.reset()
        fake.default_latency = latency
    return {
        "thread_s": median(thread_s),
        "thread_rate": median(thread_rate),
        "remote_s": median(remote_s),
        "remote_rate": median(remote_rate),
    }


def row(name: str, label: str, r: dict[str, float], target: str, by_rate: bool) -> str:
    ratio = r["remote_rate"] / r["thread_rate"] if by_rate else r["remote_s"] / r["thread_s"]
    return (
        f"| {name} | {label} | {r['remote_s']} s, {r['remote_rate']} calls/s "
        f"| {r['thread_s']} s, {r['thread_rate']} calls/s | {ratio:.2f}x ({target}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="B6,B7,B8")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--runner", default="dask", choices=("dask", "ray"))
    parser.add_argument("--workers", type=int, default=16, help="--max-workers of B6 and B8")
    parser.add_argument("--b8-items", type=int, default=10_000)
    parser.add_argument("--b8-runs", type=int, default=1)
    parser.add_argument("--postgres", action="store_true", help="B8 on PostgreSQL too")
    args = parser.parse_args()
    wanted = set(args.only.upper().split(","))
    rows: list[str] = []
    runner = args.runner
    with FakeOpenAI() as fake:
        with Standalone() as server:
            api = server.api_url
            if "B6" in wanted:
                r = compare(fake, api, runs=args.runs, items=1000, workers=args.workers,
                            latency=0.0, runner=runner, extra=[])  # fmt: skip
                label = f"1,000 instant calls, --max-workers {args.workers}"
                rows.append(row("B6", label, r, "<= 1.0", by_rate=False))
            if "B7" in wanted:
                r = compare(fake, api, runs=args.runs, items=400, workers=20,
                            latency=0.5, runner=runner, extra=[])  # fmt: skip
                rows.append(row("B7", "400 calls of 0.5 s, --max-workers 20", r, "<= 1.1",
                                by_rate=False))  # fmt: skip
            if "D1" in wanted:
                r = compare_dispatch(fake, api, runs=args.runs, latency=2.0, runner=runner)
                rows.append(row("D1", "dispatch, 60 plan tasks of 2 s in 3 levels", r,
                                "no target", by_rate=False))  # fmt: skip
            if "D2" in wanted:
                r = compare_dispatch(fake, api, runs=args.runs, latency=0.0, runner=runner)
                rows.append(row("D2", "dispatch, 60 instant plan tasks in 3 levels", r,
                                "no target", by_rate=False))  # fmt: skip
            if "B8" in wanted:
                r = compare(fake, api, runs=args.b8_runs, items=args.b8_items,
                            workers=args.workers, latency=0.0, runner=runner, extra=[])  # fmt: skip
                label = f"{args.b8_items:,} instant calls, 2 workers, SQLite"
                rows.append(row("B8", label, r, ">= 1.3 by calls/s", by_rate=True))
        if "B8" in wanted and args.postgres:
            pg_dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
            try:
                with Standalone(postgres_url(pg_dir)) as server:
                    r = compare(fake, server.api_url, runs=args.b8_runs, items=args.b8_items,
                                workers=args.workers, latency=0.0, runner=runner,
                                extra=[])  # fmt: skip
                label = f"{args.b8_items:,} instant calls, 2 workers, PostgreSQL"
                rows.append(row("B8", label, r, ">= 1.3 by calls/s", by_rate=True))
            finally:
                import subprocess

                subprocess.run(
                    ["bash", str(ROOT / "scripts" / "postgres-server.sh"), "stop", str(pg_dir)],
                    timeout=120,
                    check=False,
                    capture_output=True,
                )
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}; median of {args.runs} run(s) (B8: {args.b8_runs})")
    print(f"| target | run | {runner} (whole process, map stage) | thread (same run) | ratio |")
    print("|---|---|---|---|---|")
    for line in rows:
        print(line)


if __name__ == "__main__":
    main()
