"""The loader against a real PostgreSQL: newest wins, children follow, atomic windows, hostile text."""

from __future__ import annotations

import threading
import time
from datetime import date
from decimal import Decimal

import psycopg
import pytest

from pipelines.warehouse import loader
from pipelines.warehouse.loader import OrderWindowLoad, load_inventory, load_stores
from taptouch_resource import jsonutil
from tests.support import factories as f

D = Decimal


def conn_for(url):
    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)


@pytest.fixture
def db(migrated_db):
    with conn_for(migrated_db) as conn:
        load_stores(conn, [f.store(7101, "Australia/Melbourne"), f.store(7102, "Australia/Perth")])
        yield conn


def load_orders(conn, pages, window="2026-11-02", **kw):
    with OrderWindowLoad(conn, window=window, **kw) as load:
        for store_id, page in pages:
            load.add_page(store_id, page)
        return load.finish()


def q(conn, sql, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchall()


def test_orders_loaded_exactly_with_children_and_business_date(db):
    o = f.order(1, created_at="2026-11-02T23:50:00+11:00")  # Melbourne local date 2026-11-02
    p = f.order(2, store_id=7102, created_at="2026-11-02T23:50:00+11:00")  # Perth: 20:50 on 2026-11-02
    late = f.order(3, created_at="2026-11-02T13:10:00+00:00")  # UTC 13:10 = 00:10 next day in Melbourne
    counts = load_orders(db, [(7101, [o, late]), (7102, [p])])
    assert (counts.inserted, counts.updated, counts.unchanged, counts.quarantined) == (3, 0, 0, 0)
    rows = dict(q(db, "select order_id, business_date from taptouch.orders"))
    assert rows == {1: date(2026, 11, 2), 2: date(2026, 11, 2), 3: date(2026, 11, 3)}
    total, subtotal = q(db, "select total, subtotal from taptouch.orders where order_id = 1")[0]
    assert total == o["total"] and subtotal == D("36.60")
    assert q(db, "select count(*) from taptouch.order_items")[0][0] == 6
    assert q(db, "select sum(amount) from taptouch.order_payments where order_id = 1")[0][0] == o["total"]
    raw = q(db, "select raw::text from taptouch.orders where order_id = 1")[0][0]
    assert jsonutil.loads(raw) == o
    mods = q(db, "select modifiers from taptouch.order_items where order_id = 1 and item_id = 1")[0][0]
    assert mods == [{"id": 77, "name": "Oat milk", "quantity": 1, "price": 0.8}] or mods[0]["name"] == "Oat milk"


def test_newest_wins_and_never_moves_backwards(db):
    v1 = f.order(10, updated_at="2026-11-02T12:40:00+11:00")
    v2 = f.order(
        10,
        updated_at="2026-11-03T09:00:00+11:00",
        status="partially_refunded",
        refunds=["5.00"],
        items=[f.item(1, 1, "8.90", name="Orange juice")],
    )
    load_orders(db, [(7101, [v2])], window="2026-11-03")
    counts = load_orders(db, [(7101, [v1])], window="2026-11-02")  # an older window loaded later
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, 1)
    assert q(db, "select status, total from taptouch.orders where order_id = 10") == [("partially_refunded", D("8.90"))]
    assert q(db, "select item_id, name from taptouch.order_items where order_id = 10") == [(1, "Orange juice")]
    assert q(db, "select amount from taptouch.order_refunds where order_id = 10") == [(D("5.00"),)]
    # reloading the same data changes nothing
    before = q(db, "select order_id, loaded_at from taptouch.orders")
    counts = load_orders(db, [(7101, [v2])], window="2026-11-03")
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, 1)
    assert q(db, "select order_id, loaded_at from taptouch.orders") == before


def test_children_replaced_with_accepted_version(db):
    v1 = f.order(20, updated_at="2026-11-02T12:40:00+11:00")  # 2 items, 1 payment
    load_orders(db, [(7101, [v1])])
    v2 = f.order(
        20,
        updated_at="2026-11-02T13:00:00+11:00",
        items=[f.item(5, 3, "4.00")],
        status="refunded",
        refunds=["6.00", "6.00"],
    )
    counts = load_orders(db, [(7101, [v2])])
    assert counts.updated == 1
    assert q(db, "select item_id, quantity from taptouch.order_items where order_id = 20") == [(5, D(3))]
    assert q(db, "select count(*) from taptouch.order_refunds where order_id = 20") == [(2,)]
    assert q(db, "select count(*) from taptouch.order_payments where order_id = 20") == [(1,)]


