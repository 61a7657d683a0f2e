"""Quarantine rows across runs (a hostile review's findings): a row is closed only once the warehouse
holds a valid version at least as new as the refused one (across loads, overlapping runs, the held
bytes, inventory, stores, ``taptouch-sync rebuild``), and a record refused again is its open row
seen again, not a new row on every run."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import psycopg
import pytest

from pipelines.warehouse.loader import OrderWindowLoad, load_inventory, load_stores
from taptouch_resource import jsonutil
from tests.support import factories as f

D = Decimal
pytestmark = pytest.mark.postgres


def conn_for(url):
    return psycopg.connect(url, autocommit=True)


@pytest.fixture
def db(migrated_db):
    with conn_for(migrated_db) as conn:
        load_stores(conn, [f.store(7101, "Australia/Melbourne"), f.store(7102, "Australia/Perth")])
        yield conn


def load_orders(conn, pages, window="2026-11-02"):
    with OrderWindowLoad(conn, window=window) as load:
        for store_id, page in pages:
            load.add_page(store_id, page)
        return load.finish()


def open_rows(conn, entity, key):
    return conn.execute(
        "select count(*) from taptouch.quarantine where entity = %s and record_key = %s and resolved_at is null",
        (entity, key),
    ).fetchone()[0]


def held_version(conn, order_id):
    return conn.execute("select updated_at_exact from taptouch.orders where order_id = %s", (order_id,)).fetchone()[0]


V1 = "2026-11-02T12:40:00+11:00"
V2 = "2026-11-02T15:00:00+11:00"
V3 = "2026-11-02T20:00:00+11:00"


def broken(record):
    return dict(record, total=record["total"] + 1)  # its arithmetic broken: quarantined


def test_a_later_load_of_an_older_valid_version_leaves_the_newer_refused_one_open(db):
    """v1 loads; the edit v3 is refused (quarantined); a later load (a lagging replica, a backfill
    through one) serves v2, valid and older than v3: it is merged (newer than v1) and closed v3's
    row, although the warehouse holds v2 and v3 was never replaced."""
    load_orders(db, [(7101, [f.order(7, updated_at=V1)])])
    assert load_orders(db, [(7101, [broken(f.order(7, updated_at=V3))])]).quarantined == 1
    assert load_orders(db, [(7101, [f.order(7, updated_at=V2, status="open")])]).updated == 1
    assert held_version(db, 7) < load_version(V3)
    assert open_rows(db, "order", "7") == 1


def test_a_later_load_of_the_held_bytes_leaves_a_newer_refused_version_open(db):
    """The same through the unchanged path: a later listing serving the held version v1 again (in
    its exact bytes, never staged) closed the row of v3, a newer version it refused earlier."""
    good = f.order(7, updated_at=V1)
    load_orders(db, [(7101, [good])])
    assert load_orders(db, [(7101, [broken(f.order(7, updated_at=V3))])]).quarantined == 1
    assert load_orders(db, [(7101, [good])]).unchanged == 1
    assert open_rows(db, "order", "7") == 1


def test_an_overlapping_run_that_listed_before_the_edit_leaves_its_quarantine_open(migrated_db):
    """No lagging replica needed: run A lists v2 (the current version), then the order is edited
    into v3, which breaks a rule; run B lists v3, quarantines it and commits; run A merges v2 and
    closed v3's row. The warehouse holds v2; v3 is still what the API serves."""
    with conn_for(migrated_db) as a_conn, conn_for(migrated_db) as b_conn:
        load_stores(a_conn, [f.store(7101, "Australia/Melbourne")])
        load_orders(a_conn, [(7101, [f.order(7, updated_at=V1)])])
        with OrderWindowLoad(a_conn, window="2026-11-02") as a:
            a.add_page(7101, [f.order(7, updated_at=V2, status="open")])
            a.close_staging()
            assert load_orders(b_conn, [(7101, [broken(f.order(7, updated_at=V3))])]).quarantined == 1
            a.finish()
        assert held_version(a_conn, 7) < load_version(V3)
        assert open_rows(a_conn, "order", "7") == 1


def test_a_later_inventory_listing_of_an_older_level_leaves_the_newer_refused_one_open(db):
    """Inventory: the level at v1 is held; a listing serves v3 malformed (quarantined, the level
    kept); a later listing (a lagging replica) serves v1 again: it changes nothing (not newer) and
    closed v3's row."""
    day = date(2026, 11, 27)
    older = [f.inventory(p, updated_at="2026-11-27T08:00:00+11:00") for p in (600, 601)]
    load_inventory(db, 7101, older, snapshot_date=day)
    bad = dict(f.inventory(600, updated_at="2026-11-27T12:00:00+11:00"), on_hand="lots")
    assert load_inventory(db, 7101, [bad, older[1]], snapshot_date=day).quarantined == 1
    load_inventory(db, 7101, older, snapshot_date=day)
    assert open_rows(db, "inventory", "600") == 1


def test_a_stores_load_of_an_older_valid_version_leaves_the_newer_refused_one_open(db):
    """Stores alike: the store's edit is refused, then a listing serving the version held closes it."""
    bad = f.store(7101, "Not/A_Zone", updated_at="2026-10-03T10:15:00+10:00")
    assert load_stores(db, [bad]).quarantined == 1
    load_stores(db, [f.store(7101, "Australia/Melbourne")])
    assert open_rows(db, "store", "7101") == 1


def test_rebuild_does_not_close_a_newer_version_that_still_fails_with_an_older_one_that_passes(db, capsys):
    """taptouch-sync rebuild: two unresolved rows of order 9, v2 (passes now, after a parser fix)
    and v3 (still refused). It merges v2 and resolved every row of the order, v3's too: the
    warehouse holds v2 and v3's record is no longer quarantined."""
    from pipelines.warehouse import rebuild

    load_orders(db, [(7101, [f.order(9, updated_at=V1)])])
    from pipelines.warehouse.merge import Quarantine

    rows = Quarantine("order", "2026-11-02", None)  # as a load writes them: what an old rule refused
    for record in (f.order(9, updated_at=V2, status="open"), broken(f.order(9, updated_at=V3))):
        rows.add(jsonutil.dumps(record).encode(), "an old rule refused it", 7101)
    with db.cursor() as cur:
        rows.flush(cur)
    rebuild.rebuild(db)
    assert held_version(db, 9) == load_version(V2)
    assert open_rows(db, "order", "9") == 1


# ------------------------------------------------------------------------------------------------
# the same refused record, listed again by each run, added an open row each time


def test_an_inventory_record_refused_on_every_hourly_run_is_one_open_row(db):
    """A product whose record stays malformed is listed by every hourly inventory run: each run
    added another open row of the same bytes (24 a day per product until the source fixes it)."""
    day = date(2026, 11, 27)
    bad = dict(f.inventory(600), on_hand="lots")
    for _ in range(3):
        assert load_inventory(db, 7101, [bad, f.inventory(601)], snapshot_date=day).quarantined == 1
    assert open_rows(db, "inventory", "600") == 1


def test_an_order_refused_by_every_run_of_its_window_is_one_open_row(db):
    """A full reload of a window lists its malformed order again: another open row each run, and
    the check no_quarantined_records reports N quarantined for one record."""
    bad = broken(f.order(7))
    for _ in range(3):
        assert load_orders(db, [(7101, [bad])]).quarantined == 1
    assert open_rows(db, "order", "7") == 1


def load_version(instant: str) -> Decimal:
    from pipelines.warehouse import records

    return records.exact_instant(instant)
