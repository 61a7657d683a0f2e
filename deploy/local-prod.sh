#!/usr/bin/env bash
# A production-like Dagster on one machine: dagster-daemon + dagster-webserver as two processes
# on a Postgres-backed DAGSTER_HOME whose dagster.yaml is deploy/dagster.yaml (run queue,
# `taptouch_api` pool limit, retention). Ctrl-C stops both.
#
#   deploy/local-prod.sh                      # UI on http://127.0.0.1:3000
#   PORT=3001 HOST=0.0.0.0 deploy/local-prod.sh
#
# Environment:
#   DAGSTER_PG_URL   instance database, postgresql+psycopg2://user:pw@host:5432/dagster (read from the
#                    environment only: no secret is ever put on a command line).
#                    Unset: a database `dagster` is created on the warehouse's server
#                    (TAPTOUCH_DATABASE_URL, or the embedded PostgreSQL).
#   DAGSTER_HOME     default .taptouch/prod_home (dagster.yaml is refreshed from deploy/ on start)
#   TAPTOUCH_CLIENT_ID / TAPTOUCH_CLIENT_SECRET / TAPTOUCH_BASE_URL / TAPTOUCH_DATABASE_URL and the
#   other settings of pipelines/settings.py are read by the runs, which inherit this environment.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${VENV:-$ROOT/.venv}/bin
[ -x "$BIN/dagster-daemon" ] || { echo "no $BIN/dagster-daemon: run ./dev once to create .venv" >&2; exit 2; }

# Everything this script and the two processes create (run storage, compute logs, the instance
# config) is readable by its owner only.
umask 077
export DAGSTER_HOME=${DAGSTER_HOME:-$ROOT/.taptouch/prod_home}
mkdir -p -m 700 "$DAGSTER_HOME"
install -m 600 deploy/dagster.yaml "$DAGSTER_HOME/dagster.yaml"

if [ -z "${DAGSTER_PG_URL:-}" ]; then
  DAGSTER_PG_URL=$("$BIN/python" - <<'PY'
import psycopg
from psycopg import sql
from pipelines.warehouse.db import libpq_url, resolve_database_url, with_database

warehouse = resolve_database_url()          # TAPTOUCH_DATABASE_URL or the embedded server
with psycopg.connect(libpq_url(warehouse), autocommit=True) as conn:
    if not conn.execute("select 1 from pg_database where datname = 'dagster'").fetchone():
        conn.execute(sql.SQL("create database {}").format(sql.Identifier("dagster")))
print("postgresql+psycopg2://" + with_database(warehouse, "dagster").partition("://")[2])
PY
)
  export DAGSTER_PG_URL
fi
echo "DAGSTER_HOME=$DAGSTER_HOME"
# Secrets travel in the environment, never on a command line (`ps` shows argv to every user).
echo "instance database: $("$BIN/python" -c 'import os; from pipelines.warehouse.db import redact_url; print(redact_url(os.environ["DAGSTER_PG_URL"]))')"

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

"$BIN/dagster-daemon" run -w workspace.yaml &
pids+=($!)
"$BIN/dagster-webserver" -w workspace.yaml -h "${HOST:-127.0.0.1}" -p "${PORT:-3000}" &
pids+=($!)
echo "dagster-daemon pid ${pids[0]}, dagster-webserver pid ${pids[1]}: http://${HOST:-127.0.0.1}:${PORT:-3000}"
# Either process exiting stops the other: a webserver without a daemon queues runs forever.
wait -n