def test_in_batch_duplicates_reduced(db):
    old = f.order(30, updated_at="2026-11-02T12:40:00+11:00")
    new = f.order(30, updated_at="2026-11-02T14:00:00+11:00", items=[f.item(9, 1, "3.00")])
    same_ts_later = f.order(31, updated_at="2026-11-02T12:00:00+11:00", number="first")
    same_ts_last = dict(f.order(31, updated_at="2026-11-02T12:00:00+11:00", number="last seen"))
    counts = load_orders(db, [(7101, [new, old, same_ts_later]), (7101, [same_ts_last, old])])
    assert counts.inserted == 2 and counts.duplicates == 3
    assert q(db, "select item_id from taptouch.order_items where order_id = 30") == [(9,)]
    assert q(db, "select number from taptouch.orders where order_id = 31") == [("last seen",)]


def test_bad_records_quarantined_others_loaded(db):
    good = f.order(40)
    bad_total = dict(f.order(41), total=D("99.99"))
    nul = f.order(42, number="A\x00B")
    three_dp = dict(f.order(43), subtotal=D("12.345"))
    string_money = dict(f.order(44), total="36.60")
    no_offset = f.order(45, created_at="2026-11-02T12:31:05")
    nan = dict(f.order(46), tax=D("NaN"))
    counts = load_orders(
        db, [(7101, [good, bad_total, nul, three_dp, string_money, no_offset, nan, "not an object"])], run_id="run-1"
    )
    assert counts.inserted == 1 and counts.quarantined == 7
    reasons = dict(q(db, "select record_key, reason from taptouch.quarantine where entity = 'order'"))
    assert "total 99.99 != subtotal" in reasons["41"]
    assert "NUL" in reasons["42"]
    assert "more than 2 decimals" in reasons["43"]
    assert "must be a JSON number" in reasons["44"]
    assert "no UTC offset" in reasons["45"]
    assert "not a finite number" in reasons["46"]
    assert (
        q(
            db,
            "select count(*) from taptouch.quarantine where record_key is null and reason like '%not a JSON object%'",
        )[0][0]
        == 1
    )
    # the NUL record is kept, readable: the NUL shown as \u0000
    assert q(db, "select raw->>'number' from taptouch.quarantine where record_key = '42'") == [("A\\u0000B",)]
    assert q(db, 'select distinct run_id, "window" from taptouch.quarantine') == [("run-1", "2026-11-02")]
    # the source fixes order 41 later: it loads and the quarantine row is marked resolved
    load_orders(db, [(7101, [f.order(41, updated_at="2026-11-02T15:00:00+11:00")])])
    assert q(db, "select resolved_at is not null from taptouch.quarantine where record_key = '41'") == [(True,)]
    assert q(db, "select count(*) from taptouch.orders")[0][0] == 2


def test_refunds_summing_past_an_amount_quarantine_that_order_and_the_window_commits(db):
    """Each refund fits numeric(12,2) and their sum does not fit the order's history row (numeric(14,2)):
    that order's fault, found at the boundary, not at the merge (which failed the whole window)."""
    huge = [
        {"id": i, "amount": D("9999999999.99"), "reason": "x", "refunded_at": "2026-11-02T13:00:00+11:00"}
        for i in range(101)
    ]
    hostile = dict(f.order(50, status="refunded"), refunds=huge)
    near = dict(f.order(51, status="refunded"), refunds=huge[:100])  # 999,999,999,999.00: the history row holds it
    other_store = f.order(52, store_id=7102)
    counts = load_orders(db, [(7101, [hostile, near]), (7102, [other_store])], run_id="run-1", retention=None)
    assert (counts.inserted, counts.quarantined) == (2, 1)
    assert q(db, "select order_id from taptouch.orders order by 1") == [(51,), (52,)]
    assert q(db, "select order_id, refunds from taptouch.order_history order by 1") == [
        (51, D("999999999999.00")),
        (52, D("0.00")),
    ]
    [(reason,)] = q(db, "select reason from taptouch.quarantine where record_key = '50'")
    assert reason.startswith("refunds sum to 1009999999998.99, beyond what the order's history row holds")


def test_every_view_reads_a_store_day_of_amounts_at_their_limit(db):
    """Each amount fits numeric(12,2), so a store-day's sums can pass any fixed precision (120 orders
    at the limit make 1.2e12): every analytics view still reads, to the cent, for every store."""
    from pipelines.warehouse.views import apply_views, view_names

    top = "9999999999.99"
    orders = [
        dict(
            f.order(600 + i, status="partially_refunded", items=[f.item(1, 1, top)]),
            refunds=[{"id": 1, "amount": D(top), "reason": "x", "refunded_at": "2026-11-02T13:00:00+11:00"}],
        )
        for i in range(120)
    ]
    load_orders(db, [(7101, orders), (7102, [f.order(900, store_id=7102)])])
    load_inventory(db, 7101, [f.inventory(1, on_hand="1e12", cost_price=D(top))], snapshot_date=date(2026, 11, 2))
    apply_views(db)
    for view in view_names():
        q(db, f"select * from analytics.{view}")  # none fails with numeric field overflow
    assert q(db, "select store_id, gross_sales, refunds, net_sales from analytics.daily_store_sales order by 1") == [
        (7101, D(top) * 120, D(top) * 120, D("0.00")),
        (7102, D("36.60"), D("0.00"), D("36.60")),
    ]
    assert q(db, "select stock_value from analytics.inventory_status where product_id = 1") == [(D(top) * 10**12,)]


