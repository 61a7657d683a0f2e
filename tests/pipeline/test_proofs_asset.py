"""The orders asset's check ``orders_proven`` through Dagster, against a sandbox over HTTP: a store
whose listing fails for one partition leaves that window unproven; the check over it fails naming the
store, the window and the partition to re-run (and how); a partition never run fails the same way
for every store; after the re-run the check passes. And the reconciliation re-proves recent windows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from pipelines.assets import taptouch as taptouch_assets
from pipelines.definitions import defs
from pipelines.reconcile import reconcile_orders
from pipelines.sync import OrderWindow
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchClient, TaptouchResource
from taptouch_sandbox import Sandbox, SandboxConfig

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

stores, orders = (defs.get_assets_def(key) for key in ("stores", "orders"))
END = date(2026, 11, 27)
D1, D2, D3 = "2026-11-25", "2026-11-26", "2026-11-24"


@pytest.fixture
def sandbox():
    sb = Sandbox(SandboxConfig(seed=7, stores=3, days=6, end_date=END, orders_per_day=20))
    with sb.serve() as url:
        sb.url = url
        yield sb


def resources(sb, db_url):
    return {
        "taptouch": TaptouchResource(
            client_id=sb.config.client_id,
            client_secret=sb.config.client_secret,
            base_url=sb.url,
            requests_per_second=0,
        ),
        "warehouse": PostgresResource(database_url=db_url),
    }


def proven_check(result: dg.ExecuteInProcessResult):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "orders_proven")


def check_over(db_url: str, keys: list[str], store_ids: list[int]) -> dg.AssetCheckResult:
    with psycopg.connect(db_url) as conn:
        return taptouch_assets._proven_check(conn, [OrderWindow.day(k) for k in keys], store_ids)


def test_a_store_window_skipped_on_purpose_fails_the_check_until_its_partition_is_re_run(sandbox, migrated_db):
    res = resources(sandbox, migrated_db)
    assert dg.materialize([stores], resources=res).success
    skipped = sandbox.store_ids()[1]
    sandbox.faults.forbidden_stores = {skipped}  # its orders listing answers 403 during this run
    failed = dg.materialize([orders], resources=res, partition_key=D1, raise_on_error=False)
    assert not failed.success
    sandbox.faults.forbidden_stores = set()
    other = dg.materialize([orders], resources=res, partition_key=D2)
    assert other.success and proven_check(other).passed  # its own window is proven for every store

    check = check_over(migrated_db, [D1], sandbox.store_ids())
    assert not check.passed
    problems = check.metadata["problems"].text
    assert f"store {skipped}, window {D1}: never completely listed" in problems
    assert "403" in problems or "store_forbidden" in problems  # the latest listing's failure, as the API said
    assert [s for s in sandbox.store_ids() if f"store {s}," in problems] == [skipped]
    repair = check.metadata["repair"].text
    assert f"dagster asset materialize -m pipelines.definitions --select orders --partition {D1}" in repair
    assert "Assets > orders > Materialize" in repair

    never = check_over(migrated_db, [D3], sandbox.store_ids())  # a partition never run
    assert not never.passed and never.metadata["not_proven"].value == 3
    assert all(f"store {s}, window {D3}: never listed" in never.metadata["problems"].text for s in sandbox.store_ids())

    rerun = dg.materialize([orders], resources=res, partition_key=D1)
    assert rerun.success and proven_check(rerun).passed
    assert proven_check(rerun).metadata["stores_checked"].value == 3
    assert check_over(migrated_db, [D1, D2], sandbox.store_ids()).passed


def test_the_reconciliation_re_proves_the_recent_windows_it_lists(sandbox, migrated_db):
    res = resources(sandbox, migrated_db)
    assert dg.materialize([stores], resources=res).success
    client = TaptouchClient(
        client_id=sandbox.config.client_id,
        client_secret=sandbox.config.client_secret,
        base_url=sandbox.url,
        requests_per_second=None,
    )
    # the sandbox's days are in the past: reconcile as of the day after its last one, over 3 days
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        result = reconcile_orders(client, conn, days=3, now=now, run_id="reconcile-run")
        assert not result.failures
        assert {s.proven for s in result.stores} == {(datetime.now(UTC).date() - date(2026, 11, 26)).days + 1}
        keys = [(date(2026, 11, 26) + timedelta(days=n)).isoformat() for n in range(3)]
        proven = conn.execute(
            'select "window", store_id, proved_by, listed_orders from taptouch.listing_proofs'
            ' where complete and "window" = any(%s) order by 1, 2',
            (keys,),
        ).fetchall()
    assert {(w, s) for w, s, _, _ in proven} == {(k, s) for k in keys for s in sandbox.store_ids()}
    assert {by for _, _, by, _ in proven} == {"reconcile-run"}
    for key, store_id, _, listed in proven:
        assert listed == len(sandbox.orders_in_window(store_id, OrderWindow.day(key).start, OrderWindow.day(key).end))
    # it also loaded what the warehouse lacked (its repairs): the windows it proved hold their sets
    assert check_over(migrated_db, keys, sandbox.store_ids()).passed
