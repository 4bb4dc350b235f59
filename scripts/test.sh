#!/usr/bin/env bash
# Install prefect-fanout with its test and docs extras into .venv (created if missing), run the tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k retry -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,ui-test,dask,ray,docs]'
# The browser test drives Debian's Chromium through Playwright (no browser download).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
# The realmodel tier's model and servers, built once into a cache outside the repository
# (${FANOUT_MODEL_CACHE:-~/.cache/prefect-fanout-models}; about 15 minutes on 2 cores the first
# time, seconds after). If they cannot be built, the realmodel tests skip and say why.
if [ "${FANOUT_SKIP_MODEL_BUILD:-0}" != 1 ]; then
  bash scripts/local-model.sh all >/dev/null \
    || echo "warning: the real-model servers could not be built; realmodel tests will skip" >&2
fi
export PREFECT_HOME="${PREFECT_HOME:-$(mktemp -d)}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180
# Three pytest-xdist workers (FANOUT_TEST_WORKERS=0 runs one process): most of the suite's time is
# waiting on servers, leases and rate windows, which overlaps well; tests/conftest.py keeps each
# file (and all Ray tests) on one worker. Arguments given to this script come after and win.
exec .venv/bin/python -m pytest -n "${FANOUT_TEST_WORKERS:-3}" --dist loadgroup --no-loadscope-reorder "$@"