def test_a_zone_change_that_moves_no_date_still_moves_the_hours_of_every_day(db):
    """Melbourne -> Perth moves 12:31 to 09:31 on the same business date: no date is re-derived, and
    the store's hourly aggregates of every day still follow the new zone (the views and a
    recomputation agree)."""
    from pipelines.warehouse import aggregates
    from pipelines.warehouse.views import apply_views

    days = [f.order(60 + d, created_at=f"2026-11-0{d}T12:31:05+11:00") for d in (2, 3)]
    load_orders(db, [(7101, days[:1])], window="2026-11-02")
    load_orders(db, [(7101, days[1:])], window="2026-11-03")
    apply_views(db)
    hours = "select business_date, local_hour from analytics.hourly_sales where store_id = 7101 order by 1"
    assert q(db, hours) == [(date(2026, 11, 2), 12), (date(2026, 11, 3), 12)]
    counts = load_stores(db, [f.store(7101, "Australia/Perth", updated_at="2026-11-04T10:15:00+10:00")])
    assert counts.business_dates_rederived == 0
    assert q(db, hours) == [(date(2026, 11, 2), 9), (date(2026, 11, 3), 9)]
    with db.transaction(), db.cursor() as cur:
        assert aggregates.mismatches(cur) == {}


def test_a_record_naming_id_twice_is_listed_under_the_id_it_is_loaded_as(db):
    """JSON's last duplicate key wins for the boundary and jsonb: a listing of ``{"id":999,...,"id":5}``
    lists order 5 (no deletion candidate for it), not an order 999 the warehouse never held."""
    from datetime import UTC, datetime

    compact = jsonutil.dumps(f.order(5)).replace(": ", ":").replace(", ", ",").encode()
    load_orders(db, [(7101, [compact])])
    twice = b'{"id":999,' + compact[1:]
    with OrderWindowLoad(db, window="2026-11-02") as load:
        load.add_page(7101, [twice])
        now = datetime.now(UTC)
        load.store_listed(
            7101, None, complete=(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), now)
        )
        load.finish()
    assert q(db, "select order_id, deleted_at from taptouch.orders") == [(5, None)]
    assert q(db, "select order_id from taptouch.deletion_candidates") == []


def test_hostile_text_survives_byte_for_byte(db):
    texts = [
        "tab\there",
        "new\nline\r\n",
        "back\\slash \\N \\.",
        "quote ' \" `",
        "emoji ☕🥐 ünïcødé",
        "'; drop table taptouch.orders; --",
        "Robert'); DELETE FROM taptouch.stores;--",
        "\\x00 literal",
    ]
    orders = [
        f.order(
            100 + i,
            number=t,
            customer={"id": 5, "name": t, "email": t},
            items=[f.item(1, 1, "2.00", name=t, category=t)],
        )
        for i, t in enumerate(texts)
    ]
    load_orders(db, [(7101, orders)])
    got = q(db, "select number, customer_name, raw->>'number' from taptouch.orders order by order_id")
    assert got == [(t, t, t) for t in texts]
    assert [r[0] for r in q(db, "select name from taptouch.order_items order by order_id")] == texts
    assert q(db, "select count(*) from taptouch.stores")[0][0] == 2


def test_exact_money(db):
    orders = [f.order(200 + i, items=[f.item(1, 1, "0.10")]) for i in range(1000)]
    load_orders(db, [(7101, orders)], batch_size=128)
    assert q(db, "select sum(total), sum(subtotal) from taptouch.orders") == [(D("100.00"), D("100.00"))]


def test_failed_store_discarded_others_commit(db):
    with OrderWindowLoad(db, window="2026-11-02") as load:
        load.add_page(7101, [f.order(300)])
        load.add_page(7102, [f.order(301, store_id=7102)])
        load.discard_store(7102)
        counts = load.finish()
    assert counts.inserted == 1
    assert q(db, "select order_id from taptouch.orders") == [(300,)]


