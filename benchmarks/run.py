"""Speed at scale: B1-B5, each as a ratio against a baseline measured in the same run.

    python benchmarks/run.py [--only B1,B3] [--runs 3] [--items 1000]
    python benchmarks/run.py --databases [--b4-items 10000]

Every figure is a whole process (start to exit), the median of ``--runs`` runs, against
the test suite's fake OpenAI server on 127.0.0.1:

- B1: ``fanout map`` of N calls (latency 0.5 s, 50 in flight) against a standalone
  ``prefect server start`` (SQLite) / the asyncio script (asyncio.gather over
  AsyncOpenAI, a semaphore of 50). Target <= 1.2.
- B2: the same with the embedded server (its start-up included). Target <= 2.0. Shown
  twice: in a new PREFECT_HOME (the server creates its database: a machine's first run)
  and in one whose database exists (every later run).
- B3: the fully cached rerun of B1 and of B2 / their first run. Target <= 0.2.
- B4: 10,000 instant calls: calls/s over the map stage (>= 150), the last 1,000 calls'
  pace against the first 1,000's (<= 1.2x slower), peak RSS (<= 1 GiB).
- ``--databases``: B4 against a SQLite-backed and a PostgreSQL-backed server
  (``scripts/postgres-server.sh``), with how long the server takes after the run to
  record every task run (how far the UI lags).
- B5: ``fanout dispatch`` of a 300-task plan (15 levels of 20, latency 0.2 s, 20 workers)
  / the asyncio script run level by level. Target <= 1.3.

Run on demand; never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prefect_fanout.cli.tuning import SERVER_SETTINGS  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fakeopenai import FakeOpenAI  # noqa: E402

PYTHON = sys.executable
FANOUT = [PYTHON, "-m", "prefect_fanout.cli"]


def compile_package() -> None:
    """Write this checkout's bytecode, as installing a package does.

    Prefect and ``openai`` are imported from bytecode that ``pip`` wrote when it installed
    them; an editable checkout gets its bytecode on first import, unless
    ``PYTHONDONTWRITEBYTECODE`` is set (as on the machines these figures were taken on):
    then every measured ``fanout`` process compiled all of ``prefect_fanout`` (0.11 s).
    """
    import compileall

    compileall.compile_dir(str(ROOT / "prefect_fanout"), quiet=1)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, done


def timed_with_peak_rss(command: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run ``command``; its wall time and its own peak RSS in KiB (``wait4``, this child only)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=False
    )
    assert process.stderr is not None
    errors = process.stderr.read()  # drained while it runs: a full pipe would block it
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code
    if code not in (0, 1):
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n{errors[-3000:].decode()}")
    return elapsed, usage.ru_maxrss


class Standalone:
    """A standalone ``prefect server start`` for the run: SQLite, or PostgreSQL at a URL."""

    def __init__(self, database_url: str | None = None, ui: bool = False) -> None:
        self.database_url = database_url
        self.ui = ui

    def __enter__(self) -> Standalone:
        self.home = Path(tempfile.mkdtemp(prefix="bench-server-"))
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        env = {**os.environ, "PREFECT_HOME": str(self.home)}
        if self.database_url:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        env["PREFECT_UI_ENABLED"] = "true" if self.ui else "false"
        env["PREFECT_UI_API_URL"] = self.api_url
        self.ui_url = self.api_url.removesuffix("/api")
        env.update(SERVER_SETTINGS)  # as README: Performance recommends for such runs
        self.process = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.3)
        raise SystemExit("the standalone Prefect server did not start")

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.home, ignore_errors=True)


def client_env(fake: FakeOpenAI, api_url: str | None, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PREFECT_API_URL", "FANOUT_MODEL"):
        env.pop(name, None)
    env.update(
        OPENAI_BASE_URL=fake.base_url,
        OPENAI_API_KEY="sk-bench",
        PREFECT_HOME=str(home),
        PREFECT_LOCAL_STORAGE_PATH=str(home / "storage"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def corpus(path: Path, n: int, tag: str) -> Path:
    with path.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"id": f"i{i}", "text": f"bench {tag} item {i}"}) + "\n")
    return path


def map_command(source: Path, out: Path, workers: int) -> list[str]:
    options = f"--agent default --partition count:1 --max-workers {workers} --model gpt-4o-mini"
    return [*FANOUT, "map", str(source), "--output", str(out), *options.split()]


def print_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Print a Markdown table: the header, its rule, a line per row."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def b1_b2_b3(fake: FakeOpenAI, args: argparse.Namespace, embedded: bool, api: str | None) -> dict:
    fake.default_latency = 0.5
    base, first, rerun, used_home = [], [], [], []
    for _ in range(args.runs):
        tag = uuid.uuid4().hex[:8]
        work = Path(tempfile.mkdtemp(prefix="bench-"))
        source = corpus(work / "c.jsonl", args.items, tag)
        env = client_env(fake, None if embedded else api, work)
        script = [PYTHON, str(ROOT / "benchmarks" / "asyncio_baseline.py"), str(source)]
        base.append(timed([*script, "--concurrency", "50"], env)[0])
        first.append(timed(map_command(source, work / "out", 50), env)[0])
        rerun.append(timed(map_command(source, work / "out", 50), env)[0])
        if embedded:
            # The same first run in a PREFECT_HOME whose database already exists (every
            # run but a machine's first): new items, so no answer is cached.
            again = corpus(work / "c2.jsonl", args.items, tag + "-again")
            used_home.append(timed(map_command(again, work / "out2", 50), env)[0])
        shutil.rmtree(work, ignore_errors=True)
    measured = {"asyncio_s": median(base), "first_s": median(first), "rerun_s": median(rerun)}
    if used_home:
        measured["used_home_s"] = median(used_home)
    return measured


def b4(fake: FakeOpenAI, args: argparse.Namespace, api: str | None) -> dict:
    fake.default_latency = 0.0
    fake.reset()
    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    source = corpus(work / "c.jsonl", args.b4_items, tag)
    env = client_env(fake, api, work)
    elapsed, peak_kib = timed_with_peak_rss(map_command(source, work / "out", 50), env)
    summary = json.loads((work / "out" / "summary.json").read_text())
    recorded = seconds_until_recorded(api, summary["flow_run_id"], args.b4_items)
    arrivals = sorted(r.arrived for r in fake.requests(f"bench {tag}"))
    chunk = min(1000, len(arrivals) // 2)
    first = arrivals[chunk - 1] - arrivals[0]
    last = arrivals[-1] - arrivals[-chunk]
    shutil.rmtree(work, ignore_errors=True)
    return {
        "whole_s": round(elapsed, 1),
        "calls_per_s": summary["items_per_second"],
        "last_vs_first": round(last / first, 2) if first else None,
        "peak_rss_mib": round(peak_kib / 1024),
        "recorded": recorded,
    }


def seconds_until_recorded(api: str | None, flow_run_id: str, expected: int) -> str:
    """How long after the run's end the server lists all its task runs, as a table cell.

    The server records task runs from events in the background; this is how long the
    UI lags behind a large run. When the count stops growing for 30 s, the cell says
    how many task runs the server ever recorded (events it dropped are lost for good).
    """
    if not api:
        return "-"
    import httpx

    started = time.perf_counter()
    family = {"any_": [flow_run_id]}  # the flow run and its child runs (a map's partitions)
    body = {"flow_runs": {"operator": "or_", "id": family, "parent_flow_run_id": family}}
    count, last, moved = 0, -1, started
    while time.perf_counter() - moved < 30:
        count = httpx.post(f"{api}/task_runs/count", json=body, timeout=30).json()
        if count >= expected:
            return f"all recorded {time.perf_counter() - started:.1f} s after the end"
        if count != last:
            last, moved = count, time.perf_counter()
        time.sleep(1.0)
    return f"only {count} of {expected} task runs recorded"


def postgres_url(directory: Path) -> str:
    """Start a throwaway PostgreSQL cluster with scripts/postgres-server.sh; its URL."""
    started = subprocess.run(
        ["bash", str(ROOT / "scripts" / "postgres-server.sh"), "start", str(directory)],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": PYTHON},
    )
    if started.returncode != 0:
        raise SystemExit(f"PostgreSQL did not start:\n{started.stderr[-3000:]}")
    return started.stdout.strip().rsplit("=", 1)[1]


def databases(fake: FakeOpenAI, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """The B4 run on a SQLite-backed and on a PostgreSQL-backed standalone server."""
    rows = []
    pg_dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    try:
        for name, url in (("SQLite", None), ("PostgreSQL", postgres_url(pg_dir))):
            with Standalone(url) as server:
                r = b4(fake, args, server.api_url)
            rows.append(
                (
                    name,
                    f"{r['calls_per_s']} calls/s",
                    f"{r['whole_s']} s",
                    f"{r['last_vs_first']}x",
                    f"{r['peak_rss_mib']} MiB",
                    r["recorded"],
                )
            )
    finally:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "postgres-server.sh"), "stop", str(pg_dir)],
            timeout=120,
            check=False,
            capture_output=True,
        )
    return rows


def plan_file(path: Path, tag: str, levels: int = 15, width: int = 20) -> Path:
    tasks = []
    for level in range(levels):
        for i in range(width):
            deps = [f"t{level - 1}-{i}"] if level else []
            tasks.append({"task_id": f"t{level}-{i}", "description": f"bench {tag} {level} {i}",
                          "dependencies": deps})  # fmt: skip
    path.write_text(json.dumps({"tasks": tasks, "config": {"max_workers": 20}}))
    return path


def b5(fake: FakeOpenAI, args: argparse.Namespace, api: str | None) -> dict:
    fake.default_latency = 0.2
    base, ours = [], []
    for _ in range(args.runs):
        tag = uuid.uuid4().hex[:8]
        work = Path(tempfile.mkdtemp(prefix="bench-"))
        plan = plan_file(work / "plan.json", tag)
        env = client_env(fake, api, work)
        script = [PYTHON, str(ROOT / "benchmarks" / "asyncio_baseline.py"), str(plan)]
        base.append(timed([*script, "--levels", "--concurrency", "20"], env)[0])
        command = [*FANOUT, "dispatch", str(plan), "--model", "gpt-4o-mini", "--max-workers", "20"]
        ours.append(timed(command, env)[0])
        shutil.rmtree(work, ignore_errors=True)
    return {"asyncio_s": median(base), "dispatch_s": median(ours)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="B1,B2,B3,B4,B5")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--b4-items", type=int, default=10000)
    parser.add_argument(
        "--databases",
        action="store_true",
        help="instead: B4 on a SQLite and on a PostgreSQL Prefect server, side by side",
    )
    args = parser.parse_args()
    compile_package()
    if args.databases:
        with FakeOpenAI() as fake:
            rows = databases(fake, args)
        print(f"machine: {platform.node()}, {os.cpu_count()} cores; {args.b4_items} instant calls")
        print_table(["server database", "map stage", "whole process", "last/first 1,000",
                     "peak RSS", "task runs in the UI"], rows)  # fmt: skip
        return
    wanted = set(args.only.upper().split(","))
    rows: list[tuple[str, ...]] = []

    def ratio(ours: float, base: float, target: str) -> str:
        return f"{ours / base:.2f}x ({target})"

    with FakeOpenAI() as fake, Standalone() as server:
        if wanted & {"B1", "B3"}:
            r = b1_b2_b3(fake, args, embedded=False, api=server.api_url)
            first, base, rerun = r["first_s"], r["asyncio_s"], r["rerun_s"]
            name = f"{args.items} calls, standalone server"
            rows.append(("B1", name, f"{first} s", f"{base} s", ratio(first, base, "<= 1.2")))
            name = "cached rerun of B1"
            rows.append(("B3", name, f"{rerun} s", f"{first} s", ratio(rerun, first, "<= 0.2")))
        if wanted & {"B2", "B3"}:
            r = b1_b2_b3(fake, args, embedded=True, api=None)
            first, base, rerun = r["first_s"], r["asyncio_s"], r["rerun_s"]
            name = f"{args.items} calls, embedded server"
            rows.append(("B2", name, f"{first} s", f"{base} s", ratio(first, base, "<= 2.0")))
            used = r["used_home_s"]
            name = f"{args.items} calls, embedded server, PREFECT_HOME with a database"
            rows.append(("B2", name, f"{used} s", f"{base} s", ratio(used, base, "<= 2.0")))
            name = "cached rerun of B2"
            rows.append(("B3", name, f"{rerun} s", f"{first} s", ratio(rerun, first, "<= 0.2")))
        if "B4" in wanted:
            r = b4(fake, args, server.api_url)
            pace = f"last/first 1,000: {r['last_vs_first']}x (<= 1.2)"
            memory = f"peak RSS {r['peak_rss_mib']} MiB (<= 1024)"
            name = f"{args.b4_items} instant calls, standalone"
            speed = f"{r['calls_per_s']} calls/s (>= 150)"
            whole = f"whole process {r['whole_s']} s"
            rows.append(("B4", name, speed, whole, f"{pace}; {memory}; {r['recorded']}"))
        if "B5" in wanted:
            r = b5(fake, args, server.api_url)
            ours, base = r["dispatch_s"], r["asyncio_s"]
            name = "300-task plan, 15 levels of 20, standalone"
            rows.append(("B5", name, f"{ours} s", f"{base} s", ratio(ours, base, "<= 1.3")))
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}; median of {args.runs} run(s)")
    print_table(["target", "run", "prefect-fanout", "baseline", "ratio (target)"], rows)


if __name__ == "__main__":
    main()
