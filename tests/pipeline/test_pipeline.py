"""The Dagster pipeline end to end: sandbox over HTTP -> assets -> real PostgreSQL == ground truth.

The code location's shape (definitions, graph, settings) is tested in test_definitions.py."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pipelines.definitions import defs
from pipelines.settings import FULL_REFRESH_TAG
from pipelines.warehouse.db import with_database
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchResource, jsonutil
from taptouch_sandbox import Faults, Sandbox, SandboxConfig
from tests.support import truth

stores, orders, inventory = (defs.get_assets_def(key) for key in ("stores", "orders", "inventory"))  # as registered
orders_hourly = defs.get_schedule_def("orders_hourly")

END = date(2026, 11, 27)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox():
    sb = Sandbox(SandboxConfig(seed=7, stores=3, days=6, end_date=END, orders_per_day=40))
    with sb.serve() as url:
        sb.url = url
        yield sb


def resources(sb, db_url, secret=None):
    return {
        "taptouch": TaptouchResource(
            client_id=sb.config.client_id,
            client_secret=secret or sb.config.client_secret,
            base_url=sb.url,
            requests_per_second=0,
        ),
        "warehouse": PostgresResource(database_url=db_url),
    }


def rows(db_url, sql, *args):
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, args or None).fetchall()


def assert_orders_match(db_url, sb, days):
    want = truth.orders_updated_in_days(sb, days)
    assert want, "the sandbox must have orders in the window"
    got = {
        r[0]: r[1:] for r in rows(db_url, "select order_id, updated_at, status, total, raw::text from taptouch.orders")
    }
    assert set(got) == set(want)
    for oid, o in want.items():
        updated_at, status, total, raw = got[oid]
        assert updated_at == datetime.fromisoformat(o["updated_at"])
        assert (status, total) == (o["status"], o["total"])
        assert jsonutil.loads(raw) == o
    items = rows(db_url, "select order_id, item_id, total from taptouch.order_items order by 1, 2")
    assert items == sorted((o["id"], i["id"], i["total"]) for o in want.values() for i in o["items"])
    pays = rows(db_url, "select order_id, payment_id, amount from taptouch.order_payments order by 1, 2")
    assert pays == sorted((o["id"], p["id"], p["amount"]) for o in want.values() for p in o["payments"])
    refunds = rows(db_url, "select order_id, refund_id, amount from taptouch.order_refunds order by 1, 2")
    assert refunds == sorted((o["id"], r["id"], r["amount"]) for o in want.values() for r in o["refunds"])


def test_orders_hourly_schedule_requests():
    def keys(when):
        ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def())
        return [
            (r.partition_key, r.tags.get("taptouch/full_refresh", "incremental"))
            for r in orders_hourly.evaluate_tick(ctx).run_requests
        ]

    assert keys(datetime(2026, 11, 2, 1, 5, tzinfo=UTC)) == [
        ("2026-11-01", "incremental"),
        ("2026-11-02", "incremental"),
    ]
    assert keys(datetime(2026, 11, 2, 3, 5, tzinfo=UTC)) == [
        ("2026-11-01", "incremental"),
        ("2026-11-02", "incremental"),
    ]
    # the closed day once in full, so a record later than the lookback is caught within a day
    assert keys(datetime(2026, 11, 2, 4, 5, tzinfo=UTC)) == [("2026-11-01", "true"), ("2026-11-02", "incremental")]
    assert keys(datetime(2026, 11, 2, 5, 5, tzinfo=UTC)) == [("2026-11-02", "incremental")]
    assert keys(datetime(2026, 11, 2, 23, 5, tzinfo=UTC)) == [("2026-11-02", "incremental")]


def test_assets_load_ground_truth(sandbox, migrated_db):
    res = resources(sandbox, migrated_db)
    result = dg.materialize([stores, inventory], resources=res)
    assert result.success
    tokens = [
        result.asset_materializations_for_node(n)[0].metadata["token_requests"].value for n in ("stores", "inventory")
    ]
    assert sorted(tokens) == [0, 1]  # the first step's token request is counted; the second step reuses it
    got = dict(rows(migrated_db, "select store_id, name from taptouch.stores"))
    assert got == {s["id"]: s["name"] for s in sandbox.stores()}
    levels = rows(
        migrated_db, "select store_id, product_id, on_hand, cost_price from taptouch.inventory_levels order by 1, 2"
    )
    assert levels == sorted(
        (sid, p["product_id"], Decimal(p["on_hand"]), p["cost_price"])
        for sid in sandbox.store_ids()
        for p in sandbox.inventory(sid)
    )
    assert rows(migrated_db, "select count(*) from taptouch.inventory_snapshots")[0][0] == len(levels)

    result = dg.materialize([orders], resources=res, partition_key="2026-11-25")
    assert result.success
    assert_orders_match(migrated_db, sandbox, ["2026-11-25"])
    md = result.asset_materializations_for_node("orders")[0].metadata
    assert md["inserted"].value == len(truth.orders_updated_in_days(sandbox, ["2026-11-25"]))
    assert md["stores_ok"].value == 3 and md["stores_failed"].value == 0 and md["api_requests"].value >= 3
    # the run's own figures (token requests: the token of the first run is still valid, shared)
    totals = result.dagster_run.tags["taptouch/orders_totals"]
    assert f"1 partition(s) 2026-11-25: {md['inserted'].value} inserted" in totals and "0 token requests" in totals
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "no_quarantined_records": True,
        "order_arithmetic": True,
        "no_future_dated_orders": True,
        "money_reconciliation": True,
        "orders_proven": True,
        "sales_aggregates_exact": True,
    }


def test_backfill_of_three_partitions_through_an_instance_then_rerun_changes_nothing(sandbox, migrated_db, tmp_path):
    res = resources(sandbox, migrated_db)
    days = ["2026-11-23", "2026-11-24", "2026-11-25"]
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert dg.materialize([stores], resources=res, instance=instance).success
        tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}
        first = dg.materialize([orders], resources=res, instance=instance, tags=tags)
        assert first.success
        assert_orders_match(migrated_db, sandbox, days)
        before = rows(migrated_db, "select order_id, loaded_at from taptouch.orders order by 1")
        again = dg.materialize([orders], resources=res, instance=instance, tags={**tags, FULL_REFRESH_TAG: "true"})
        per_partition = {e.partition: e.metadata for e in again.asset_materializations_for_node("orders")}
        assert sorted(per_partition) == days
        for day, md in per_partition.items():  # each partition: its own window's orders, all unchanged
            assert md["inserted"].value == 0 and md["updated"].value == 0
            window = truth.orders_updated_in_days(sandbox, [day])
            assert md["unchanged"].value == md["dagster/row_count"].value == len(window)
        assert sum(md["unchanged"].value for md in per_partition.values()) == len(before)
        assert rows(migrated_db, "select order_id, loaded_at from taptouch.orders order by 1") == before
        status = instance.get_status_by_partition(dg.AssetKey("orders"), days, orders.partitions_def)
        assert status and all(str(v).endswith("MATERIALIZED") for v in status.values())


def test_forbidden_store_is_isolated_and_named(sandbox, migrated_db):
    sandbox.faults.forbidden_stores = {sandbox.store_ids()[1]}
    res = resources(sandbox, migrated_db)
    assert dg.materialize([stores], resources=res).success
    result = dg.materialize([orders], resources=res, partition_key="2026-11-25", raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("orders")
    text = str(failure.user_failure_data.description if failure.user_failure_data else failure.error)
    bad = sandbox.store_ids()[1]
    assert f"store {bad}" in text and "store_forbidden" in text
    ok_stores = [s for s in sandbox.store_ids() if s != bad]
    loaded = {r[0] for r in rows(migrated_db, "select distinct store_id from taptouch.orders")}
    assert loaded == set(ok_stores)
    start = datetime(2026, 11, 25, tzinfo=UTC)
    expected = {o["id"] for s in ok_stores for o in sandbox.orders_in_window(s, start, start + timedelta(days=1))}
    assert {r[0] for r in rows(migrated_db, "select order_id from taptouch.orders")} == expected


def test_wrong_credentials_fail_first_step_clearly(sandbox, migrated_db):
    res = resources(sandbox, migrated_db, secret="not-the-secret")
    result = dg.materialize([stores], resources=res, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("stores")
    text = failure.user_failure_data.description
    assert "TAPTOUCH_CLIENT_SECRET" in text and "invalid_client" in text
    assert "not-the-secret" not in text


def test_missing_client_id_names_the_variable(migrated_db, monkeypatch):
    monkeypatch.delenv("TAPTOUCH_CLIENT_ID", raising=False)
    monkeypatch.delenv("TAPTOUCH_CLIENT_SECRET", raising=False)
    res = {"taptouch": TaptouchResource(), "warehouse": PostgresResource(database_url=migrated_db)}
    result = dg.materialize([stores], resources=res, raise_on_error=False)
    assert "TAPTOUCH_CLIENT_ID is not set" in result.failure_data_for_node("stores").user_failure_data.description


def test_quarantine_check_warns_and_other_orders_load(migrated_db):
    sb = Sandbox(
        SandboxConfig(seed=3, stores=2, days=3, end_date=END, orders_per_day=60), faults=Faults(malformed_every=10)
    )
    with sb.serve() as url:
        sb.url = url
        res = resources(sb, migrated_db)
        assert dg.materialize([stores], resources=res).success
        result = dg.materialize([orders], resources=res, partition_key="2026-11-26")
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    quarantined = rows(migrated_db, "select record_key from taptouch.quarantine where entity = 'order'")
    assert quarantined, "malformed_every=10 must produce quarantined orders in a day"
    assert checks["no_quarantined_records"].passed is False
    assert checks["no_quarantined_records"].severity == dg.AssetCheckSeverity.WARN
    assert {int(k) for (k,) in quarantined} <= sb.malformed_order_ids()
    loaded = {r[0] for r in rows(migrated_db, "select order_id from taptouch.orders")}
    start = datetime(2026, 11, 26, tzinfo=UTC)
    all_ids = {o["id"] for s in sb.store_ids() for o in sb.orders_in_window(s, start, start + timedelta(days=1))}
    assert loaded == all_ids - {int(k) for (k,) in quarantined}


@pytest.mark.slow
def test_operator_cli_materializes_a_partition(sandbox, migrated_db, tmp_path):
    env = {
        **os.environ,
        "TAPTOUCH_BASE_URL": sandbox.url,
        "TAPTOUCH_CLIENT_ID": sandbox.config.client_id,
        "TAPTOUCH_CLIENT_SECRET": sandbox.config.client_secret,
        "TAPTOUCH_DATABASE_URL": migrated_db,
        "DAGSTER_HOME": str(tmp_path),
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    for select, extra in (("stores", []), ("orders", ["--partition", "2026-11-24"])):
        proc = subprocess.run(
            [dagster, "asset", "materialize", "-m", "pipelines.definitions", "--select", select, *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert_orders_match(migrated_db, sandbox, ["2026-11-24"])
    assert sandbox.config.client_secret not in proc.stdout + proc.stderr


def test_a_wrong_warehouse_url_fails_at_once_unretried(sandbox, make_database):
    wrong = with_database(make_database(), "no_such_warehouse_db")  # the server's URL, another database
    res = resources(sandbox, wrong)
    result = dg.materialize([orders], resources=res, partition_key="2026-11-25", raise_on_error=False)
    assert not result.success
    types = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in types and types.count("STEP_FAILURE") == 1
    failure = result.failure_data_for_node("orders")
    assert "no_such_warehouse_db" in failure.error.message and "does not exist" in failure.error.message
