"""Limits at the provider's scale: B9-B11, each against a baseline measured in the same run.

    python benchmarks/limits.py [--only B9,B10,B11] [--runs 3]

Every run is a whole ``fanout map`` process against the test suite's fake OpenAI
server on 127.0.0.1 and a standalone ``prefect server start`` (SQLite) behind a
counting relay (``benchmarks/relay.py``), so Prefect API requests are counted as a
user's proxy would count them:

- B9: a map of ``--items`` new instant calls (``--max-workers 20``) with limits far
  above what it uses (``--rpm 100000 --tpm 10000000 --max-concurrency 50``) / the
  same map without limits. Targets: time ratio <= 1.1, Prefect API requests per call
  with limits <= 0.3.
- B10: a binding ``--rpm`` over ``--b10-seconds`` with 1, 2 and 4 processes sharing the
  server: the achieved rate / the configured rate (>= 0.95), the busiest 10 s
  against the rate's share plus one request, and each process's share of the
  requests against an equal share (within 20%).
- B11: the fake server enforces R requests a minute as OpenAI does (a 429 over it,
  ``x-ratelimit-*`` headers with every answer, no Retry-After) and the map runs with
  no limit flags: the share of requests answered 429 (<= 5%), the achieved rate /
  R, items lost (0); and the same without the headers (<= 10% 429s, 0 lost); and
  (B11T alone) a provider counting each request's prompt plus ``max_tokens`` against its
  token rate: the rate reached / the N requests a minute it admits (>= 0.9, <= 5% 429s).

Run on demand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.relay import Relay  # noqa: E402
from benchmarks.run import (  # noqa: E402
    Standalone,
    client_env,
    corpus,
    map_command,
    median,
    print_table,
    timed,
)
from tests.fakeopenai import FakeOpenAI  # noqa: E402

FAR_ABOVE = ["--rpm", "100000", "--tpm", "10000000", "--max-concurrency", "50"]
WINDOW = 10.0


def most_in_window(times: list[float], width: float = WINDOW) -> int:
    """The most arrivals in any window of ``width`` seconds starting at an arrival."""
    times = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] <= start + width:
            j += 1
        best = max(best, j - i)
    return best


def b9(fake: FakeOpenAI, relay: Relay, args: argparse.Namespace) -> list[tuple[str, ...]]:
    fake.default_latency = 0.0
    plain, limited, plain_calls, limited_calls = [], [], [], []
    for _ in range(args.runs):
        for flags, times, calls in (
            (None, plain, plain_calls),
            (FAR_ABOVE, limited, limited_calls),
        ):
            tag = uuid.uuid4().hex[:8]
            work = Path(tempfile.mkdtemp(prefix="bench-b9-"))
            source = corpus(work / "c.jsonl", args.items, tag)
            env = client_env(fake, relay.api_url, work)
            relay.reset()
            command = map_command(source, work / "out", 20) + list(flags or [])
            times.append(timed(command, env)[0])
            calls.append(relay.total / args.items)
            if flags:
                print("B9 API requests with limits:", relay.counts.most_common(8), file=sys.stderr)
            shutil.rmtree(work, ignore_errors=True)
    ratio = median(limited) / median(plain)
    return [
        ("B9", f"{args.items} instant calls, limits far above use", f"{median(limited)} s",
         f"{median(plain)} s (no limits)", f"{ratio:.2f}x (<= 1.1)"),
        ("B9", "Prefect API requests per call", f"{median(limited_calls):.2f} with limits",
         f"{median(plain_calls):.2f} without", "<= 0.3 with limits"),
    ]  # fmt: skip


def b10(fake: FakeOpenAI, relay: Relay, args: argparse.Namespace) -> list[tuple[str, ...]]:
    fake.default_latency = 0.0
    rows = []
    rpm = args.b10_rpm
    for processes in (1, 2, 4):
        fake.reset()
        work = Path(tempfile.mkdtemp(prefix="bench-b10-"))
        tags = [uuid.uuid4().hex[:8] for _ in range(processes)]
        # each process has more items than the run lets it send: the limit binds throughout
        items = int(rpm / 60 * args.b10_seconds * 1.5 / processes) + 10
        running = []
        for n, tag in enumerate(tags):
            source = corpus(work / f"c{n}.jsonl", items, tag)
            env = client_env(fake, relay.api_url, work / f"h{n}")
            command = map_command(source, work / f"out{n}", 20) + ["--rpm", str(rpm)]
            running.append(
                subprocess.Popen(
                    command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )  # fmt: skip
            )
        # measure over a steady stretch: from the first request, b10_seconds long
        deadline = time.monotonic() + 600
        while fake.total == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        first = min(r.arrived for r in fake.requests())
        time.sleep(max(0.0, first + args.b10_seconds + 1 - time.monotonic()))
        for process in running:
            process.terminate()
        for process in running:
            process.wait(60)
        records = [r for r in fake.requests() if r.arrived <= first + args.b10_seconds]
        achieved = len(records) / args.b10_seconds * 60
        busiest = most_in_window([r.arrived for r in records])
        bound = rpm / 60 * WINDOW + 1
        shares = [sum(1 for r in records if tag in r.conversation) for tag in tags]
        fair = [share / (len(records) / processes) for share in shares]
        rows.append(
            ("B10", f"--rpm {rpm}, {processes} process(es), {args.b10_seconds:.0f} s",
             f"{achieved:.0f}/min, busiest 10 s {busiest}",
             f"{rpm}/min, bound {bound:.0f}",
             f"{achieved / rpm:.2f} (>= 0.95); shares " + ", ".join(f"{f:.2f}" for f in fair))
        )  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    return rows


def b11(fake: FakeOpenAI, relay: Relay, args: argparse.Namespace) -> list[tuple[str, ...]]:
    rows = []
    rpm = args.b11_rpm
    for headers in (True, False):
        losses, shares, rates = [], [], []
        for _ in range(args.runs):
            fake.reset()
            fake.enforce(requests_per_minute=rpm, headers=headers)
            tag = uuid.uuid4().hex[:8]
            work = Path(tempfile.mkdtemp(prefix="bench-b11-"))
            items = int(rpm / 60 * args.b11_seconds)
            source = corpus(work / "c.jsonl", items, tag)
            env = client_env(fake, relay.api_url, work)
            env["OPENAI_API_KEY"] = f"sk-{tag}"  # nothing learned by an earlier run
            elapsed, done = timed(map_command(source, work / "out", 50), env)
            summary = json.loads((work / "out" / "summary.json").read_text())
            records = fake.requests(tag)
            limited = sum(1 for r in records if r.status == 429)
            shares.append(limited / max(1, len(records)))
            losses.append(int(summary["failed"]) + int(summary["dead_letter"]))
            span = max(r.arrived for r in records) - min(r.arrived for r in records)
            rates.append((len(records) - limited) / max(span, 1e-9) * 60)
            shutil.rmtree(work, ignore_errors=True)
        fake.enforce()
        rows.append(
            ("B11", f"provider enforces {rpm}/min, {'with' if headers else 'no'} x-ratelimit "
             f"headers, no flags, {args.b11_seconds:.0f} s of items",
             f"{median(shares) * 100:.1f}% 429, {median(rates):.0f}/min",
             f"{rpm}/min", f"lost {max(losses)} (<= {5 if headers else 10}% 429, 0 lost)")
        )  # fmt: skip
    return rows


def b11_tokens(fake: FakeOpenAI, relay: Relay, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """A provider that counts prompt + max_tokens against its token rate, no flags."""
    tpm, max_tokens = args.b11_tpm, 200
    shares, rates, losses, admits = [], [], [], []
    for _ in range(args.runs):
        fake.reset()
        fake.enforce(tokens_per_minute=tpm)
        tag = uuid.uuid4().hex[:8]
        work = Path(tempfile.mkdtemp(prefix="bench-b11t-"))
        source = corpus(work / "c.jsonl", 400, tag)
        env = client_env(fake, relay.api_url, work)
        env["OPENAI_API_KEY"] = f"sk-{tag}"
        command = map_command(source, work / "out", 50) + ["--max-tokens", str(max_tokens)]
        timed(command, env)
        summary = json.loads((work / "out" / "summary.json").read_text())
        records = fake.requests(tag)
        limited = sum(1 for r in records if r.status == 429)
        body = records[0].body
        cost = sum(-(-len(m["content"]) // 3) + 4 for m in body["messages"]) + max_tokens
        admits.append(tpm / cost)
        span = max(r.arrived for r in records) - min(r.arrived for r in records)
        rates.append((len(records) - limited) / max(span, 1e-9) * 60)
        shares.append(limited / max(1, len(records)))
        losses.append(int(summary["failed"]) + int(summary["dead_letter"]))
        shutil.rmtree(work, ignore_errors=True)
    fake.enforce()
    admitted = median(admits)
    return [
        ("B11", f"provider counts prompt + max_tokens ({max_tokens}) against {tpm} tokens/min, "
         "headers, no flags, 400 items",
         f"{median(shares) * 100:.1f}% 429, {median(rates):.0f}/min",
         f"admits {admitted:.0f}/min",
         f"{median(rates) / admitted:.2f} of it (>= 0.90, <= 5% 429); lost {max(losses)}")
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="B9,B10,B11")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--b10-rpm", type=int, default=600)
    parser.add_argument("--b10-seconds", type=float, default=60.0)
    parser.add_argument("--b11-rpm", type=int, default=600)
    parser.add_argument("--b11-seconds", type=float, default=60.0)
    parser.add_argument("--b11-tpm", type=int, default=60000)
    args = parser.parse_args()
    wanted = set(args.only.upper().split(","))
    rows: list[tuple[str, ...]] = []
    with FakeOpenAI() as fake, Standalone() as server, Relay(server.api_url) as relay:
        if "B9" in wanted:
            rows += b9(fake, relay, args)
        if "B10" in wanted:
            rows += b10(fake, relay, args)
        if "B11" in wanted:
            rows += b11(fake, relay, args)
        if "B11" in wanted or "B11T" in wanted:
            rows += b11_tokens(fake, relay, args)
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}; median of {args.runs} run(s)")
    print_table(["target", "run", "prefect-fanout", "baseline", "ratio (target)"], rows)


if __name__ == "__main__":
    main()