def test_staging_and_merge_are_two_steps_with_no_lock_held_between_them(db, migrated_db):
    first, newer = "2026-11-02T12:40:00+11:00", "2026-11-02T13:40:00+11:00"
    with OrderWindowLoad(db, window="2026-11-02") as load:
        load.add_page(7101, [f.order(800, updated_at=first), f.order(800, updated_at=newer)])
        load.close_staging()
        with conn_for(migrated_db) as other:  # between the steps: the merge lock is free, nothing is visible
            assert other.execute("select pg_try_advisory_lock(%s)", (loader._LOCK_ORDERS,)).fetchone() == (True,)
            other.execute("select pg_advisory_unlock(%s)", (loader._LOCK_ORDERS,))
            assert other.execute("select count(*) from taptouch.orders").fetchone() == (0,)
        with pytest.raises(RuntimeError, match="after close_staging"):
            load.add_page(7101, [f.order(801)])
        counts = load.finish()
    assert (counts.inserted, counts.duplicates) == (1, 1)
    assert q(db, "select order_id, updated_at = %s::timestamptz from taptouch.orders", newer) == [(800, True)]


def test_error_mid_window_rolls_back_everything(db):
    with pytest.raises(RuntimeError), OrderWindowLoad(db, window="2026-11-02", batch_size=1) as load:
        load.add_page(7101, [f.order(400), f.order(401)])
        raise RuntimeError("fetch failed")
    assert q(db, "select count(*) from taptouch.orders")[0][0] == 0
    assert q(db, "select count(*) from taptouch.sync_log where entity = 'orders'")[0][0] == 0


def test_unknown_store_is_a_clear_error(db):
    with (
        pytest.raises(loader.UnknownStoreError, match="stores' asset first"),
        OrderWindowLoad(db, window="2026-11-02") as load,
    ):
        load.add_page(9999, [f.order(500, store_id=9999)])


def test_connection_killed_mid_merge_leaves_tables_unchanged(db, migrated_db):
    load_orders(db, [(7101, [f.order(600, updated_at="2026-11-02T12:40:00+11:00")])])
    before = q(db, "select order_id, updated_at, total from taptouch.orders order by 1")
    newer = [f.order(600, updated_at="2026-11-02T13:40:00+11:00", items=[f.item(1, 1, "1.00")])] + [
        f.order(601 + i) for i in range(50)
    ]
    blocker = conn_for(migrated_db)
    blocker.execute("select pg_advisory_lock(%s)", (loader._LOCK_ORDERS,))  # the merge will wait here
    errors = []
    victim = conn_for(migrated_db)

    def run():
        try:
            load_orders(victim, [(7101, newer)])
        except psycopg.OperationalError as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    pid = victim.info.backend_pid
    for _ in range(100):  # wait until the loader is blocked on the lock, i.e. mid-merge
        if q(blocker, "select wait_event_type from pg_stat_activity where pid = %s", pid) == [("Lock",)]:
            break
        time.sleep(0.05)
    q(blocker, "select pg_terminate_backend(%s)", pid)
    t.join(10)
    blocker.execute("select pg_advisory_unlock(%s)", (loader._LOCK_ORDERS,))
    blocker.close()
    assert errors, "the killed load must fail"
    assert q(db, "select order_id, updated_at, total from taptouch.orders order by 1") == before
    counts = load_orders(db, [(7101, newer)])  # a rerun completes
    assert counts.updated == 1 and counts.inserted == 50
    assert q(db, "select count(*) from taptouch.order_items where order_id = 600")[0][0] == 1


def test_two_concurrent_loads_of_one_window(db, migrated_db):
    orders = [f.order(700 + i) for i in range(300)]
    results, errors = [], []

    def run():
        try:
            with conn_for(migrated_db) as c:
                results.append(load_orders(c, [(7101, orders)], batch_size=50))
        except Exception as exc:  # pragma: no cover - reported by the assert
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.inserted for r in results) == [0, 300]
    assert sorted(r.unchanged for r in results) == [0, 300]
    assert q(db, "select count(*), count(distinct order_id) from taptouch.orders") == [(300, 300)]
    assert q(db, "select count(*) from taptouch.order_items")[0][0] == 600


def test_stores_upsert_newest_wins(db):
    counts = load_stores(
        db,
        [
            f.store(7101, "Australia/Melbourne", name="Renamed", updated_at="2026-11-01T10:00:00+10:00"),
            f.store(7103, "Pacific/Auckland"),
            f.store(7104, "Mars/Olympus"),
        ],
    )
    assert (counts.inserted, counts.updated, counts.quarantined) == (1, 1, 1)
    assert q(db, "select name from taptouch.stores where store_id = 7101") == [("Renamed",)]
    old = load_stores(db, [f.store(7101, "Australia/Melbourne", name="Old", updated_at="2026-01-01T00:00:00+10:00")])
    assert old.unchanged == 1 and q(db, "select name from taptouch.stores where store_id = 7101") == [("Renamed",)]
    assert "IANA" in q(db, "select reason from taptouch.quarantine where entity = 'store'")[0][0]


