"""Seeded random fault schedules: after each, the warehouse equals the sandbox's truth."""

import os
import random
from collections import Counter
from datetime import timedelta

import pytest

from pipelines.sync import sync_stores
from tests.support.reliability import schedules
from tests.support.reliability.check import compare, reset, truth_orders
from tests.support.reliability.dbfaults import full_range, load_all, make_client, make_sandbox
from tests.support.reliability.schedules import FakeClock, FaultTransport
from tests.support.windows import load_window

pytestmark = pytest.mark.reliability
CI_SCHEDULES = int(os.environ.get("RELIABILITY_SCHEDULES", "20"))
EVERY_KIND = {
    "429_retry_after_0",
    "429_retry_after_seconds",
    "429_retry_after_date",
    "5xx",
    "timeout",
    "token_expired",
    "token_revoked",
    "token_endpoint_error",
    "ack_mismatch",
    "duplicate_page_boundary",
    "stale_read",
    "malformed_record",
}


@pytest.mark.slow
def test_random_fault_schedules_keep_warehouse_equal_to_truth(conn):
    injected: Counter = Counter()
    failed = []
    for seed in range(CI_SCHEDULES):
        r = schedules.run_schedule(seed, conn)
        injected.update(r.injected)
        assert r.orders > 0
        if not r.diff.ok or r.incomplete:  # a row lost, duplicated, moved back or different; a step never done
            failed.append(f"seed {seed}: {r.diff} incomplete={r.incomplete} faults={r.faults}")
    assert not failed, "\n".join(failed)
    if CI_SCHEDULES >= 20:  # the CI schedules exercise every kind of fault at least once
        assert set(injected) >= EVERY_KIND, f"never injected: {EVERY_KIND - set(injected)}"


def test_stale_read_never_moves_a_row_backwards(conn):
    sb = make_sandbox(11)
    transport = FaultTransport(sb, FakeClock())
    client = make_client(sb)
    client._http._transport = transport  # the same client, its requests through the stale replica
    load_all(client, conn)
    start, end = full_range()
    truth = truth_orders(sb, start, end)
    rng = random.Random(1)
    tz = {s["id"]: s["timezone"] for s in sb.stores()}
    stale = {}
    for oid in sorted(truth)[:40]:
        older = schedules._older_version(truth[oid], tz[truth[oid]["store_id"]], rng)
        if older:
            stale[oid] = older
    assert len(stale) >= 20
    assert all(stale[o]["updated_at"] < truth[o]["updated_at"] for o in stale)
    transport.stale, transport.stale_active = stale, True
    for w_start in (start + timedelta(days=i) for i in range(8)):
        r = load_window(client, conn, "backfill", w_start, w_start + timedelta(days=1))
        assert not r.failures
    assert transport.counts["stale_read"] >= len(stale)
    diff = compare(conn, sb, start, end)
    assert diff.ok, str(diff)
    assert diff.orders_found == len(truth)


def test_comparison_detects_lost_duplicated_and_backwards_rows(conn):
    """The checker itself can fail: break the warehouse three ways and see each counted."""
    sb = make_sandbox(12)
    client = make_client(sb)
    load_all(client, conn)
    start, end = full_range()
    truth = truth_orders(sb, start, end)
    assert compare(conn, sb, start, end).ok
    ids = [r[0] for r in conn.execute("select order_id from taptouch.orders order by 1 limit 3").fetchall()]
    conn.execute("delete from taptouch.orders where order_id = %s", (ids[0],))
    conn.execute(
        "update taptouch.orders set updated_at = updated_at - interval '1 hour' where order_id = %s", (ids[1],)
    )
    conn.execute(
        "insert into taptouch.order_items (order_id, item_id, quantity, unit_price, discount, tax, total)"
        " values (%s, 999999, 1, 1, 0, 0, 1)",
        (ids[2],),
    )
    diff = compare(conn, sb, start, end)

    def rows(order: dict) -> int:  # the order and its children (deleting it cascades to them)
        return 1 + len(order["items"]) + len(order["payments"]) + len(order["refunds"])

    assert (diff.lost, diff.backwards, diff.duplicated, diff.mismatched) == (rows(truth[ids[0]]), 1, 1, 0), str(diff)
    reset(conn)
    sync_stores(client, conn)
    empty = compare(conn, sb, start, end)
    assert empty.orders_found == 0 and empty.orders_expected == len(truth) > 0
    assert (empty.lost, empty.duplicated) == (sum(map(rows, truth.values())), 0)
