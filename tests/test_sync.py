"""pipelines.sync against the in-process sandbox and a real PostgreSQL."""

from __future__ import annotations

from datetime import date

import psycopg
import pytest

from pipelines.sync import day_window, sync_orders_window, sync_stores
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig


@pytest.fixture
def setup(migrated_db):
    sb = Sandbox(SandboxConfig(seed=5, stores=3, days=3, end_date=date(2026, 11, 27), orders_per_day=50))
    client = TaptouchClient(client_id="sandbox-client", client_secret="sandbox-secret", transport=sb.transport(),
                            requests_per_second=None, sleep=lambda s: None, page_size=20)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        yield sb, client, conn


def test_unknown_store_is_a_named_failure_and_the_rest_loads(setup):
    sb, client, conn = setup
    sync_stores(client, conn)
    start, end = day_window("2026-11-26")
    ids = sb.store_ids()
    result = sync_orders_window(client, conn, start=start, end=end, window="2026-11-26", store_ids=ids + [9999])
    assert [f.store_id for f in result.failures] == [9999]
    assert "not in taptouch.stores" in result.failures[0].error and not result.failures[0].transient
    expected = {o["id"] for s in ids for o in sb.orders_in_window(s, start, end)}
    assert {r[0] for r in conn.execute("select order_id from taptouch.orders")} == expected
    assert result.counts.inserted == len(expected) and result.stores_ok == ids


def test_parallel_pages_with_faults_load_everything_once(setup):
    sb, client, conn = setup
    sync_stores(client, conn)
    sb.faults.duplicate_page_boundary = True
    sb.faults.rate_limit_every = 7
    sb.faults.retry_after = "0"
    sb.faults.server_error_every = 5
    start, end = day_window("2026-11-26")
    result = sync_orders_window(client, conn, start=start, end=end, window="2026-11-26", max_workers=3, batch_size=16)
    expected = {o["id"]: o for s in sb.store_ids() for o in sb.orders_in_window(s, start, end)}
    got = dict(conn.execute("select order_id, total from taptouch.orders").fetchall())
    assert got == {k: o["total"] for k, o in expected.items()}
    assert result.counts.duplicates > 0 and client.stats.rate_limited > 0 and client.stats.server_errors > 0
    assert result.per_store[sb.store_ids()[0]]["pages"] >= 2
