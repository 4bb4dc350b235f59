#!/usr/bin/env bash
# Install prefect-fanout into .venv and run the main job offline (the built-in `test` model: no
# network, no API key), on a Prefect server that stays up afterwards so its UI shows the run.
#
# - The install is skipped when pyproject.toml has not changed since the last one (a stamp of
#   its hash in .venv); the package is installed editable, so code changes need no reinstall.
# - The server: the one at $PREFECT_API_URL when set; else the one answering on
#   127.0.0.1:${FANOUT_DEMO_PORT:-4200}, started in the background with `fanout server start`
#   when nothing answers there. Stop it with `.venv/bin/prefect server stop`.
# Arguments go to flows/extract_insights.py (--output DIR, --no-digest, --max-workers N).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=.venv/.fanout-demo-installed
wanted=$(.venv/bin/python -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' pyproject.toml)
if [ "$(cat "$stamp" 2>/dev/null)" = "$wanted" ] && [ -x .venv/bin/fanout ]; then
  echo "demo: pyproject.toml unchanged since the last install; not reinstalling" >&2
else
  .venv/bin/python -m pip install -q --disable-pip-version-check -e .
  echo "$wanted" >"$stamp"
fi

export PREFECT_SERVER_ANALYTICS_ENABLED=false
export FANOUT_MODEL=${FANOUT_MODEL:-test}
port=${FANOUT_DEMO_PORT:-4200}
started=0
if [ -z "${PREFECT_API_URL:-}" ]; then
  export PREFECT_API_URL="http://127.0.0.1:${port}/api"
  started=1
fi

healthy() {
  .venv/bin/python - "$PREFECT_API_URL" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/health", timeout=2).read()
PY
}

if healthy; then
  echo "demo: using the Prefect server at $PREFECT_API_URL" >&2
elif [ "$started" = 1 ]; then
  echo "demo: starting a Prefect server in the background on port $port (fanout server start)" >&2
  .venv/bin/fanout server start --background --port "$port" >&2
  deadline=$((SECONDS + ${FANOUT_DEMO_SERVER_WAIT:-180}))
  until healthy; do  # poll its health endpoint, with a deadline
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: the server on port $port did not answer in time; see .venv/bin/prefect server start's output" >&2
      exit 1
    fi
    sleep 1
  done
else
  echo "demo: nothing answers at PREFECT_API_URL=$PREFECT_API_URL; start that server, or unset PREFECT_API_URL" >&2
  exit 2
fi

code=0
.venv/bin/python flows/extract_insights.py "$@" || code=$?
ui=${PREFECT_API_URL%/api}
echo
echo "The Prefect UI at $ui keeps this run: open the link above, or $ui/runs for every run."
if [ "$started" = 1 ]; then
  echo "The server keeps running in the background; stop it with: .venv/bin/prefect server stop"
fi
exit "$code"
