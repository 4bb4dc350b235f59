#!/usr/bin/env bash
# A Prefect server on a throwaway PostgreSQL cluster, both on 127.0.0.1.
#
#   scripts/postgres-server.sh [DIR]          start PostgreSQL, then `prefect server start` on it
#                                             (foreground; Ctrl-C stops both)
#   scripts/postgres-server.sh start DIR      start only PostgreSQL; print the
#                                             PREFECT_SERVER_DATABASE_CONNECTION_URL line to eval
#   scripts/postgres-server.sh stop DIR       stop the PostgreSQL cluster of DIR
#
# Debian's `postgresql` package is installed with apt-get if missing (as root). The cluster
# lives in DIR (a new temp directory by default) on a free loopback port, with a `prefect`
# role and database (trust authentication, loopback only: throwaway use, never production).
# Environment: PREFECT_PORT (default 4200), PYTHON (default .venv/bin/python, then python3).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=serve
case "${1:-}" in
  start | stop) mode=$1; shift ;;
esac
DIR=${1:-$(mktemp -d -t fanout-pg.XXXXXX)}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# As root, the cluster runs as `postgres`, which may not reach DIR (e.g. under a 0700 parent):
# it then lives in a /tmp directory of its own, recorded in DIR/pgroot.
if [ "$(id -u)" = 0 ]; then
  if [ ! -s "$DIR/pgroot" ]; then
    PGROOT=$(mktemp -d -t fanout-pgroot.XXXXXX)
    chown postgres "$PGROOT"
    echo "$PGROOT" >"$DIR/pgroot"
  fi
  PGROOT=$(cat "$DIR/pgroot")
else
  PGROOT=$DIR
fi
DATA="$PGROOT/data"

pg_bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$found" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "postgres-server: installing Debian's postgresql package" >&2
      apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      found=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    else
      echo "postgres-server: PostgreSQL is not installed; run: sudo apt-get install postgresql" >&2
      exit 2
    fi
  fi
  echo "$found"
}
BIN=$(pg_bin)

# initdb and postgres refuse to run as root: run them as the `postgres` user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

stop_pg() {
  if [ -f "$DATA/postmaster.pid" ]; then
    as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true
  fi
}

if [ "$mode" = stop ]; then
  stop_pg
  if [ "$PGROOT" != "$DIR" ]; then rm -rf "$PGROOT" "$DIR/pgroot"; fi
  exit 0
fi

if [ ! -f "$DATA/PG_VERSION" ]; then
  as_pg "$BIN/initdb" -D "$DATA" -U prefect --auth=trust -E UTF8 >"$DIR/initdb.log"
fi
PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$BIN/pg_ctl" -D "$DATA" -l "$PGROOT/postgres.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -p $PORT -k $PGROOT -c max_connections=200" start >/dev/null
as_pg "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U prefect prefect 2>/dev/null || true
URL="postgresql+asyncpg://prefect@127.0.0.1:$PORT/prefect"
echo "$PORT" >"$DIR/port"

if [ "$mode" = start ]; then
  echo "export PREFECT_SERVER_DATABASE_CONNECTION_URL=$URL"
  exit 0
fi

trap stop_pg EXIT
echo "postgres-server: PostgreSQL in $DIR on 127.0.0.1:$PORT" >&2
export PREFECT_SERVER_DATABASE_CONNECTION_URL=$URL
export PREFECT_SERVER_ANALYTICS_ENABLED=false
"$PY" -m prefect server start --host 127.0.0.1 --port "${PREFECT_PORT:-4200}"
