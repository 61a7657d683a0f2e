"""An inventory snapshot was dated by the API's store listing's zone, not by the zone the warehouse
holds, which dates the orders beside it (a hostile review's finding)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import psycopg
import pytest

from pipelines.sync import sync_inventory, sync_stores
from pipelines.warehouse.loader import store_timezones
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.postgres


def _client(sb: Sandbox) -> TaptouchClient:
    """The sandbox's client, in process: no rate limit, no sleeping."""
    return TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
    )


def test_a_snapshot_is_dated_by_the_zone_the_warehouse_holds_not_an_older_listings(migrated_db):
    """The stores asset loaded the store's zone (Australia/Sydney here); the inventory run's own
    store listing came from a lagging replica, or predates a zone correction the stores asset has
    loaded, and says UTC. The orders of such a run are re-dated by the warehouse's zone
    (derived.follow_store_zones); the snapshot was dated by the listing's: at 07:00 on 28 November
    in Sydney it overwrote the snapshot of 27 November (a day already closed there) with this
    morning's stock, and analytics.inventory_history pairs it with the 27th's sales. Snapshots are
    never re-dated."""
    sb = Sandbox(SandboxConfig(seed=3, stores=1, days=2, orders_per_day=5, end_date=date(2026, 11, 28)))
    client = _client(sb)
    store = sb.store_ids()[0]
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        assert store_timezones(conn)[store] == "Australia/Sydney"
        now = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)  # 2026-11-28 07:00 in Sydney
        assert not sync_inventory(client, conn, timezones={store: "UTC"}, now=now).failures
        dates = [r[0] for r in conn.execute("select distinct snapshot_date from taptouch.inventory_snapshots")]
        assert dates == [date(2026, 11, 28)]


def test_a_run_crossing_a_stores_midnight_dates_each_snapshot_when_its_store_is_listed(migrated_db, monkeypatch):
    """Every snapshot of a run was dated by the run's start: a run starting a moment before midnight
    in Sydney filed the stock a store listed after midnight (the new day's) under the day before,
    and analytics.inventory_history paired it with that day's sales. Each store's snapshot is now
    dated when the store is listed."""
    import pipelines.sync as sync

    sb = Sandbox(SandboxConfig(seed=3, stores=2, days=2, orders_per_day=5, end_date=date(2026, 11, 28)))
    client = _client(sb)
    first, second = sorted(sb.store_ids())
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        zones = store_timezones(conn)
        # the run starts at 23:59:59 on 27 November where the first store is; the second store is
        # listed a moment after midnight (the 28th) where it is
        clock = iter(
            [
                datetime(2026, 11, 27, 23, 59, 59, tzinfo=ZoneInfo(zones[first])),
                datetime(2026, 11, 28, 0, 0, 1, tzinfo=ZoneInfo(zones[second])),
            ]
        )
        monkeypatch.setattr(sync, "_now", lambda: next(clock))
        assert not sync_inventory(client, conn, timezones=zones, store_ids=[first, second]).failures
        dates = conn.execute(
            "select distinct store_id, snapshot_date from taptouch.inventory_snapshots order by 1"
        ).fetchall()
    assert dates == [(first, date(2026, 11, 27)), (second, date(2026, 11, 28))]