def test_inventory_replaced_exactly_and_snapshot(db):
    day = date(2026, 11, 27)
    c1 = load_inventory(
        db, 7101, [f.inventory(1), f.inventory(2, on_hand="-3"), f.inventory(3, on_hand="0.25")], snapshot_date=day
    )
    assert c1.inserted == 3
    c2 = load_inventory(
        db,
        7101,
        [f.inventory(1, on_hand="11"), f.inventory(3, on_hand="0.25"), dict(f.inventory(4), on_hand="lots")],
        snapshot_date=day,
    )
    assert (c2.updated, c2.unchanged, c2.deleted, c2.quarantined) == (1, 1, 1, 1)
    assert q(db, "select product_id, on_hand from taptouch.inventory_levels order by 1") == [(1, D(11)), (3, D("0.25"))]
    assert q(
        db, "select product_id, on_hand from taptouch.inventory_snapshots where snapshot_date = %s order by 1", day
    ) == [(1, D(11)), (3, D("0.25"))]
    load_inventory(db, 7101, [f.inventory(1, on_hand="10")], snapshot_date=date(2026, 11, 28))
    assert q(db, "select count(*) from taptouch.inventory_snapshots")[0][0] == 3


def test_unchanged_records_skipped_by_digest_and_same_version_edits_still_win(db):
    orders = [f.order(800 + i) for i in range(20)]
    load_orders(db, [(7101, orders)])
    assert q(db, "select count(*) from taptouch.orders where raw_hash is null")[0][0] == 0
    # the same page twice (a page-boundary duplicate) and a same-timestamp correction of one order
    fixed = dict(orders[3], number="corrected")
    counts = load_orders(db, [(7101, orders), (7101, orders[:2] + [fixed])])
    assert (counts.inserted, counts.updated, counts.unchanged, counts.duplicates) == (0, 1, 19, 3)
    assert q(db, "select number from taptouch.orders where order_id = 803") == [("corrected",)]
    assert q(db, "select count(*) from taptouch.order_items where order_id = 803")[0][0] == 2


def test_lone_surrogates_are_quarantined_not_fatal(db):
    bad_value = f.order(900, number="A\ud800B")
    bad_key = dict(f.order(901), **{"x_\udfff": "y"})
    counts = load_orders(db, [(7101, [f.order(902), bad_value, bad_key])])
    assert (counts.inserted, counts.quarantined) == (1, 2)
    reasons = dict(q(db, "select record_key, reason from taptouch.quarantine where entity = 'order'"))
    assert "surrogate" in reasons["900"] and "surrogate" in reasons["901"]
    assert q(
        db, "select raw is null, raw_text like '%\\\\ud800%' from taptouch.quarantine where record_key = '900'"
    ) == [(True, True)]
    stores = load_stores(db, [f.store(7105, "Australia/Perth", name="Caf\udce9")])
    assert stores.quarantined == 1


def test_preformatted_copy_lines_land_what_psycopg_formats(db):
    """Records with no byte COPY's text format escapes are staged as pre-formatted lines; the same
    records pretty-printed (newlines: psycopg formats their rows) must land exactly the same rows."""
    import json

    from pipelines.warehouse import records

    def variants():
        yield f.order(1)
        yield f.order(2, status="open", customer={"id": 9, "name": "Mārama ☕🥐"}, number="N")
        yield f.order(
            3,
            items=[
                f.item(1, D("0.375"), "12.40", name="Cheese (kg)"),
                f.item(2, 3, "1.10", [{"id": 5, "name": "x", "quantity": 2, "price": "0.25"}]),
            ],
            discount="0.50",
            surcharge="0.15",
            rounding="-0.02",
            created_at="2026-11-02T12:31:05.1234567Z",
            updated_at="2026-11-02T12:31:05.9999995-03:30",
        )
        o = f.order(4, refunds=("3.00",), redeem_points=D("12.5"), tips=D("1.00"))
        o["refunds"][0].update(reason=None, refunded_at="2026-11-02T13:00:00Z")
        o.update(source=None, fulfillment_type=None, currency=None, cashier=None)
        yield o
        o = f.order(5, items=[])
        o["items"][:] = []
        yield o

    compact = [records.as_bytes(o) for o in variants()]
    assert not any(b in r for r in compact for b in (b"\\", b"\n", b"\r", b"\t"))
    pretty = [json.dumps(json.loads(r.decode()), indent=1).encode() for r in compact]  # same values, newlines
    assert all(jsonutil.loads(a) == jsonutil.loads(b) for a, b in zip(compact, pretty, strict=True))
    tables = {
        "orders": "order_id",
        "order_items": "order_id, item_id",
        "order_payments": "order_id, payment_id",
        "order_refunds": "order_id, refund_id",
    }

    def snapshot():
        out = {}
        for t, key in tables.items():
            cols = [
                c
                for (c,) in q(
                    db,
                    "select column_name from information_schema.columns where table_schema ="
                    " 'taptouch' and table_name = %s and column_name not in ('loaded_at', 'raw_hash')"
                    " order by ordinal_position",
                    t,
                )
            ]
            out[t] = q(db, f"select {', '.join(cols)} from taptouch.{t} order by {key}")
        return out

    for recs in (compact, pretty):
        counts = load_orders(db, [(7101, recs)])
        assert (counts.inserted, counts.quarantined) == (5, 0)
        got = snapshot()
        if recs is compact:
            first = got
            assert len(got["orders"]) == 5 and len(got["order_refunds"]) == 1
        db.execute("truncate taptouch.orders, taptouch.order_items, taptouch.order_payments, taptouch.order_refunds")
    assert got == first
    # and the values are the boundary's, exactly (scale of every numeric included)
    r = records.order_rows(compact[2], "Australia/Melbourne", 7101)
    row = next(x for x in first["order_items"] if x[:2] == (3, 1))
    assert (
        [str(v) for v in row[6:11]] == [str(v) for v in r.items[0][6:11]] == ["0.375", "12.40", "0.00", "0.42", "4.65"]
    )


