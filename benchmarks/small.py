"""Throughput of prefect-fanout against a baseline measured in the same run.

Run on demand (never part of the test suite):

    python benchmarks/small.py [--items 60] [--latency 0.2] [--workers 12]

It starts the test suite's fake OpenAI server on 127.0.0.1 with a fixed latency
per request and reports, as ratios against the baseline of the same run:

- baseline: the raw ``openai`` client calling sequentially (what a script does);
- fan-out: the same calls as agent-call task runs submitted to a thread pool;
- cached rerun: the same flow again, every call served from the cache;
- overhead per call: fan-out with zero latency and one worker, minus the raw client.

Prefect starts its embedded server unless PREFECT_API_URL points at one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import openai  # noqa: E402
from prefect import flow  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from prefect_fanout import (  # noqa: E402
    LLMEndpoint,
    build_request,
    result_from_future,
    submit_agent_call,
)
from prefect_fanout.options import RunOptions
from tests.fakeopenai import FakeOpenAI  # noqa: E402


def baseline(fake: FakeOpenAI, prompts: list[str]) -> float:
    client = openai.OpenAI(base_url=fake.base_url, api_key="bench", max_retries=0)
    started = time.perf_counter()
    for prompt in prompts:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
    return time.perf_counter() - started


def fanout(fake: FakeOpenAI, prompts: list[str], workers: int) -> tuple[float, int]:
    endpoint = LLMEndpoint(base_url=fake.base_url, api_key=SecretStr("bench"))

    @flow(name="bench-fanout", task_runner=ThreadPoolTaskRunner(max_workers=workers))
    def run() -> int:
        futures = [
            submit_agent_call(
                build_request(
                    p,
                    agent="default",
                    options=RunOptions(endpoint=endpoint, model="gpt-4o-mini"),
                    item_id=str(i),
                ),
                options=RunOptions(endpoint=endpoint),
            )
            for i, p in enumerate(prompts)
        ]
        return sum(result_from_future(f).cached for f in futures)

    started = time.perf_counter()
    cached = run()
    return time.perf_counter() - started, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--workers", type=int, default=12)
    args = parser.parse_args()
    tag = uuid.uuid4().hex[:8]
    prompts = [f"bench {tag} item {i}" for i in range(args.items)]
    report: dict[str, object] = {
        "items": args.items,
        "latency_s": args.latency,
        "workers": args.workers,
    }
    with FakeOpenAI(default_latency=args.latency) as fake:
        fanout(fake, [f"warm-up {tag}"], 1)  # start Prefect's server outside the timings
        base = baseline(fake, [f"{p} raw" for p in prompts])
        fake.reset()
        fake.default_latency = args.latency
        first, _ = fanout(fake, prompts, args.workers)
        report["max_in_flight"] = fake.max_in_flight
        rerun, cached = fanout(fake, prompts, args.workers)
        fake.default_latency = 0.0
        few = prompts[: min(20, args.items)]
        raw_zero = baseline(fake, [f"{p} zero raw" for p in few])
        task_zero, _ = fanout(fake, [f"{p} zero task" for p in few], 1)
    report.update(
        baseline_sequential_s=round(base, 3),
        fanout_s=round(first, 3),
        speedup_vs_baseline=round(base / first, 2),
        cached_rerun_s=round(rerun, 3),
        cached_calls=cached,
        cached_rerun_vs_first=round(rerun / first, 3),
        overhead_per_call_ms=round(1000 * (task_zero - raw_zero) / len(few), 1),
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
