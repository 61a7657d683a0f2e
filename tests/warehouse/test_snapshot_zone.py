"""An inventory snapshot was dated by the API's store listing's zone, not by the zone the warehouse
holds, which dates the orders beside it (a hostile review's finding)."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg
import pytest

from pipelines.sync import sync_inventory, sync_stores
from pipelines.warehouse.loader import store_timezones
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.postgres


def test_a_snapshot_is_dated_by_the_zone_the_warehouse_holds_not_an_older_listings(migrated_db):
    """The stores asset loaded the store's zone (Australia/Sydney here); the inventory run's own
    store listing came from a lagging replica, or predates a zone correction the stores asset has
    loaded, and says UTC. The orders of such a run are re-dated by the warehouse's zone
    (derived.follow_store_zones); the snapshot was dated by the listing's: at 07:00 on 28 November
    in Sydney it overwrote the snapshot of 27 November (a day already closed there) with this
    morning's stock, and analytics.inventory_history pairs it with the 27th's sales. Snapshots are
    never re-dated."""
    sb = Sandbox(SandboxConfig(seed=3, stores=1, days=2, orders_per_day=5, end_date=date(2026, 11, 28)))
    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
    )
    store = sb.store_ids()[0]
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        assert store_timezones(conn)[store] == "Australia/Sydney"
        now = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)  # 2026-11-28 07:00 in Sydney
        assert not sync_inventory(client, conn, timezones={store: "UTC"}, now=now).failures
        dates = [r[0] for r in conn.execute("select distinct snapshot_date from taptouch.inventory_snapshots")]
        assert dates == [date(2026, 11, 28)]
