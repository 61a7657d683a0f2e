"""Hostile records at the boundary, found by a hostile review (values a careless server sends).

Each test loads exact bytes into a real PostgreSQL next to a valid record and asserts the outcome:
the window commits, the record loads with the stated values or is quarantined with its reason,
and nothing older, unlisted or unidentified costs the warehouse a row. Cases already covered by
tests/records/test_boundary.py and tests/records/test_records_properties.py are not repeated here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import psycopg
import pytest

from pipelines.warehouse import records
from pipelines.warehouse.loader import OrderWindowLoad, load_inventory, load_stores
from tests.support import factories as f

D = Decimal
TZ = "Australia/Melbourne"
DAY = date(2026, 11, 27)


@pytest.fixture
def db(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, TZ), f.store(7102, "UTC")])
        yield conn


def q(conn, sql, *args):
    return conn.execute(sql, args or None).fetchall()


def order_bytes(order_id, **changes) -> bytes:
    return records.dumps(f.order(order_id, **changes)).encode()


def load(conn, raws, store_id=7101, window="2026-11-02"):
    with OrderWindowLoad(conn, window=window) as w:
        w.add_page(store_id, raws)
        return w.finish()


def inv(product_id, **kw) -> bytes:
    return records.dumps(f.inventory(product_id, **kw)).encode()


def levels(conn, store_id=7101):
    return q(conn, "select product_id, on_hand from taptouch.inventory_levels where store_id = %s order by 1", store_id)


# ---------------------------------------------------------------------------------------------
# found: a fraction of one or two digits followed by a +hh:mm offset was cut as if it had more than
# six digits ("12:31:05.5+11:00" was sent to PostgreSQL as "12:31:05.5+11:0+11:00"), so a valid
# order was refused by PostgreSQL and quarantined


@pytest.mark.parametrize(
    "created,updated,created_utc,updated_utc,updated_exact",
    [
        (
            "2026-11-02T12:31:05.5+11:00",
            "2026-11-02T12:33:40.25+11:00",
            datetime(2026, 11, 2, 1, 31, 5, 500000, tzinfo=UTC),
            datetime(2026, 11, 2, 1, 33, 40, 250000, tzinfo=UTC),
            D("1793583220.25"),
        ),
        (
            "2026-11-02T12:31:05.5+05:45",
            "2026-11-02T12:33:40.75-03:30",
            datetime(2026, 11, 2, 6, 46, 5, 500000, tzinfo=UTC),
            datetime(2026, 11, 2, 16, 3, 40, 750000, tzinfo=UTC),
            D("1793635420.75"),
        ),
        (
            "2026-11-02T12:31:05.50+1100",
            "2026-11-02T12:33:40.1+0000",
            datetime(2026, 11, 2, 1, 31, 5, 500000, tzinfo=UTC),
            datetime(2026, 11, 2, 12, 33, 40, 100000, tzinfo=UTC),
            D("1793622820.1"),
        ),
    ],
)
def test_short_fractions_with_an_offset_load_exactly(db, created, updated, created_utc, updated_utc, updated_exact):
    raw = order_bytes(1, created_at=created, updated_at=updated)  # paid_at and completed_at = updated_at
    counts = load(db, [raw, order_bytes(2)])
    assert (counts.inserted, counts.quarantined) == (2, 0)
    assert q(
        db,
        "select created_at, updated_at, completed_at, updated_at_exact, raw = %s::jsonb"
        " from taptouch.orders where order_id = 1",
        raw.decode(),
    ) == [(created_utc, updated_utc, updated_utc, updated_exact, True)]
    assert q(db, "select paid_at from taptouch.order_payments where order_id = 1") == [(updated_utc,)]


# ---------------------------------------------------------------------------------------------
# found: inventory deleted products on the strength of a listing holding a record whose product
# could not be identified (product_id "2", 3.0, a record that is not an object...): that record may
# be any product, so the listing is not well-formed enough to say what is no longer stocked


@pytest.mark.parametrize(
    "bad,key",
    [
        (inv(2).replace(b'"product_id":2,', b'"product_id":"2",'), "2"),
        (inv(3).replace(b'"product_id":3,', b'"product_id":3.0,'), "3.0"),
        (inv(3).replace(b'"product_id":3,', b'"product_id":3E0,'), "3"),
        (inv(2).replace(b'"product_id":2,', b""), None),
        (b'"product 2"', None),
        (b'[{"product_id":2}]', None),
    ],
)
def test_unidentified_malformed_inventory_record_delists_nothing(db, bad, key):
    load_inventory(db, 7101, [inv(1), inv(2), inv(3)], snapshot_date=DAY)
    counts = load_inventory(db, 7101, [inv(1, on_hand="4"), bad], snapshot_date=DAY)
    assert (counts.updated, counts.quarantined, counts.deleted) == (1, 1, 0)
    assert levels(db) == [(1, D(4)), (2, D("12.5")), (3, D("12.5"))]
    assert q(db, "select product_id, on_hand from taptouch.inventory_snapshots order by 1") == [
        (1, D(4)),
        (2, D("12.5")),
        (3, D("12.5")),
    ]
    assert q(db, "select record_key from taptouch.quarantine where entity = 'inventory'") == [(key,)]
    # the next well-formed listing delists as usual (one of three: an ordinary listing, see
    # tests/warehouse/test_inventory_guard.py for one that would delist more than half)
    counts = load_inventory(db, 7101, [inv(1, on_hand="4"), inv(2)], snapshot_date=DAY)
    assert (counts.deleted, levels(db)) == (1, [(1, D(4)), (2, D("12.5"))])


def test_identified_malformed_inventory_record_keeps_only_its_product(db):
    load_inventory(db, 7101, [inv(1), inv(2), inv(3)], snapshot_date=DAY)
    counts = load_inventory(
        db, 7101, [inv(1), inv(2).replace(b'"on_hand":12.5', b'"on_hand":"12.5"')], snapshot_date=DAY
    )
    assert (counts.quarantined, counts.deleted) == (1, 1)
    assert levels(db) == [(1, D("12.5")), (2, D("12.5"))]  # 2 listed (unreadable) stays, 3 unlisted goes


def test_inventory_row_refused_by_postgresql_keeps_its_level(db, monkeypatch):
    # should a value pass the boundary and PostgreSQL still refuse it, that product is listed, just
    # unloadable: it is quarantined and keeps its previous level instead of being delisted
    load_inventory(db, 7101, [inv(1), inv(2)], snapshot_date=DAY)
    real = records.inventory_row

    def leaky(record, store_id):
        row, key, text = real(record, store_id)
        if row[1] == 2:
            row = row[:8] + (D("123456789012.00"),) + row[9:]  # beyond numeric(12,2): PostgreSQL refuses
        return row, key, text

    monkeypatch.setattr(records, "inventory_row", leaky)
    counts = load_inventory(db, 7101, [inv(1, on_hand="3"), inv(2, on_hand="9")], snapshot_date=DAY)
    assert (counts.updated, counts.quarantined, counts.deleted) == (1, 1, 0)
    assert levels(db) == [(1, D(3)), (2, D("12.5"))]
    assert q(db, "select record_key, reason like 'PostgreSQL refused%%' from taptouch.quarantine") == [("2", True)]


# ---------------------------------------------------------------------------------------------
# found: an order's exact bytes listed under another store were skipped as "unchanged" (the digest
# matched the warehouse's row) instead of being quarantined for their store_id


def test_same_bytes_listed_under_another_store_are_quarantined(db):
    raw = order_bytes(5)  # store_id 7101
    load(db, [raw])
    counts = load(db, [raw, order_bytes(6, store_id=7102)], store_id=7102)
    assert (counts.inserted, counts.unchanged, counts.quarantined) == (1, 0, 1)
    assert q(db, "select record_key, store_id, reason from taptouch.quarantine") == [
        ("5", 7102, "store_id 7101 differs from the store it was listed under (7102)")
    ]
    assert q(db, "select order_id, store_id from taptouch.orders order by 1") == [(5, 7101), (6, 7102)]


# ---------------------------------------------------------------------------------------------
# found: the same version sent again with its keys in another order (or other whitespace) was
# rewritten as an update; it is the same JSON, so nothing changes. A different number spelling of
# the same version is different text, and raw follows it.


def test_same_version_in_another_key_order_changes_nothing(db):
    rec = f.order(7)
    raw = records.dumps(rec).encode()
    reordered = records.dumps(dict(reversed(list(rec.items())))).encode().replace(b",", b", ")
    assert load(db, [raw]).inserted == 1
    before = q(db, "select loaded_at, raw::text from taptouch.orders")
    counts = load(db, [reordered])
    assert (counts.updated, counts.unchanged) == (0, 1)
    assert q(db, "select loaded_at, raw::text from taptouch.orders") == before
    respelled = raw.replace(b'"tips":0.00', b'"tips":0.0', 1)
    assert load(db, [respelled]).updated == 1
    assert q(db, "select raw->>'tips', tips from taptouch.orders") == [("0.0", D("0.00"))]


# ---------------------------------------------------------------------------------------------
# already right (not covered elsewhere): odd spellings load with exactly these values ...


def _with(order_id, old: bytes, new: bytes) -> bytes:
    raw = order_bytes(order_id)
    assert old in raw
    return raw.replace(old, new, 1)


@pytest.mark.parametrize(
    "old,new,sql,expected",
    [
        (b'"tips":0.00', b'"tips":-0', "tips", D("0.00")),
        (b'"tips":0.00', b'"tips":1E+2', "tips", D("100.00")),
        (b'"tips":0.00', b'"tips":1e2', "tips", D("100.00")),
        (b'"tips":0.00', b'"tips":12.340', "tips", D("12.34")),
        (b'"tips":0.00', b'"tips":-9999999999.99', "tips", D("-9999999999.99")),
        (b'"redeem_points":0', b'"redeem_points":1E+2', "redeem_points", D(100)),
        (
            b'"created_at":"2026-11-02T12:31:05+11:00"',
            b'"created_at":"2026-11-02t01:31:05z"',
            "created_at",
            datetime(2026, 11, 2, 1, 31, 5, tzinfo=UTC),
        ),
        (
            b'"created_at":"2026-11-02T12:31:05+11:00"',
            b'"created_at":"2026-11-02 12:31:05+11"',
            "created_at",
            datetime(2026, 11, 2, 1, 31, 5, tzinfo=UTC),
        ),
        (
            b'"created_at":"2026-11-02T12:31:05+11:00"',
            b'"created_at":"1969-07-20T20:17:40.123456789Z"',
            "created_at",
            datetime(1969, 7, 20, 20, 17, 40, 123456, tzinfo=UTC),
        ),
        (
            b'"number":"A-9"',
            '"number":"\u200f\u200b\u2028\x85 \\\\N \\\\. \\t|"'.encode(),
            "number",
            "\u200f\u200b\u2028\x85 \\N \\. \t|",
        ),
    ],
)
def test_odd_but_valid_values_load_exactly(db, old, new, sql, expected):
    raw = _with(9, old, new)
    counts = load(db, [raw])
    assert (counts.inserted, counts.quarantined) == (1, 0)
    assert q(db, f"select {sql}, raw = %s::jsonb from taptouch.orders where order_id = 9", raw.decode()) == [
        (expected, True)
    ]


# ... and hostile shapes are quarantined one record each, the window committing


@pytest.mark.parametrize(
    "raw,reason",
    [
        (_with(9, b'"tips":0.00', b'"tips":true'), "tips must be a JSON number, got bool"),
        (_with(9, b'"quantity":2,', b'"quantity":true,'), "items[0].quantity must be a JSON number, got bool"),
        (
            _with(9, b'"tips":0.00', b'"tips":12.345'),
            "tips has more than 2 decimals: 12.345 (money is exact to the cent)",
        ),
        (_with(9, b'"id":9,', b'"id":1e1,'), "id must be an integer id, got float"),
        (_with(9, b'"status":"completed"', b'"status":null'), "status is missing (null)"),
        (_with(9, b'"customer":null', b'"customer":[]'), "customer must be an object, got array"),
        (
            _with(9, b'"store_id":7101', b'"store_id":7102'),
            "store_id 7102 differs from the store it was listed under (7101)",
        ),
        (
            order_bytes(9, refunds=["1.00", "2.00"]).replace(b'"id":92,', b'"id":91,'),
            "refunds[1].id 91 appears twice in the order",
        ),
        (
            _with(9, b'"created_at":"2026-11-02T12:31:05+11:00"', b'"created_at":"2026-W45-1T12:31:05+11:00"'),
            "created_at is not an ISO 8601 timestamp with an offset: '2026-W45-1T12:31:05+11:00'",
        ),
        (b"[" + order_bytes(9) + b"]", "the order record is not a JSON object but a list"),
        (b'"' + order_bytes(9).replace(b'"', b'\\"') + b'"', "the order record is not a JSON object but a string"),
        (b"{}", "id is missing"),
        (
            records.dumps(
                dict(
                    f.order(9),
                    payments=[
                        {"id": 1, "method": "cash", "amount": D("36.60")},
                        {"id": 1, "method": "visa", "amount": D("0.00")},
                    ],
                )
            ).encode(),
            "payments[1].id 1 appears twice in the order",
        ),
    ],
)
def test_hostile_shapes_quarantine_one_record(db, raw, reason):
    counts = load(db, [order_bytes(1), raw])
    assert (counts.inserted, counts.quarantined) == (1, 1)
    assert q(db, "select reason, raw is not null or raw_text is not null from taptouch.quarantine") == [(reason, True)]
    assert q(db, "select order_id from taptouch.orders") == [(1,)]


def test_an_order_without_lines_and_a_subtotal_is_quarantined():
    """The contract's subtotal = Σ item totals holds with no items too (Σ = 0): an order of no
    lines and a subtotal of 10.00 is refused with the reason (before, it loaded, and its subtotal
    was in gross_sales but in no product_sales row, breaking analytics.md's identity)."""
    from decimal import Decimal as D

    from pipelines.warehouse import records
    from tests.support import factories as f

    o = f.order(2, items=[])
    o["subtotal"] = o["total"] = o["payments"][0]["amount"] = D("10.00")
    with pytest.raises(records.InvalidRecord, match=r"subtotal 10.00 != sum of item totals 0"):
        records.order_rows(records.as_bytes(o), "Australia/Melbourne")
    empty = f.order(3, items=[])  # no lines and a subtotal of 0: loads
    assert records.order_rows(records.as_bytes(empty), "Australia/Melbourne").order_id == 3
