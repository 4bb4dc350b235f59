"""Serve every deployment of deployments/prefect.yaml from this one process, schedules included.

An alternative to a work pool and a worker: this process registers the deployments
(with their parameters, tags and schedules), polls the Prefect API for their
scheduled and manually triggered runs, and runs each in a subprocess.

    python deployments/serve.py                        # all deployments, their own schedules
    python deployments/serve.py --name plan            # just one (repeatable)
    python deployments/serve.py --interval-seconds 10  # each one every 10 s instead (demo)
    python deployments/serve.py --list                 # show what would be served, then exit

prefect.yaml stays the one description of the deployments: this script reads its
``deployments`` list (name, entrypoint, description, tags, version, parameters,
schedules, concurrency_limit) and turns each entry into ``flow.to_deployment(...)``.
Work-pool settings and the pull steps do not apply here: served flows run on this
machine, in the repository root. A deployment served here has no work pool: serving
replaces a same-named deployment that ``prefect deploy`` created (it is deleted with
its scheduled runs, then registered again by this process), so use one or the other.
Stop with Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"


def read_deployments(prefect_file: Path) -> list[dict[str, Any]]:
    """The ``deployments`` entries of a prefect.yaml file."""
    import yaml

    data = yaml.safe_load(prefect_file.read_text()) or {}
    entries = data.get("deployments") or []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise SystemExit(f"{prefect_file}: 'deployments' must be a list of mappings")
    return entries


def to_schedule(spec: dict[str, Any]) -> Any:
    """A prefect.yaml schedule entry as a Prefect schedule object."""
    from prefect.schedules import Cron, Interval, RRule

    common: dict[str, Any] = {
        "timezone": spec.get("timezone"),
        "active": spec.get("active", True),
        "parameters": spec.get("parameters") or None,
        "slug": spec.get("slug"),
    }
    if spec.get("cron"):
        return Cron(spec["cron"], day_or=spec.get("day_or", True), **common)
    if spec.get("interval") is not None:
        anchor = spec.get("anchor_date")
        if isinstance(anchor, str):
            anchor = datetime.datetime.fromisoformat(anchor)
        return Interval(float(spec["interval"]), anchor_date=anchor, **common)
    if spec.get("rrule"):
        return RRule(spec["rrule"], **common)
    raise SystemExit(f"unsupported schedule entry: {spec!r}")


def build_deployment(entry: dict[str, Any], interval_seconds: float | None) -> Any:
    """One prefect.yaml deployment entry as a RunnerDeployment for ``serve``."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Interval

    flow = load_flow_from_entrypoint(entry["entrypoint"], use_placeholder_flow=False)
    schedules = [to_schedule(spec) for spec in entry.get("schedules") or []]
    if interval_seconds is not None:
        schedules = [Interval(interval_seconds)]
    limit = entry.get("concurrency_limit")
    if isinstance(limit, dict):
        limit = limit.get("limit")
    return flow.to_deployment(
        name=entry["name"],
        description=entry.get("description"),
        tags=entry.get("tags"),
        version=entry.get("version"),
        parameters=entry.get("parameters") or {},
        schedules=schedules,
        concurrency_limit=limit,
        enforce_parameter_schema=entry.get("enforce_parameter_schema", True),
    )


def take_over(deployments: list[Any]) -> None:
    """Delete same-named deployments that a work pool runs (made by ``prefect deploy``).

    Serving updates a deployment in place, but one created by ``prefect deploy`` keeps
    its work pool and pull steps, and its runs then fail to find their code. Deleting
    it first (its scheduled runs go with it) lets this process own the name cleanly.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def replace() -> None:
        async with get_client() as client:
            for deployment in deployments:
                full_name = f"{deployment.flow_name}/{deployment.name}"
                try:
                    existing = await client.read_deployment_by_name(full_name)
                except ObjectNotFound:
                    continue
                if existing.work_pool_name:
                    await client.delete_deployment(existing.id)
                    print(
                        f"replacing deployment {full_name!r} of work pool "
                        f"{existing.work_pool_name!r} by a served one"
                    )

    run_coro_as_sync(replace())


def main(argv: list[str] | None = None) -> int:
    """Serve the selected deployments until interrupted; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="serve.py",
        description="Serve the deployments of deployments/prefect.yaml from one process.",
    )
    parser.add_argument(
        "--prefect-file", type=Path, default=PREFECT_FILE, help="the prefect.yaml to read"
    )
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        help="serve only this deployment (its name in prefect.yaml); repeatable",
    )
    parser.add_argument(
        "--interval-seconds",
        type=float,
        help="give every served deployment this interval instead of its schedules (demos, tests)",
    )
    parser.add_argument("--limit", type=int, help="most flow runs at the same time")
    parser.add_argument("--list", action="store_true", help="list the deployments and exit")
    args = parser.parse_args(argv)
    if args.interval_seconds is not None and args.interval_seconds <= 0:
        parser.error("--interval-seconds must be positive")

    entries = read_deployments(args.prefect_file)
    if args.name:
        unknown = sorted(set(args.name) - {e.get("name") for e in entries})
        if unknown:
            parser.error(f"no deployment named {', '.join(unknown)} in {args.prefect_file}")
        entries = [e for e in entries if e.get("name") in args.name]

    # Entrypoints and the flows' relative paths (plans, corpora) are relative to the repo root.
    os.chdir(REPO)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))

    if args.list:
        for entry in entries:
            kinds = [
                next((k for k in ("cron", "interval", "rrule") if k in s), "?")
                for s in entry.get("schedules") or []
            ]
            print(f"{entry['name']:<28} {entry['entrypoint']:<50} {', '.join(kinds) or '-'}")
        return 0

    from prefect import serve

    deployments = [build_deployment(entry, args.interval_seconds) for entry in entries]
    take_over(deployments)
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
