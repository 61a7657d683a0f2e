"""Hostile review of the sales aggregates and analytics views (2026-12-07): each test failed on
the code before its fix. The random histories that found them: test_aggregates_model_review.py."""

from __future__ import annotations

from decimal import Decimal

import psycopg
import pytest

from pipelines.warehouse import aggregates
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from pipelines.warehouse.views import apply_views
from tests.support import factories as f

D = Decimal


@pytest.fixture
def db(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
        load_stores(conn, [f.store(7101, "Australia/Melbourne"), f.store(7102, "Australia/Perth")])
        yield conn


def load_orders(conn, pages, window="2026-11-02", **kw):
    with OrderWindowLoad(conn, window=window, **kw) as load:
        for store_id, page in pages:
            load.add_page(store_id, page)
        return load.finish()


def exact(conn) -> dict:
    with conn.transaction(), psycopg.ClientCursor(conn) as cur:
        return aggregates.mismatches(cur)


def test_same_version_listed_twice_the_last_seen_wins_also_when_it_is_the_version_held(db):
    """The contract (docs/reliability.md, bad input): the same id twice in one listing at the same
    version loads the last seen. When the last seen is exactly the version the warehouse holds, it
    was recognised as unchanged and never staged, so the earlier, other content won, and the
    analysts' figures took it."""
    version = "2026-11-02T12:40:00+11:00"
    held = f.order(50, updated_at=version, items=[f.item(1, 2, "5.50")])  # total 11.00
    first = f.order(50, updated_at=version, items=[f.item(1, 4, "5.50")])  # same version, 22.00
    load_orders(db, [(7101, [held])])
    load_orders(db, [(7101, [first, held])])  # the listing read `first`, then `held` (last seen)
    assert db.execute("select total from taptouch.orders where order_id = 50").fetchone() == (D("11.00"),)
    assert db.execute("select net_sales from analytics.daily_store_sales").fetchall() == [(D("11.00"),)]
    assert exact(db) == {}


def test_same_version_read_held_then_other_then_held_again_keeps_the_last_seen(db):
    """The held bytes, another content of the same version, the held bytes again (a page boundary
    read twice), in a complete listing: the last seen (the held content) stays, its proof is written."""
    from datetime import UTC, datetime

    version = "2026-11-02T12:40:00+11:00"
    held = f.order(51, updated_at=version, items=[f.item(1, 2, "5.50")])  # total 11.00
    other = f.order(51, updated_at=version, items=[f.item(1, 4, "5.50")])  # same version, 22.00
    load_orders(db, [(7101, [held])])
    with OrderWindowLoad(db, window="2026-11-02") as load:
        load.add_page(7101, [held, other])
        load.add_page(7101, [held])
        load.store_listed(
            7101,
            None,
            (datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), datetime.now(UTC)),
        )
        counts = load.finish()
    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 0, 1)
    assert db.execute("select total from taptouch.orders where order_id = 51").fetchone() == (D("11.00"),)
    assert db.execute("select net_sales from analytics.daily_store_sales").fetchall() == [(D("11.00"),)]
    assert db.execute("select count(*) from taptouch.listing_proof_orders").fetchone() == (1,)
    assert exact(db) == {}
