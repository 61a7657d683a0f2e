"""A hostile review of the analytics views against the warehouse contract (2026-12-06): the next
day's figure of analytics.daily_restatements after a deletion was undone, and analytics.order_changes
on lines listed in another order. Each test fails on the code before its fix."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest

from pipelines.warehouse import deletions
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from pipelines.warehouse.views import apply_views
from tests.support import factories as f

D = Decimal


@pytest.fixture
def db(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, "Australia/Melbourne"), f.store(7102, "Australia/Perth")])
        apply_views(conn)
        yield conn


def load(conn, pages, window="2026-11-02", **kw):
    with OrderWindowLoad(conn, window=window, **kw) as w:
        for store_id, page in pages:
            w.add_page(store_id, page)
        return w.finish()


def q(conn, sql, *args):
    with conn.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchall()


# ---------------------------------------------------------------------------------------------------
# analytics.order_changes: "what changed (status, total, items, refunds)" (warehouse.md, Additions)


def test_order_changes_reports_items_changed_when_only_the_line_order_changed(db):
    """The API lists the same order again, edited (updated_at moves, a tip field respelled), with the
    same lines in another array order: order_items (keyed by item_id) is unchanged line for line,
    so nothing about the items changed; the view says they did."""
    v1 = f.order(1, created_at="2026-11-02T12:00:00+11:00", updated_at="2026-11-02T12:00:00+11:00")
    load(db, [(7101, [v1])])
    lines_before = q(
        db,
        "select item_id, product_id, quantity, unit_price, discount, total, modifiers::text"
        " from taptouch.order_items where order_id = 1 order by item_id",
    )
    v2 = dict(v1, updated_at="2026-11-02T12:05:00+11:00", items=list(reversed(v1["items"])))
    load(db, [(7101, [v2])])
    lines_after = q(
        db,
        "select item_id, product_id, quantity, unit_price, discount, total, modifiers::text"
        " from taptouch.order_items where order_id = 1 order by item_id",
    )
    assert lines_after == lines_before  # the contract's tables: no line changed
    expected_items_changed = lines_after != lines_before
    [(changed,)] = q(db, "select items_changed from analytics.order_changes where previous_version is not null")
    assert changed == expected_items_changed


# ---------------------------------------------------------------------------------------------------
# analytics.daily_restatements: "a store-day's net sales as first loaded, at the end of the next day,
# and now" (warehouse.md, Additions); docs/analytics.md: "at the end of the next business day (each
# order in the newest version the warehouse had seen by then, ..., without the orders marked deleted
# by then)"


def test_daily_restatements_next_day_counts_an_order_that_was_deleted_then_but_restored_since(db, monkeypatch):
    """An order sold on day D, loaded on D, marked deleted on D+1 (so daily_store_sales showed no
    sale for D at the end of D+1), then listed again and restored days later. The next-day figure
    must be what the warehouse knew at the end of D+1: no sale. The view counts the order, because
    restoring clears deleted_at and nothing remembers the deletion."""
    mel = ZoneInfo("Australia/Melbourne")
    today = datetime.now(mel).date()
    day = today - timedelta(days=4)
    sold = datetime(day.year, day.month, day.day, 12, 0, tzinfo=mel)
    o = f.order(1, created_at=sold.isoformat(), updated_at=sold.isoformat())
    load(db, [(7101, [o])], window=day.isoformat())
    # the load happened on D (as an hourly run would have): the history says so
    db.execute("update taptouch.order_history set first_seen_at = %s where order_id = 1", (sold + timedelta(hours=1),))
    # two reconciliations on D+1 missed it, an hour apart: the second confirmed its deletion
    for at in (sold + timedelta(hours=23), sold + timedelta(days=1)):
        monkeypatch.setattr(deletions, "clock", lambda at=at: at)
        with db.transaction(), db.cursor() as cur:
            deletions.judge_listing(
                cur,
                7101,
                [],
                listed_from=sold - timedelta(days=1),
                listed_to=None,
                started_at=at,
                now=at,
                confirm_s=3600,
                mass_confirmed=True,  # the store's only order (the share guard would wait for an operator)
            )
    assert q(db, "select deleted_at is not null from taptouch.orders where order_id = 1") == [(True,)]
    assert q(db, "select count(*) from analytics.daily_store_sales where business_date = %s", day) == [(0,)]
    # days later the API lists it again: restored
    monkeypatch.undo()
    load(db, [(7101, [o])], window=day.isoformat())
    assert q(db, "select deleted_at from taptouch.orders where order_id = 1") == [(None,)]
    next_day_end = datetime(day.year, day.month, day.day, tzinfo=mel) + timedelta(days=2)
    deleted_then = sold + timedelta(days=1) < next_day_end
    expected = (0, D("0.00")) if deleted_then else (1, o["total"])
    got = q(
        db,
        "select next_day_orders, next_day_net, now_orders, now_net from analytics.daily_restatements"
        " where store_id = 7101 and business_date = %s",
        day,
    )
    assert got == [(*expected, 1, o["total"])]
