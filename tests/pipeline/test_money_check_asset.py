"""The money reconciliation as the orders asset runs it: every orders run evaluates
``money_reconciliation`` over the store-days its partitions' orders belong to."""

from __future__ import annotations

from datetime import date

import dagster as dg
import psycopg

from pipelines.definitions import defs
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchResource
from taptouch_sandbox import Sandbox, SandboxConfig

orders = defs.get_assets_def("orders")
PARTITION = "2026-11-25"


def _run(sb: Sandbox, url: str, db_url: str) -> dg.AssetCheckEvaluation:
    resources = {
        "taptouch": TaptouchResource(
            client_id=sb.config.client_id, client_secret=sb.config.client_secret, base_url=url, requests_per_second=0
        ),
        "warehouse": PostgresResource(database_url=db_url),
    }
    result = dg.materialize([orders], resources=resources, partition_key=PARTITION)
    assert result.success  # a failed reconciliation fails its check, not the load
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "money_reconciliation")


def test_the_orders_run_reconciles_its_store_days_and_names_a_corrupted_order(migrated_db):
    sb = Sandbox(SandboxConfig(seed=7, stores=2, days=4, end_date=date(2026, 11, 27), orders_per_day=20))
    with sb.serve() as url:
        clean = _run(sb, url, migrated_db)
        assert clean.passed and clean.metadata["differences"].value == 0
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            days = conn.execute(
                "select count(distinct (store_id, business_date)) filter (where status in"
                " ('completed', 'partially_refunded', 'refunded')), min(order_id) filter (where status = 'completed')"
                " from taptouch.orders where updated_at >= %s::timestamptz and updated_at < %s::timestamptz + interval '1 day'",
                (f"{PARTITION}T00:00:00+00:00",) * 2,
            ).fetchone()
            assert clean.metadata["store_days_checked"].value == days[0] > 0
            oid = days[1]
            conn.execute("update taptouch.orders set tax = tax + 0.01 where order_id = %s", (oid,))
        corrupted = _run(sb, url, migrated_db)  # the re-run sees the order unchanged and keeps the typed value
    assert not corrupted.passed and corrupted.severity == dg.AssetCheckSeverity.ERROR
    assert f"{oid} (+0.01)" in corrupted.description
    assert corrupted.metadata["orders_listed"].value == str(oid)
    assert corrupted.metadata["partitions_to_rerun"].value == PARTITION
