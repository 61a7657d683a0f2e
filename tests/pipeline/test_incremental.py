"""Incremental order windows: a re-run asks the API only from each store's
high-water mark minus the lookback; a full refresh (run tag or config) fetches the whole window."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from pipelines.definitions import defs
from pipelines.settings import FULL_REFRESH_TAG, lookback
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchResource
from taptouch_sandbox import Sandbox, SandboxConfig

orders = defs.get_assets_def("orders")  # the asset as the code location registers it

pytestmark = pytest.mark.postgres

DAY = "2026-11-25"
START = datetime(2026, 11, 25, tzinfo=UTC)
END = START + timedelta(days=1)
PAGE = 100


@pytest.fixture
def busy():
    """Three stores with about 400 orders a day each: several pages of 100 per store and day."""
    sb = Sandbox(SandboxConfig(seed=11, stores=3, days=4, end_date=date(2026, 11, 27), orders_per_day=400))
    with sb.serve() as url:
        sb.url = url
        yield sb


def run(sb, db_url, *, tags=None, config=None):
    res = {
        "taptouch": TaptouchResource(
            client_id=sb.config.client_id,
            client_secret=sb.config.client_secret,
            base_url=sb.url,
            requests_per_second=0,
            page_size=PAGE,
        ),
        "warehouse": PostgresResource(database_url=db_url),
    }
    sb.stats.reset()
    result = dg.materialize(
        [orders],
        resources=res,
        partition_key=DAY,
        tags=tags or {},
        run_config={"ops": {"orders": {"config": config}}} if config else None,
    )
    assert result.success
    md = {
        k: v.value
        for k, v in result.asset_materializations_for_node("orders")[0].metadata.items()
        if not k.startswith("dagster/")
    }
    requests = {sid: sb.stats.api_requests_by_path[f"/integration/v1/stores/{sid}/orders"] for sid in sb.store_ids()}
    return md, requests


def version(db_url, order_id):
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "select updated_at, status from taptouch.orders where order_id = %s", (order_id,)
        ).fetchone()


def in_window(sb, store_id):
    return sorted(sb.orders_in_window(store_id, START, END), key=lambda o: o["updated_at"])


def test_unchanged_rerun_asks_one_page_per_store_twice_and_an_edit_after_the_mark_is_loaded(busy, migrated_db):
    first, requests = run(busy, migrated_db)
    pages_per_store = {sid: len(in_window(busy, sid)) // PAGE + 1 for sid in busy.store_ids()}
    assert min(pages_per_store.values()) >= 3  # a busy day: several pages per store
    # the first run has no mark: the whole window, each whole page's range behind the cursor asked
    # for once more and what follows that answer (a short answer may be a cut one), and its last
    # (short) page asked for twice
    assert requests == {sid: 3 * n - 1 for sid, n in pages_per_store.items()}
    assert first["inserted"] == sum(len(in_window(busy, sid)) for sid in busy.store_ids())
    assert first["incremental_stores"] == 0 and first["pages_skipped"] == 0

    again, requests = run(busy, migrated_db)
    assert requests == {sid: 2 for sid in busy.store_ids()}  # one (short) page per store, asked for twice
    assert again["incremental_stores"] == 3
    assert again["pages_skipped"] == sum(pages_per_store.values()) - 3
    assert again["inserted"] == 0 and again["updated"] == 0

    store = busy.store_ids()[0]
    target = in_window(busy, store)[0]["id"]
    edited = busy.edit_order(target, status="refunded", updated_at=END - timedelta(seconds=1))
    third, requests = run(busy, migrated_db)
    assert requests == {sid: 2 for sid in busy.store_ids()}
    assert third["updated"] == 1
    assert version(migrated_db, target) == (datetime.fromisoformat(edited["updated_at"]), "refunded")


def test_a_record_later_than_the_lookback_is_caught_by_the_full_refresh(busy, migrated_db):
    run(busy, migrated_db)
    store = busy.store_ids()[0]
    oldest = in_window(busy, store)[0]
    late_at = datetime.fromisoformat(oldest["updated_at"]) + timedelta(seconds=1)
    busy.edit_order(oldest["id"], status="voided", updated_at=late_at)  # older than mark - lookback

    incremental, _ = run(busy, migrated_db)
    assert incremental["updated"] == 0
    assert version(migrated_db, oldest["id"])[1] != "voided"  # not asked for again: by design

    full, requests = run(busy, migrated_db, tags={FULL_REFRESH_TAG: "true"})
    assert full["full_refresh"] is True and full["incremental_stores"] == 0
    assert (
        requests[store] == 3 * (len(in_window(busy, store)) // PAGE + 1) - 1
    )  # pages, probes and what follows them, the last again
    assert full["updated"] == 1
    assert version(migrated_db, oldest["id"]) == (late_at, "voided")


def test_full_refresh_from_run_config_and_the_lookback_setting(busy, migrated_db, monkeypatch):
    run(busy, migrated_db)
    md, requests = run(busy, migrated_db, config={"full_refresh": True})
    assert md["full_refresh"] is True and md["unchanged"] == sum(len(in_window(busy, s)) for s in busy.store_ids())
    assert all(n >= 3 for n in requests.values())
    monkeypatch.setenv("TAPTOUCH_LOOKBACK", "30m")
    assert lookback() == timedelta(minutes=30)
    assert lookback("90") == timedelta(seconds=90)
    for bad in ("soon", "-5", "2d", "100000"):
        with pytest.raises(ValueError, match="TAPTOUCH_LOOKBACK"):
            lookback(bad)


def test_a_server_sorted_by_id_loses_no_order_behind_an_edit_that_ends_a_page(busy, migrated_db):
    # the contract promises (updated_at, id) order, and that correctness does not depend on it. A
    # server sorted by id: the day's first 100 ids were edited in id order, the 100th last of all
    # (refunded in the window's last second), so page 0 looks in order and ends at that refund.
    # Before, the listing's cursor jumped there and the store's other orders of the day were never
    # asked for, while the window was proven complete
    busy.faults.sorted_by_id = True
    store = busy.store_ids()[0]
    by_id = sorted(o["id"] for o in in_window(busy, store))
    for i, oid in enumerate(by_id[: PAGE - 1]):
        busy.edit_order(oid, updated_at=START + timedelta(seconds=i))
    busy.edit_order(by_id[PAGE - 1], status="refunded", updated_at=END - timedelta(seconds=1))
    md, requests = run(busy, migrated_db)
    want = {o["id"]: o["updated_at"] for sid in busy.store_ids() for o in in_window(busy, sid)}
    with psycopg.connect(migrated_db) as conn:
        got = dict(conn.execute("select order_id, updated_at from taptouch.orders").fetchall())
        proven = conn.execute(
            "select count(*) from taptouch.listing_proofs where store_id = %s and complete", (store,)
        ).fetchone()[0]
    assert {oid: at for oid, at in got.items()} == {oid: datetime.fromisoformat(at) for oid, at in want.items()}
    assert md["inserted"] == len(want)
    assert proven >= 1  # read by page number and verified: still proven
    assert requests[store] > len(by_id) // PAGE + 2  # the probe, then two page-number passes


def settling(db_url):
    """How long each complete proof lets records settle before its listing (at most, since the
    API's clock may start the listing a moment earlier than this machine's)."""
    with psycopg.connect(db_url) as conn:
        return [s for (s,) in conn.execute("select listed_at - settled_at from taptouch.listing_proofs where complete")]


def test_the_run_configs_lookback_is_the_runs_lookback_everywhere(busy, migrated_db, monkeypatch):
    # the orders config's lookback moved only where a re-run asks from; a listing's late allowance
    # and its proofs' settling time read TAPTOUCH_LOOKBACK. Now the config's value is the run's:
    # proofs written under a config of 1h hold for what was updated an hour before their listing
    monkeypatch.setenv("TAPTOUCH_LOOKBACK", "2m")
    run(busy, migrated_db)
    first = settling(migrated_db)
    assert len(first) == 3 and all(timedelta(minutes=2) <= s < timedelta(minutes=2, seconds=10) for s in first)
    run(busy, migrated_db, config={"lookback": "1h"})
    again = settling(migrated_db)
    assert len(again) == 3 and all(timedelta(hours=1) <= s < timedelta(hours=1, seconds=10) for s in again)
