"""bench/backfill_bench.py at a tiny size (2 stores, 3 days, about 40 orders per store and day):
the sandbox over HTTP, dagster-webserver and dagster-daemon on deploy/dagster.yaml, a backfill
launched through GraphQL as the UI does, and the warehouse afterwards equal to the sandbox's truth."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from pipelines.warehouse.db import libpq_url

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_tiny_backfill_through_dagster_leaves_the_warehouse_equal_to_the_truth(pg_admin_url, tmp_path):
    database = f"tt_test_backfill_{uuid.uuid4().hex[:12]}"
    out = tmp_path / "backfill.json"
    argv = [sys.executable, str(ROOT / "bench" / "backfill_bench.py"), "--database-url", pg_admin_url]
    argv += ["--database", database, "--drop", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    argv += ["--stores", "2", "--days", "3", "--orders-per-day", "40", "--per-run", "2", "--timeout", "600"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    figures = json.loads(out.read_text())

    assert figures["backfill_status"] == "COMPLETED_SUCCESS"
    dagster = figures["dagster"]
    assert dagster["partitions"] == 3
    assert dagster["partitions_materialized"] == 3 and dagster["partitions_missing"] == []
    assert dagster["runs"] == 2  # 3 partitions, 2 per run
    assert dagster["run_statuses"] == {"SUCCESS": 2}
    assert 1 <= dagster["most_runs_at_once"] <= figures["limits"]["backfill_runs"]
    assert figures["limits"] == {
        "max_concurrent_runs": 10,
        "backfill_runs": 3,
        "pool_taptouch_api": 4,
        "pool_granularity_run": 1,
    }

    warehouse = figures["warehouse"]
    assert warehouse["equal"] is True
    assert warehouse["orders_warehouse"] == warehouse["orders_truth"] > 100
    assert warehouse["missing"] == warehouse["extra"] == warehouse["differing"] == 0

    api = figures["api"]
    assert api["requests"] >= 6  # at least a page per store and day
    assert api["budget_rate"] == figures["settings"]["requests_per_second"] == 10.0
    assert "EQUALS the truth" in proc.stdout

    # --drop: both databases are gone.
    with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as conn:
        left = conn.execute("select datname from pg_database where datname like %s", (database + "%",)).fetchall()
    assert left == []
