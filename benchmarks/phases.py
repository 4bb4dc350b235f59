"""Where B1's time goes, phase by phase, for Prefect's floor script and for ``fanout map``.

    python benchmarks/phases.py [--items 1000] [--runs 3]

Runs ``benchmarks/floor.py``'s ``prefect, cache guarantees`` script and B1's command, each as
a whole process against one standalone Prefect server and the fake OpenAI server (latency
0.5 s), then reads the server's records of each run (its flow runs and task runs, with their
start and end times) and prints, as medians over the runs:

- ``start``: from the process's start to the first flow run's start;
- ``to calls``: from there to the first call's task run start;
- ``calls``: from the first call's start to the last call's end;
- ``in flight``: the calls' summed run times over that span (how full the window was);
- ``call``, ``call p90``, ``call max``: a call's run time (its task run's start to end);
- ``after calls``: from the last call's end to the process's exit; and from the last call's
  end to: the end of the last other task run (a partition's write), of the first flow run to
  end (a map's partition), of the last (the map).

Run on demand, never in tests.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.floor import FLOW  # noqa: E402
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


def _runs_since(api_url: str, since: datetime) -> tuple[list, list]:
    """The flow runs and task runs the server recorded as started since ``since``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterStartTime,
        TaskRunFilter,
        TaskRunFilterStartTime,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        flows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since))
        )
        tasks, offset = [], 0
        while True:
            page = client.read_task_runs(
                task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since)),
                offset=offset,
                limit=200,
            )
            tasks += page
            offset += len(page)
            if len(page) < 200:
                break
    return flows, tasks


def phases(command: list[str], env: dict[str, str], api_url: str) -> dict[str, float]:
    """Run ``command`` once; its phases from the server's records (see the module's doc)."""
    since = datetime.now(UTC)
    started = time.time()
    elapsed, _ = timed(command, env)
    ended = started + elapsed
    flows, tasks = _runs_since(api_url, since)
    finished = [t for t in tasks if t.start_time and t.end_time]
    kind = Counter(t.task_key for t in finished).most_common(1)[0][0]  # the calls' task
    calls = [t for t in finished if t.task_key == kind]
    first = min(t.start_time.timestamp() for t in calls)
    last = max(t.end_time.timestamp() for t in calls)
    flow_start = min(f.start_time.timestamp() for f in flows if f.start_time)
    durations = [(t.end_time - t.start_time).total_seconds() for t in calls]
    busy = sum(durations)
    others = [t for t in tasks if t not in calls and t.end_time]
    ends = sorted(f.end_time.timestamp() for f in flows if f.end_time)
    return {
        "total": elapsed,
        "start": flow_start - started,
        "to calls": first - flow_start,
        "calls": last - first,
        "in flight": busy / max(last - first, 1e-9),
        "call": statistics.median(durations),
        "call p90": statistics.quantiles(durations, n=10)[-1],
        "call max": max(durations),
        "after calls": ended - last,
        "  other tasks end": max((t.end_time.timestamp() - last for t in others), default=0.0),
        "  first flow run end": ends[0] - last,
        "  last flow run end": ends[-1] - last,
        "task runs": float(len(tasks)),
        "flow runs": float(len(flows)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    compile_package()
    rows: dict[str, list[dict[str, float]]] = {"prefect, cache guarantees": [], "fanout map": []}
    with FakeOpenAI(default_latency=0.5) as fake, Standalone() as server:
        for _ in range(args.runs):
            work = Path(tempfile.mkdtemp(prefix="phases-"))
            env = client_env(fake, server.api_url, work)
            source = corpus(work / "c.jsonl", args.items, uuid.uuid4().hex[:8])
            script = work / "floor_flow.py"
            script.write_text(FLOW)
            floor = [PYTHON, str(script), str(source), "cache"]
            rows["prefect, cache guarantees"].append(phases(floor, env, server.api_url))
            fresh = corpus(work / "f.jsonl", args.items, uuid.uuid4().hex[:8])
            command = map_command(fresh, work / "out", 50)
            rows["fanout map"].append(phases(command, env, server.api_url))
    names = list(next(iter(rows.values()))[0])
    print(f"{args.items} calls, latency 0.5 s, 50 in flight; medians of {args.runs} run(s)")
    print("| phase | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name in names:
        cells = [f"{statistics.median(r[name] for r in runs):.2f}" for runs in rows.values()]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
