"""bench/scale_bench.py at a tiny size (2 stores, about 1,000 orders): the mode runs end to end
against a real server, prints its table, writes its JSON, and the warehouse it built is one whose
analytics views agree with a direct count of its orders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pipelines.warehouse.db import libpq_url

ROOT = Path(__file__).resolve().parents[2]
SALES = "('completed', 'partially_refunded', 'refunded')"


def run_bench(admin_url: str, database: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "scale_bench.py"),
            "--database-url",
            admin_url,
            "--database",
            database,
            "--stores",
            "2",
            "--sizes",
            "0",
            "1000",
            "--hourly-orders",
            "100",
            "--hourly-edits",
            "10",
            "--busy-day-orders",
            "500",
            "--query-runs",
            "2",
            "--repeats",
            "1",
            "--deleted-every",
            "37",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_scale_mode_measures_a_tiny_warehouse_whose_views_agree_with_its_orders(pg_admin_url, make_database, tmp_path):
    url = make_database()
    database = conninfo_to_dict(libpq_url(url))["dbname"]
    done = run_bench(pg_admin_url, database, tmp_path / "scale.json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hourly window: merge ms" in done.stdout and "month_payment_mix: p50 / p95 ms" in done.stdout

    report = json.loads((tmp_path / "scale.json").read_text())
    empty, small = report["sizes"]
    assert (empty["target"], empty["build"]["orders_built"]) == (0, 0)
    assert small["build"]["orders_built"] >= 1000 and small["build"]["orders_per_s"] > 0
    hour = small["hourly"]["runs"][0]
    assert (hour["inserted"], hour["updated"], hour["quarantined"]) == (100, 10, 0)
    assert small["hourly"]["merge_s"] > 0 and small["hourly"]["wall_s"] >= small["hourly"]["merge_s"]
    # the orders asset's checks over the hourly run's windows: every sales order of its store-days checked, exact
    checks = hour["checks"]
    assert checks["money_passed"] and checks["aggregates_exact"] and checks["money_orders"] > 0
    assert small["hourly"]["checks_money_s"] > 0 and small["hourly"]["checks_aggregates_s"] > 0
    assert (small["busy_day"]["inserted"], small["busy_day"]["orders"]) == (500, 500)
    # the sandbox lists exactly what the warehouse holds of the reconciled store: nothing to repair
    reconciled = small["reconcile"]
    assert reconciled["failures"] == [] and reconciled["listed"] > 0 and reconciled["repaired"] == 0
    assert reconciled["deleted"] == 0 and reconciled["restored"] == 0
    for name, query in small["queries"].items():
        assert len(query["runs_ms"]) == 2 and query["p95_ms"] >= query["p50_ms"] > 0, name
        assert "Execution Time" in query["explain_slowest"], name
    assert small["queries"]["store_month_daily"]["rows"] > 0
    assert small["storage"]["bytes_per_order"]["total"] > small["storage"]["bytes_per_order"]["indexes"] > 0
    assert small["bloat"]["day"]["updated"] > 0 and small["bloat"]["after"]["orders"]["dead"] > 0

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        views = conn.execute("select sum(order_count), sum(net_sales) from analytics.daily_store_sales").fetchone()
        direct = conn.execute(
            "select count(*), sum(o.total - coalesce(r.refunded, 0)) from taptouch.orders o left join"
            " (select order_id, sum(amount) as refunded from taptouch.order_refunds group by order_id) r using (order_id)"
            f" where o.status in {SALES} and o.deleted_at is null"
        ).fetchone()
        assert views == direct and direct[0] > 1000
        # the build's soft deletions: every built order whose id is a multiple of 37, and no other
        deleted = conn.execute(
            "select count(*) filter (where deleted_at is not null), count(*) filter (where"
            " order_id % 37 = 0 and business_date <= '2026-11-30') from taptouch.orders"
        ).fetchone()
        assert deleted[0] == deleted[1] > 0
