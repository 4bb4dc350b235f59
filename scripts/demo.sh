#!/usr/bin/env bash
# Install prefect-fanout into .venv (created if missing) and run the main job offline:
# the built-in `test` model and Prefect's embedded server; no network, no API key.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}
export FANOUT_MODEL=${FANOUT_MODEL:-test}
exec .venv/bin/python flows/extract_insights.py "$@"
