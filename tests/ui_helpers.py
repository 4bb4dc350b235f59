"""Read a flow run back the way the UI does (through the Prefect REST API), and drive Chromium.

The server records task runs, logs and events a little after they happen, so the
readers poll with a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.map_helpers import family

CHROMIUM = Path("/usr/bin/chromium")
#: Launch flags for Debian's Chromium in a sandbox-less, offline CI container.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

T = TypeVar("T")


def poll(read: Callable[[], T], done: Callable[[T], bool], deadline: float, what: str) -> T:
    """Call ``read`` until ``done`` accepts its value; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = read()
        if done(value):
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}: {value!r}")
        time.sleep(0.5)


class PrefectAPI:
    """A small synchronous reader of the Prefect REST API (what the UI reads).

    Args:
        api_url: ``http://127.0.0.1:PORT/api``.
    """

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.http = httpx.Client(base_url=self.api_url, timeout=30)

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()

    def __enter__(self) -> PrefectAPI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.http.post(path, json=body)
        response.raise_for_status()
        return response.json()

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        """The flow run as the API returns it."""
        response = self.http.get(f"/flow_runs/{flow_run_id}")
        response.raise_for_status()
        return response.json()

    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Every task run of a flow run and of its child flow runs (a map's partitions).

        The API pages them 200 at a time.
        """
        body = {"flow_runs": family(flow_run_id), "sort": "EXPECTED_START_TIME_ASC"}
        return self._paged("/task_runs/filter", body)

    def _paged(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """Every row a filter finds, read 200 at a time (the API's page)."""
        rows: list[dict[str, Any]] = []
        while True:
            page = self._post(path, {**body, "offset": len(rows), "limit": 200})
            rows.extend(page)
            if len(page) < 200:
                return rows

    def child_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """The flow run's child flow runs (a map's partitions), oldest first."""
        body = {"parent_flow_run_id": {"any_": [flow_run_id]}}
        return self._post("/flow_runs/filter", {"flow_runs": body, "sort": "START_TIME_ASC"})

    def logs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Every log line of a flow run and its child runs (task runs' included), oldest first."""
        ids = [flow_run_id] + [run["id"] for run in self.child_runs(flow_run_id)]
        body = {"logs": {"flow_run_id": {"any_": ids}}, "sort": "TIMESTAMP_ASC"}
        return self._paged("/logs/filter", body)

    def artifacts(self, flow_run_id: str) -> list[dict[str, Any]]:
        """Every artifact of a flow run."""
        return self._post(
            "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
        )

    def events(self, flow_run_id: str) -> list[dict[str, Any]]:
        """The events about a flow run or related to it (its task runs' included)."""
        resource = f"prefect.flow-run.{flow_run_id}"
        body = {"filter": {"any_resource": {"id": [resource]}}, "limit": 50}
        response = self.http.post("/events/filter", json=body)
        response.raise_for_status()
        page = response.json()
        events = list(page["events"])
        while page.get("next_page"):
            response = self.http.get(page["next_page"])
            response.raise_for_status()
            page = response.json()
            events.extend(page["events"])
        return events

    def everything(self, flow_run_id: str) -> str:
        """All the API shows about a flow run, as one JSON text to search."""
        return json.dumps(
            {
                "flow_run": self.flow_run(flow_run_id),
                "task_runs": self.task_runs(flow_run_id),
                "logs": self.logs(flow_run_id),
                "artifacts": self.artifacts(flow_run_id),
                "events": self.events(flow_run_id),
            }
        )

    def finished_task_runs(
        self, flow_run_id: str, count: int, deadline: float = 30.0
    ) -> list[dict[str, Any]]:
        """Poll until the flow run has ``count`` task runs, all in a final state."""
        final = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        return poll(
            lambda: self.task_runs(flow_run_id),
            lambda runs: len(runs) == count and all(r["state_type"] in final for r in runs),
            deadline,
            f"{count} finished task runs of flow run {flow_run_id}",
        )


def point_ui_at_api(page: Any, api_url: str) -> None:
    """Make the UI talk to ``api_url`` whatever the server's ``/ui-settings`` says.

    A server started with ``--port`` but without ``PREFECT_UI_API_URL`` (or
    ``PREFECT_API_URL``) in its environment tells the UI that its API is on the
    default port 4200; the page then shows "Can't connect to Server API". The
    route rewrites that one answer and changes nothing when it is already right.
    """

    def rewrite(route: Any) -> None:
        response = route.fetch()
        settings = response.json()
        settings["api_url"] = api_url
        route.fulfill(response=response, body=json.dumps(settings))

    page.route("**/ui-settings", rewrite)