def _refusing(monkeypatch, order_id):
    """The record boundary passes order ``order_id`` with a tax PostgreSQL refuses (beyond numeric(12,2))."""
    real = loader.records.order_rows
    tax = loader.records.ORDER_COLS.index("tax")

    def leaky(raw, *args):
        r = real(raw, *args)
        if r.order_id == order_id:
            r.order = r.order[:tax] + (D("123456789012.00"),) + r.order[tax + 1 :]
        return r

    monkeypatch.setattr(loader.records, "order_rows", leaky)


def test_batches_copied_while_the_next_is_decoded_keep_every_count_and_row_exact(db, monkeypatch):
    """Batches of 3 orders: each batch's COPY runs while the next pages are decoded, and those
    pages' unchanged-digest look-ups go to a second connection. A value PostgreSQL refuses in a
    batch copied behind costs only its own order, counted and quarantined with the reason."""
    orders = [f.order(900 + i) for i in range(20)]
    _refusing(monkeypatch, 907)
    pages = [(7101, orders[i : i + 2]) for i in range(0, 20, 2)]
    with OrderWindowLoad(db, window="2026-11-02", batch_size=3) as load:
        for store_id, page in pages:
            load.add_page(store_id, page)
        first = load.finish()
    assert (first.inserted, first.quarantined, load.per_store[7101].quarantined) == (19, 1, 1)
    assert q(db, "select count(*), count(*) filter (where order_id = 907) from taptouch.orders") == [(19, 0)]
    assert q(db, "select record_key, reason like 'PostgreSQL refused%%' from taptouch.quarantine") == [("907", True)]
    monkeypatch.undo()
    # the same pages again, one new version among them: unchanged orders are recognised by digest
    # whether their page was looked up beside a COPY (second connection) or not; 907 now loads
    pages[4] = (7101, [orders[8], dict(orders[9], number="edited", updated_at="2026-11-02T14:00:00+11:00")])
    with OrderWindowLoad(db, window="2026-11-02", batch_size=1) as load:
        for store_id, page in pages:
            load.add_page(store_id, page)
        assert load._side is not None  # a look-up did run while a COPY held the connection
        load.close_staging()
        assert load._side is None  # closed with the staging
        again = load.finish()
    assert (again.inserted, again.updated, again.unchanged, again.quarantined) == (1, 1, 18, 0)
    assert q(db, "select number from taptouch.orders where order_id = 909") == [("edited",)]
    assert q(db, "select count(*) from taptouch.order_items")[0][0] == 40
    assert q(db, "select count(*) from taptouch.quarantine where resolved_at is null")[0][0] == 0


