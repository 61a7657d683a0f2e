"""An order quarantined once and served valid again in the held bytes was resolved by an orders
load, but never by the reconciliation, the only run that lists an older day again (a hostile
review's finding)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from pipelines.reconcile import reconcile_orders
from pipelines.sync import sync_stores
from pipelines.warehouse.loader import OrderWindowLoad
from taptouch_resource import TaptouchClient, jsonutil
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.windows import load_window

pytestmark = pytest.mark.postgres


def test_the_reconciliation_resolves_an_order_it_lists_valid_in_the_held_bytes(migrated_db):
    """Order X of three days ago is held. A glitching answer once served it malformed at the same
    version (say yesterday's 04:05 full reload of its day): quarantined, the held version kept. The
    API serves it valid again in exactly the held bytes, but no orders load lists that day any more
    (the hourly runs start at their marks); the reconciliation lists it every 6 hours and skips it
    as 'exactly this version', so the row stays open for good and the day's
    no_quarantined_records check warns on every backfill."""
    today = datetime.now(UTC).date()
    sb = Sandbox(SandboxConfig(seed=11, stores=1, days=6, end_date=today, orders_per_day=6))
    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
        page_size=50,
    )
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        now = datetime.now(UTC)
        start = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=7)
        assert not load_window(client, conn, "all", start, now + timedelta(days=1)).failures
        oid, store, updated = conn.execute(
            "select order_id, store_id, updated_at from taptouch.orders where updated_at < %s"
            " order by updated_at desc limit 1",
            (now - timedelta(days=3),),
        ).fetchone()
        bad = sb.order(oid)
        bad["total"] += 1  # same id, same version, arithmetic broken
        window = updated.astimezone(UTC).date().isoformat()
        with OrderWindowLoad(conn, window=window) as load:
            load.add_page(store, [jsonutil.dumps(bad).encode()])
            assert load.finish().quarantined == 1
        result = reconcile_orders(client, conn, days=5, now=now)
        assert not result.failures and result.repaired == 0 and result.listed > 0  # listed, nothing to repair
        assert (
            conn.execute(
                "select count(*) from taptouch.quarantine where record_key = %s and resolved_at is null", (str(oid),)
            ).fetchone()[0]
            == 0
        )
