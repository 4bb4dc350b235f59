"""B12: a map of 100,000 instant calls whose every graph draws in the Prefect UI.

    python benchmarks/scale.py [--items 100000] [--other-items 20000] [--first sqlite]
                               [--shots docs/images] [--calls-per-run N]

One whole ``fanout map`` process (``--partition count:10 --max-workers 50``) against
the test suite's fake OpenAI server (instant answers) on 127.0.0.1 and a standalone
``prefect server start`` with its UI, on SQLite (``--items``) and then on PostgreSQL
(``--other-items``; ``scripts/postgres-server.sh``), or the other way round with
``--first postgres``. Reported for each:

- wall time, and calls/s over the first and the last 10,000 calls (target: the last
  no slower than 1.2x the first);
- the process's peak RSS (target <= 1 GiB);
- how long after the end the server has recorded every task run (of the map's flow
  run and its partitions' runs);
- the database's size, and the log rows stored for the run (flow and task runs, the
  partitions' included; target <= 2,000 per 10,000 calls);
- whether each flow run's graph draws (``/flow_runs/{id}/graph-v2`` answers, which is
  what the UI asks), and, for the first database, Chromium screenshots of the map's
  flow-run page and of one partition's page.

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
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.run import (  # noqa: E402
    FANOUT,
    Standalone,
    client_env,
    corpus,
    postgres_url,
    print_table,
    seconds_until_recorded,
    timed_with_peak_rss,
)
from tests.fakeopenai import FakeOpenAI  # noqa: E402

WINDOW = 10_000
EXTRA: list[str] = []  # more flags for fanout map (--calls-per-run)


def _post(api: str, path: str, body: dict[str, Any]) -> Any:
    import httpx

    response = httpx.post(f"{api}{path}", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def child_runs(api: str, flow_run_id: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    return _post(api, "/flow_runs/filter", body)


def log_rows(api: str, ids: list[str]) -> int:
    count, offset = 0, 0
    while True:
        body = {"logs": {"flow_run_id": {"any_": ids}}, "offset": offset, "limit": 200}
        page = _post(api, "/logs/filter", body)
        count += len(page)
        offset += len(page)
        if len(page) < 200:
            return count


def graphs_draw(api: str, ids: list[str]) -> str:
    """Whether every run's graph answers (what the UI asks), its largest size and slowest time."""
    import time

    import httpx

    largest, slowest, failed = 0, 0.0, []
    for run_id in ids:
        started = time.perf_counter()
        try:
            response = httpx.get(f"{api}/flow_runs/{run_id}/graph-v2", timeout=600)
        except httpx.HTTPError as exc:
            failed.append(
                f"{run_id}: {type(exc).__name__} after {time.perf_counter() - started:.0f} s"
            )
            continue
        slowest = max(slowest, time.perf_counter() - started)
        if response.status_code != 200:
            failed.append(f"{run_id}: {response.text[:120]}")
            continue
        largest = max(largest, len(response.json()["nodes"]))
    if failed:
        return f"{len(failed)} of {len(ids)} graphs fail: {failed[0]}"
    return f"all {len(ids)} draw (largest {largest} nodes, slowest {slowest:.1f} s)"


def database_size(home: Path, pg_dir: Path | None) -> str:
    if pg_dir is None:
        size = sum(f.stat().st_size for f in home.glob("prefect.db*") if f.is_file())
    else:
        root = (
            Path((pg_dir / "pgroot").read_text().strip())
            if (pg_dir / "pgroot").exists()
            else pg_dir
        )
        size = sum(f.stat().st_size for f in (root / "data").rglob("*") if f.is_file())
    return f"{size / 2**20:.0f} MiB"