def test_a_copy_failing_behind_the_decoding_fails_the_window_and_commits_nothing(db, monkeypatch):
    """A lost connection (not a refused value) in a batch COPYed on its thread is the window's error:
    raised at the load's next step, everything rolled back."""
    calls = []
    real = loader.copy_parts

    def failing(cur, table, cols, parts):
        calls.append(table)
        if len(calls) > 4:  # within the second batch (up to four tables each: orders, items, payments, refunds)
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        real(cur, table, cols, parts)

    monkeypatch.setattr(loader, "copy_parts", failing)
    with pytest.raises(psycopg.OperationalError, match="closed the connection"):
        load_orders(db, [(7101, [f.order(950 + i)]) for i in range(6)], batch_size=2)
    assert q(db, "select count(*) from taptouch.orders")[0][0] == 0
    assert q(db, "select count(*) from taptouch.sync_log where entity = 'orders'")[0][0] == 0
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_repeatable_read_load_reads_its_own_snapshot_not_a_second_connection(db):
    """At repeatable read the load's snapshot is not what a second connection sees: its look-ups
    beside a COPY wait for it and run in the load's transaction; the counts are the same."""
    orders = [f.order(970 + i) for i in range(6)]
    load_orders(db, [(7101, orders[:3])])
    db.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        with OrderWindowLoad(db, window="2026-11-02", batch_size=1) as load:
            for i in range(0, 6, 2):
                load.add_page(7101, orders[i : i + 2])
            assert load._side is None
            assert load.conn.execute("show transaction_isolation").fetchone() == ("repeatable read",)
            counts = load.finish()
    finally:
        db.isolation_level = None
    assert (counts.inserted, counts.unchanged) == (3, 3)


def test_a_complete_listing_that_returned_nothing_still_judges_its_range(db):
    """A store's complete listing of a window returned no record (its orders there were deleted at
    the source, or an edit moved them to a later day): the orders the warehouse holds in that
    range become deletion candidates, as when a listing returned others, and are not deleted
    (a bounded listing never confirms). Before, a store with no page was never judged: its proof
    dropped the order while nothing excused it, and ``orders_proven`` reported it as ``extra``
    on every run until the later day loaded."""
    from datetime import UTC, datetime

    from pipelines.warehouse import proofs

    load_orders(db, [(7101, [f.order(5)])])  # 2026-11-02T01:31:05Z
    listed = (datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), datetime.now(UTC))
    with OrderWindowLoad(db, window="2026-11-02") as load:
        load.store_listed(7101, None, complete=listed)  # not one page
        load.store_listed(7102, None)  # an incomplete listing judges nothing
        load.finish()
    assert q(db, "select order_id, store_id from taptouch.deletion_candidates") == [(5, 7101)]
    assert q(db, "select order_id, deleted_at from taptouch.orders") == [(5, None)]
    assert proofs.window_problems(db, ["2026-11-02"], [7101]) == []


def test_a_quarantined_order_served_valid_again_in_the_held_bytes_is_resolved(db):
    """The API served an order malformed once (quarantined), then valid again in exactly the bytes
    the warehouse holds: recognised as unchanged, it is never staged, and its quarantine row was
    never resolved (the check no_quarantined_records warned on every run, and orders_proven excused
    the order for good)."""
    good = f.order(7)
    load_orders(db, [(7101, [good])])
    bad = dict(good, total=good["total"] + 1)  # the same id and version, its arithmetic broken
    assert load_orders(db, [(7101, [bad])]).quarantined == 1
    assert load_orders(db, [(7101, [good])]).unchanged == 1
    assert q(db, "select resolved_at is not null from taptouch.quarantine where record_key = '7'") == [(True,)]


def test_resolving_held_orders_twice_in_one_transaction(db):
    """resolve_held_orders staged its ids in a temporary table kept to the commit: a second call in
    the same transaction failed (the table existed). Each call now drops it."""
    from pipelines.warehouse.loader import resolve_held_orders

    for oid in (7, 8):
        good = f.order(oid)
        load_orders(db, [(7101, [good])])
        load_orders(db, [(7101, [dict(good, total=good["total"] + 1)])])  # quarantined
    with db.transaction(), db.cursor() as cur:
        assert resolve_held_orders(cur, [7]) == 1
        assert resolve_held_orders(cur, [8]) == 1
    assert q(db, "select record_key, resolved_at is not null from taptouch.quarantine order by 1") == [
        ("7", True),
        ("8", True),
    ]


def test_a_listing_that_cannot_judge_does_not_prove_its_window_either(db):
    """A complete listing holding a record whose order id cannot be read judges no deletion (any
    held order might be that record); it proved its window all the same, without the orders it did
    not return, and orders_proven reported an order an edit had moved to a later day as extra. Like
    the reconciliation's, such a listing now records its failure and the proof before it stays."""
    from datetime import UTC, datetime

    from pipelines.warehouse import proofs

    listed = (datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), datetime.now(UTC))
    with OrderWindowLoad(db, window="2026-11-02") as load:
        load.add_page(7101, [f.order(5)])  # 2026-11-02T01:31:05Z
        load.store_listed(7101, None, complete=listed)
        load.finish()
    garbled = dict(f.order(6, updated_at="2026-11-02T12:40:00+11:00"), id="not-an-id")
    with OrderWindowLoad(db, window="2026-11-02") as load:  # order 5 moved to a later day meanwhile
        load.add_page(7101, [garbled])
        load.store_listed(7101, None, complete=listed)
        load.finish()
    assert q(db, "select count(*) from taptouch.quarantine where resolved_at is null") == [(1,)]
    assert q(db, "select order_id from taptouch.deletion_candidates") == []  # nothing judged
    assert proofs.window_problems(db, ["2026-11-02"], [7101]) == []  # the first listing's proof stands
    failure = "select failure from taptouch.listing_proofs where store_id = 7101 and failure is not null"
    assert [r[0] for r in q(db, failure)] == ["the listing held a record whose order id cannot be read (quarantined)"]


