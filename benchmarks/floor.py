"""Prefect's own floor for B1's shape: what one task run per call costs before any of our code.

    python benchmarks/floor.py [--items 1000] [--runs 3]
    python benchmarks/floor.py --chains [--runs 3]

Three whole processes per run, against one standalone Prefect server (SQLite, the
README's server settings) and the fake OpenAI server (latency 0.5 s):

- ``asyncio``: the baseline script (``benchmarks/asyncio_baseline.py``);
- ``prefect, no cache``: a flow of N Prefect tasks on a 50-thread runner, each making the
  same request with the ``openai`` client; results not persisted;
- ``prefect, cache guarantees``: the same tasks with what our call cache needs from
  Prefect: a persisted result keyed on content, SERIALIZABLE isolation and our flock
  lock manager (one request for identical concurrent calls, across processes);
- ``fanout map (B1)``: B1's command on new items.

With ``--chains``, B5's shape instead (15 levels of 20, latency 0.2 s, 20 workers): the
asyncio script level by level, Prefect tasks submitted as 20 chains of futures (each step
gets its upstream's result), and ``fanout dispatch`` of the plan.

The gap between the last two rows is ours; the gap between the asyncio script and the
``cache guarantees`` row is Prefect's (a task run per call with a locked, persisted
result). Run on demand, never in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import (  # noqa: E402
    PYTHON,
    Standalone,
    client_env,
    compile_package,
    corpus,
    map_command,
    timed,
)
from tests.fakeopenai import FakeOpenAI  # noqa: E402

FLOW = """
import json, sys
from dataclasses import dataclass
import openai
from prefect import flow, task
from prefect.cache_policies import CachePolicy
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.transactions import IsolationLevel
from prefect_fanout.call.locks import shared_lock_manager
from prefect_fanout.call.cache import lock_directory

source, cached = sys.argv[1], sys.argv[2] == "cache"
prompts = [json.loads(line)["text"] for line in open(source)]
client = openai.OpenAI(max_retries=0)


@dataclass
class ByPrompt(CachePolicy):
    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs):
        return "floor-" + str(abs(hash(inputs["prompt"])))


@task(persist_result=False)
def ask(prompt: str) -> str:
    body = client.post(
        "/chat/completions",
        cast_to=bytes,
        body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]},
    )
    return json.loads(body)["choices"][0]["message"]["content"]


if cached:
    policy = ByPrompt().configure(
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=shared_lock_manager(lock_directory()),
    )
    ask = ask.with_options(cache_policy=policy, persist_result=True)


@flow(task_runner=ThreadPoolTaskRunner(max_workers=50))
def floor() -> int:
    return len([future.result() for future in ask.map(prompts)])


floor()
"""


CHAINS = """
import json, sys
import openai
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

tag = sys.argv[1]
client = openai.OpenAI(max_retries=0)


@task(persist_result=False)
def ask(prompt: str, upstream: str | None = None) -> str:
    content = prompt + "\\n" + (upstream or "")
    body = client.post(
        "/chat/completions",
        cast_to=bytes,
        body={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]},
    )
    return json.loads(body)["choices"][0]["message"]["content"]


@flow(task_runner=ThreadPoolTaskRunner(max_workers=20))
def chains() -> int:
    futures = [ask.submit(f"chain {tag} 0 {i}") for i in range(20)]
    for level in range(1, 15):
        futures = [ask.submit(f"chain {tag} {level} {i}", f) for i, f in enumerate(futures)]
    return len([future.result() for future in futures])


chains()
"""


def chains(args: argparse.Namespace) -> dict[str, list[float]]:
    """B5's shape: the asyncio script by level, Prefect chains of futures, fanout dispatch."""
    from benchmarks.run import plan_file

    rows: dict[str, list[float]] = {"asyncio, level by level": [], "prefect chains": []}
    rows["fanout dispatch (B5)"] = []
    with FakeOpenAI(default_latency=0.2) as fake, Standalone() as server:
        for _ in range(args.runs):
            work = Path(tempfile.mkdtemp(prefix="floor-"))
            tag = uuid.uuid4().hex[:8]
            plan = plan_file(work / "plan.json", tag)
            env = client_env(fake, server.api_url, work)
            baseline = [PYTHON, str(ROOT / "benchmarks" / "asyncio_baseline.py"), str(plan)]
            rows["asyncio, level by level"].append(
                timed([*baseline, "--levels", "--concurrency", "20"], env)[0]
            )
            script = work / "chains.py"
            script.write_text(CHAINS)
            rows["prefect chains"].append(timed([PYTHON, str(script), tag], env)[0])
            command = [PYTHON, "-m", "prefect_fanout.cli", "dispatch", str(plan)]
            command += ["--model", "gpt-4o-mini", "--max-workers", "20"]
            rows["fanout dispatch (B5)"].append(timed(command, env)[0])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chains", action="store_true", help="B5's shape instead of B1's")
    args = parser.parse_args()
    compile_package()
    if args.chains:
        report(chains(args), f"300 calls in 20 chains of 15, latency 0.2 s; {args.runs} run(s)")
        return
    rows: dict[str, list[float]] = {
        "asyncio": [],
        "prefect, no cache": [],
        "prefect, cache guarantees": [],
        "fanout map (B1)": [],
    }
    with FakeOpenAI(default_latency=0.5) as fake, Standalone() as server:
        for _ in range(args.runs):
            work = Path(tempfile.mkdtemp(prefix="floor-"))
            source = corpus(work / "c.jsonl", args.items, uuid.uuid4().hex[:8])
            script = work / "floor_flow.py"
            script.write_text(FLOW)
            env = client_env(fake, server.api_url, work)
            baseline = [PYTHON, str(ROOT / "benchmarks" / "asyncio_baseline.py"), str(source)]
            rows["asyncio"].append(timed([*baseline, "--concurrency", "50"], env)[0])
            plain = [PYTHON, str(script), str(source), "plain"]
            rows["prefect, no cache"].append(timed(plain, env)[0])
            cached = [PYTHON, str(script), str(source), "cache"]
            rows["prefect, cache guarantees"].append(timed(cached, env)[0])
            fresh = corpus(work / "f.jsonl", args.items, uuid.uuid4().hex[:8])
            rows["fanout map (B1)"].append(timed(map_command(fresh, work / "out", 50), env)[0])
    report(rows, f"{args.items} calls, latency 0.5 s, 50 in flight; {args.runs} run(s)")


def report(rows: dict[str, list[float]], title: str) -> None:
    """Print medians as a table, each against the first row (the asyncio script)."""
    base = statistics.median(next(iter(rows.values())))
    print(f"{title}, medians")
    print("| whole process | seconds | / asyncio |")
    print("|---|---|---|")
    for name, values in rows.items():
        value = statistics.median(values)
        print(f"| {name} | {value:.1f} | {value / base:.2f}x |")


if __name__ == "__main__":
    main()