def pace(arrivals: list[float]) -> tuple[float, float]:
    """Calls/s over the first and the last WINDOW calls."""
    window = min(WINDOW, len(arrivals) // 2)
    first = (window - 1) / max(1e-9, arrivals[window - 1] - arrivals[0])
    last = (window - 1) / max(1e-9, arrivals[-1] - arrivals[-window])
    return first, last


def screenshots(ui_url: str, api: str, flow_run_id: str, child_id: str, out: Path) -> list[str]:
    from playwright.sync_api import expect, sync_playwright

    from tests.ui_helpers import CHROMIUM, CHROMIUM_ARGS

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for run_id, name in (
                (flow_run_id, "b12-map-run.png"),
                (child_id, "b12-partition-run.png"),
            ):
                page.goto(
                    f"{ui_url}/runs/flow-run/{run_id}", wait_until="networkidle", timeout=180_000
                )
                try:
                    # over 2,000 task runs the UI draws the graph after a click (a default
                    # child run holds 5,000 calls; --calls-per-run 1900 draws without one)
                    display = page.get_by_role("button", name="Display graph")
                    page.wait_for_timeout(3000)  # the page learns its task-run count first
                    if display.count():
                        display.first.click()
                    expect(page.locator("canvas").first).to_be_visible(timeout=300_000)
                    expect(page.get_by_text("Failed to load graph")).to_have_count(0)
                    page.wait_for_timeout(3000)  # the layout settles after its data arrives
                finally:  # what the page shows, graph or not
                    page.screenshot(path=str(out / name))
                saved.append(
                    str((out / name).relative_to(ROOT))
                    if out.is_relative_to(ROOT)
                    else str(out / name)
                )
        finally:
            browser.close()
    return saved


def one_run(fake: FakeOpenAI, items: int, database: str, shots: Path | None) -> dict[str, Any]:
    pg_dir = Path(tempfile.mkdtemp(prefix="bench-pg-")) if database == "postgres" else None
    try:
        url = postgres_url(pg_dir) if pg_dir is not None else None
        with Standalone(url, ui=shots is not None) as server:
            fake.default_latency = 0.0
            fake.reset()
            tag = uuid.uuid4().hex[:8]
            work = Path(tempfile.mkdtemp(prefix="bench-b12-"))
            source = corpus(work / "c.jsonl", items, tag)
            env = client_env(fake, server.api_url, work)
            env.pop("PREFECT_LOGGING_LEVEL")  # the default level: what a user's run writes
            command = [*FANOUT, "map", str(source), "--output", str(work / "out")]
            command += ["--agent", "default", "--model", "gpt-4o-mini"]
            command += ["--partition", "count:10", "--max-workers", "50", *EXTRA]
            elapsed, peak_kib = timed_with_peak_rss(command, env)
            summary = json.loads((work / "out" / "summary.json").read_text())
            flow_run_id = summary["flow_run_id"]
            recorded = seconds_until_recorded(server.api_url, flow_run_id, items)
            children = child_runs(server.api_url, flow_run_id)
            ids = [flow_run_id] + [child["id"] for child in children]
            arrivals = sorted(r.arrived for r in fake.requests(f"bench {tag}"))
            first, last = pace(arrivals)
            row = {
                "database": database,
                "items": items,
                "completed": summary["completed"],
                "wall_s": round(elapsed, 1),
                "map_stage_calls_per_s": summary["items_per_second"],
                "first_10k_per_s": round(first, 1),
                "last_10k_per_s": round(last, 1),
                "last_vs_first": round(first / last, 2) if last else None,
                "peak_rss_mib": round(peak_kib / 1024),
                "recorded": recorded,
                "database_size": database_size(server.home, pg_dir),
                "log_rows": log_rows(server.api_url, ids),
                "child_runs": len(children),
                "child_states": sorted({child["state_name"] for child in children}),
                "screenshots": [],
            }
            print(json.dumps(row), flush=True)  # kept even if a later check fails
            row["graphs"] = graphs_draw(server.api_url, ids)
            if shots is not None and children:
                try:
                    row["screenshots"] = screenshots(
                        server.ui_url, server.api_url, flow_run_id, children[0]["id"], shots
                    )
                except Exception as exc:  # the figures above stand without the pictures
                    row["screenshots"] = [f"failed: {type(exc).__name__}: {exc}"[:300]]
            shutil.rmtree(work, ignore_errors=True)
            return row
    finally:
        if pg_dir is not None:
            subprocess.run(
                ["bash", str(ROOT / "scripts" / "postgres-server.sh"), "stop", str(pg_dir)],
                timeout=120,
                check=False,
                capture_output=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--other-items", type=int, default=20_000)
    parser.add_argument("--first", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--shots", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--calls-per-run", type=int, help="fanout map's --calls-per-run")
    args = parser.parse_args()
    global EXTRA
    EXTRA = ["--calls-per-run", str(args.calls_per_run)] if args.calls_per_run else []
    other = "postgres" if args.first == "sqlite" else "sqlite"
    rows = []
    with FakeOpenAI() as fake:
        rows.append(one_run(fake, args.items, args.first, args.shots))
        print(json.dumps(rows[-1], indent=1), flush=True)
        if args.other_items:
            rows.append(one_run(fake, args.other_items, other, None))
            print(json.dumps(rows[-1], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    machine = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print_table(
        ["database", "calls", "wall", "first/last 10k calls/s", "peak RSS", "recorded",
         "DB size", "log rows", "graphs"],
        [
            (
                r["database"],
                f"{r['completed']}/{r['items']}",
                f"{r['wall_s']} s",
                f"{r['first_10k_per_s']}/{r['last_10k_per_s']} ({r['last_vs_first']}x)",
                f"{r['peak_rss_mib']} MiB",
                r["recorded"],
                r["database_size"],
                str(r["log_rows"]),
                r["graphs"],
            )
            for r in rows
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