def test_an_incomplete_full_refresh_does_not_stamp_full_loaded_at(db):
    """sync_marks.full_loaded_at is when a complete listing of the window last loaded: a full
    refresh whose listing may have missed a record leaves it as it was."""
    from datetime import UTC, datetime

    listed = (datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), datetime.now(UTC))
    with OrderWindowLoad(db, window="2026-11-02") as load:  # an incremental run: a mark exists
        load.add_page(7101, [f.order(5)])
        load.store_listed(7101, datetime(2026, 11, 2, 1, 31, 5, tzinfo=UTC), complete=listed)
        load.finish()
    with OrderWindowLoad(db, window="2026-11-02", full=True) as load:
        load.add_page(7101, [f.order(5)])
        load.store_listed(7101, None)  # the full refresh's listing may have missed a record
        load.finish()
    assert q(db, "select full_loaded_at from taptouch.sync_marks where store_id = 7101") == [(None,)]
    with OrderWindowLoad(db, window="2026-11-02", full=True) as load:
        load.add_page(7101, [f.order(5)])
        load.store_listed(7101, None, complete=listed)
        load.finish()
    assert q(db, "select full_loaded_at is not null from taptouch.sync_marks where store_id = 7101") == [(True,)]


def test_a_newer_invalid_version_listed_in_the_same_load_stays_unresolved(db):
    """One listing reads the held version of order 7 (recognised as unchanged), then, on a later
    page, an edit of it that breaks a rule: that version's quarantine row stays open (resolving
    what was skipped must not close what the same load refused)."""
    good = f.order(7)
    load_orders(db, [(7101, [good])])
    newer_bad = dict(f.order(7, updated_at="2026-11-02T20:00:00+11:00"), total=good["total"] + 1)
    assert load_orders(db, [(7101, [good]), (7101, [newer_bad])]).quarantined == 1
    assert q(db, "select resolved_at is null from taptouch.quarantine where record_key = '7'") == [(True,)]


def test_an_older_valid_version_staged_with_a_newer_refused_one_leaves_its_row_open(db):
    """One listing serves order 7's older valid version (new to the warehouse, so staged) and, on a
    later page, a newer version that breaks a rule: the older one is merged, and the newer one's
    quarantine row stays open (before, any staged valid version resolved the record's rows)."""
    good = f.order(7)
    newer_bad = dict(f.order(7, updated_at="2026-11-02T20:00:00+11:00"), total=good["total"] + 1)
    assert load_orders(db, [(7101, [good]), (7101, [newer_bad])]).quarantined == 1
    assert q(db, "select resolved_at is null from taptouch.quarantine where record_key = '7'") == [(True,)]
    fixed = f.order(7, updated_at="2026-11-02T20:00:00+11:00")  # the source fixes the newer version
    assert load_orders(db, [(7101, [fixed])]).updated == 1
    assert q(db, "select resolved_at is not null from taptouch.quarantine where record_key = '7'") == [(True,)]


def test_a_replica_behind_serving_an_older_version_resolves_nothing_newer(db):
    """A run quarantines order 7's newer version; the next run's listing comes from a replica behind
    and serves an older valid version (the warehouse lacks it: staged, merged by newest-wins, and
    still the newest valid one it has): the newer version's row stays open, since the warehouse does
    not hold a valid version at least as new. A row of a version at or before the one held closes."""
    older = f.order(7, updated_at="2026-11-02T08:00:00+11:00")
    newer_bad = dict(f.order(7, updated_at="2026-11-02T20:00:00+11:00"), total=older["total"] + 1)
    assert load_orders(db, [(7101, [newer_bad])]).quarantined == 1
    assert load_orders(db, [(7101, [older])]).inserted == 1
    assert q(db, "select resolved_at is null from taptouch.quarantine where record_key = '7'") == [(True,)]
    stale_bad = dict(f.order(7, updated_at="2026-11-02T07:00:00+11:00"), total=older["total"] + 1)
    assert load_orders(db, [(7101, [stale_bad])]).quarantined == 1  # a still older broken version
    assert load_orders(db, [(7101, [older])]).unchanged == 1
    rows = "select updated_at_exact is not null, resolved_at is null from taptouch.quarantine where record_key = '7'"
    assert sorted(q(db, rows + " order by quarantine_id")) == [(True, False), (True, True)]
