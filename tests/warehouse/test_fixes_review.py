"""Hostile review of the fixes of 2026-12-06 (evening), upgrades: holes left by them, each a test."""

from __future__ import annotations

from decimal import Decimal

import psycopg

from pipelines.warehouse.migrations import migrate
from tests.warehouse.test_upgrade_review import _migrations_up_to, _order, _store


def test_0015_upgrades_a_warehouse_holding_an_order_whose_negative_refunds_exceed_numeric_14_2(make_database):
    """The amended 0015 skips an order whose refunds sum to 1e12 or more, but refunds are money
    (signed: the boundary checks abs(Σ)), and a sum of -1e12 or less overflows numeric(14,2) just
    the same: the warehouse still stays at 0014 for good."""
    url = make_database()
    migrate(url, directory=_migrations_up_to(14))
    big = Decimal("-9999999999.99")
    with psycopg.connect(url) as conn:
        _store(conn)
        _order(conn, 1, status="refunded")
        for i in range(101):
            conn.execute(
                "insert into taptouch.order_refunds (order_id, refund_id, amount) values (1, %s, %s)", (i + 1, big)
            )
    migrate(url)
    with psycopg.connect(url) as conn:
        assert conn.execute("select max(version) from taptouch_meta.schema_migrations").fetchone()[0] >= 29


def test_the_day_bounds_views_stay_readable_in_any_readers_zone_with_an_order_of_year_9999(migrated_db):
    """daily_restatements' guard nulls an instant past 9999-12-30 23:59:59.999999 UTC (_MAX_INSTANT:
    "within a day of those limits where a reader's time zone cannot show it"), but the own day's
    bounds of business_days, load_coverage and order_changes are not guarded: an order the boundary
    accepts, in a store west of UTC, gives its day an end on 9999-12-31 UTC, which a reader whose
    session zone is east of UTC (TimeZone is the server's or the client's, never set by the
    warehouse) reads as year 10000: psycopg cannot read the view at all."""
    from pipelines.warehouse.loader import OrderWindowLoad, load_stores
    from pipelines.warehouse.views import apply_views
    from tests.support import factories as f

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(7105, "Pacific/Pago_Pago")])  # UTC-11
        apply_views(conn)
        o = f.order(1, store_id=7105, created_at="9999-12-30T12:00:00+00:00", updated_at="9999-12-30T12:00:00+00:00")
        with OrderWindowLoad(conn, window="9999-12-30") as w:
            w.add_page(7105, [o])
            counts = w.finish()
        assert counts.inserted == 1
        conn.execute("set timezone = 'Pacific/Auckland'")  # an analyst in Auckland (+13 in December)
        conn.execute("select * from taptouch.orders").fetchall()  # the boundary's promise: readable
        conn.execute("select * from analytics.daily_restatements").fetchall()  # the guard holds here
        for view in ("business_days", "load_coverage", "order_changes"):
            conn.execute(f"select * from analytics.{view}").fetchall()
