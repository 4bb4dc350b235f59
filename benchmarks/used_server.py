"""B3 on a used server: a cached rerun started right after a 1,000-call run, on a database
that already holds many task runs.

    python benchmarks/used_server.py build --home /tmp/fanout-used --task-runs 20000
    python benchmarks/used_server.py b3 --home /tmp/fanout-used [--runs 3] [--items 1000]
        [--server prefect|fanout|both] [--profile DIR]

``build`` fills a Prefect database the way users fill theirs: ``fanout map`` runs of
instant calls against a server on ``--home`` (its ``prefect.db``), until the server
counts ``--task-runs`` task runs. It takes minutes; keep the home outside the repository
and reuse it (each B3 run adds about 1,000 more task runs).

``b3`` starts a server on that database, started either the usual way (``prefect server
start``, Prefect's defaults) or with ``fanout server start`` (the settings of
``prefect_fanout.cli.tuning``), and measures, ``--runs`` times: a ``fanout map`` of
``--items`` calls (latency 0.5 s, 50 in flight) then the same command again at once (every
answer cached). The ratio rerun / first run is B3 (target <= 0.3); the first run is the
baseline, measured in the same run. ``--profile DIR`` records the reruns with py-spy
(``.venv/bin/pip install py-spy``), a speedscope file per rerun.

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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import client_env, corpus, map_command, print_table, timed  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.fakeopenai import FakeOpenAI  # noqa: E402

PYTHON = sys.executable
START_TIMEOUT_S = 300.0


class Server:
    """A Prefect server on the database in ``home``, started by ``how`` (prefect | fanout)."""

    def __init__(self, home: Path, how: str) -> None:
        self.home = home
        self.how = how

    def __enter__(self) -> Server:
        import httpx

        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}/api"
        env = dict(os.environ)
        for name in list(env):
            if name.startswith("PREFECT_"):
                del env[name]
        # no network here: analytics off in both cases, the UI is not needed
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
        )
        if self.how == "fanout":
            command = [PYTHON, "-m", "prefect_fanout.cli", "server", "start"]
        else:
            command = [PYTHON, "-m", "prefect", "server", "start"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        self.log = (self.home / f"server-{self.how}.log").open("ab")
        self.process = subprocess.Popen(
            command, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited ({self.process.returncode}); see {self.log}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise SystemExit(f"the Prefect server did not answer within {START_TIMEOUT_S:g} s")

    def task_runs(self) -> int:
        import httpx

        return int(httpx.post(f"{self.api_url}/task_runs/count", json={}, timeout=120).json())

    def wait_recorded(self, at_least: int, quiet_s: float = 30.0) -> int:
        """Wait until the server counts ``at_least`` task runs, or its count stands still."""
        last, moved = -1, time.monotonic()
        while True:
            count = self.task_runs()
            if count >= at_least or time.monotonic() - moved > quiet_s:
                return count
            if count != last:
                last, moved = count, time.monotonic()
            time.sleep(2.0)

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait(10)
        self.log.close()


def build(args: argparse.Namespace) -> None:
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    with FakeOpenAI() as fake, Server(home, "fanout") as server:
        fake.default_latency = 0.0
        count = server.task_runs()
        print(f"{count} task runs in {home / 'prefect.db'}", flush=True)
        while count < args.task_runs:
            n = min(args.batch, args.task_runs - count)
            work = Path(tempfile.mkdtemp(prefix="used-build-"))
            source = corpus(work / "c.jsonl", n, uuid.uuid4().hex[:8])
            elapsed, _ = timed(
                map_command(source, work / "out", 50), client_env(fake, server.api_url, work)
            )
            shutil.rmtree(work, ignore_errors=True)
            count = server.wait_recorded(count + n)
            print(f"+{n} calls in {elapsed:.0f} s: {count} task runs", flush=True)


def profiled(command: list[str], out: Path | None) -> list[str]:
    if out is None:
        return command
    spy = str(Path(PYTHON).with_name("py-spy"))
    return [spy, "record", "--subprocesses", "--format", "speedscope", "--rate", "50", "--idle",
            "-o", str(out), "--", *command]  # fmt: skip


def b3(fake: FakeOpenAI, server: Server, args: argparse.Namespace, profiles: Path | None) -> dict:
    fake.default_latency = 0.5
    first, rerun = [], []
    behind = behind_rerun = 0
    for i in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="used-b3-"))
        source = corpus(work / "c.jsonl", args.items, uuid.uuid4().hex[:8])
        env = client_env(fake, server.api_url, work)
        command = map_command(source, work / "out", 50)
        elapsed, done = timed(command, env)
        first.append(elapsed)
        behind += any("fell behind" in line for line in done.stderr.splitlines())
        out = profiles / f"rerun-{server.how}-{i}.speedscope.json" if profiles else None
        elapsed, done = timed(profiled(command, out), env)
        rerun.append(elapsed)
        summary = json.loads((work / "out" / "summary.json").read_text())
        if summary.get("cached", args.items) < args.items:
            print(f"warning: the rerun had {summary.get('cached')} cached answers", flush=True)
        behind_rerun += any("fell behind" in line for line in done.stderr.splitlines())
        print(f"{server.how} run {i + 1}: first {first[-1]:.1f} s, rerun {rerun[-1]:.1f} s",
              flush=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    return {
        "first_s": round(statistics.median(first), 1),
        "rerun_s": round(statistics.median(rerun), 1),
        "said": f"{behind} of {args.runs} first runs, {behind_rerun} of {args.runs} reruns",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    b = sub.add_parser("build", help="fill a database with task runs")
    b.add_argument("--home", required=True)
    b.add_argument("--task-runs", type=int, default=20000)
    b.add_argument("--batch", type=int, default=5000)
    m = sub.add_parser("b3", help="cached rerun right after a first run, on that database")
    m.add_argument("--home", required=True)
    m.add_argument("--runs", type=int, default=3)
    m.add_argument("--items", type=int, default=1000)
    m.add_argument("--server", choices=["prefect", "fanout", "both"], default="both")
    m.add_argument("--profile", metavar="DIR", help="py-spy speedscope files of the reruns")
    args = parser.parse_args()
    if args.what == "build":
        build(args)
        return
    home = Path(args.home)
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    hows = ["prefect", "fanout"] if args.server == "both" else [args.server]
    with FakeOpenAI() as fake:
        for how in hows:
            with Server(home, how) as server:
                before = server.task_runs()
                r = b3(fake, server, args, profile_dir)
            started = "prefect server start" if how == "prefect" else "fanout server start"
            ratio = r["rerun_s"] / r["first_s"]
            rows.append((started, f"{before:,}", f"{r['first_s']} s", f"{r['rerun_s']} s",
                         f"{ratio:.2f}x (<= 0.3)", r["said"]))  # fmt: skip
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}; median of {args.runs} run(s), {args.items} calls, latency 0.5 s")
    print_table(["server", "task runs before", "first run", "cached rerun", "B3 rerun/first",
                 "'fell behind' said after"], rows)  # fmt: skip


if __name__ == "__main__":
    main()
