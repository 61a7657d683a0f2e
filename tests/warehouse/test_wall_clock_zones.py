"""A store's wall clock in SQL (local hours, business-day bounds) is Python's, also for the IANA zone
names PostgreSQL reads as fixed-offset abbreviations (``CET``: +01:00 all summer). Migration 0026,
``taptouch.pg_zone``; docs/analytics.md."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipelines.warehouse import aggregates
from pipelines.warehouse.migrations import migrate
from pipelines.warehouse.views import apply_views
from tests.support import factories as f
from tests.warehouse.test_loader import conn_for, load_orders, load_stores, q

INSTANTS = [datetime(2026, 1, 15, 22, 30, tzinfo=UTC), datetime(2026, 7, 1, 22, 30, tzinfo=UTC)]


def test_the_sql_wall_clock_of_every_zone_named_like_an_abbreviation_is_pythons(migrated_db):
    """Every zone name the server also knows as an abbreviation (CET, MET, EET, WET, EST, GMT, ...)
    and a few plain ones: the wall-clock time SQL gives through taptouch.pg_zone is Python's, winter
    and summer. Without pg_zone, CET, MET, EET and WET are an hour off in summer."""
    with conn_for(migrated_db) as conn:
        shadowed = [
            r[0]
            for r in conn.execute(
                "select n.name from pg_timezone_names n"
                " join pg_timezone_abbrevs a on lower(a.abbrev) = lower(n.name) order by 1"
            )
        ]
        assert {"CET", "MET", "EET", "WET"} <= set(shadowed)
        wrong = []
        for name in shadowed + ["Europe/Paris", "Australia/Melbourne", "Pacific/Kiritimati", "America/St_Johns"]:
            try:
                zone = ZoneInfo(name)
            except ZoneInfoNotFoundError:
                continue
            for at in INSTANTS:
                sql_wall = conn.execute("select %s::timestamptz at time zone taptouch.pg_zone(%s)", (at, name))
                python_wall = at.astimezone(zone).replace(tzinfo=None)
                if (got := sql_wall.fetchone()[0]) != python_wall:
                    wrong.append((name, at, got, python_wall))
        assert wrong == []


def test_a_cet_store_sells_at_its_wall_clock_hour_in_summer(migrated_db):
    """2026-07-01T22:30Z is 00:30 on 2 July in CET (summer time, +02:00): business date 2 July (from
    Python), local hour 0 (from SQL: was 23), in the view and in the kept aggregates alike; the
    business day 2 July runs from 22:00Z the day before."""
    with conn_for(migrated_db) as db:
        load_stores(db, [f.store(7103, "CET", updated_at="2026-06-01T10:00:00+00:00")])
        load_orders(db, [(7103, [f.order(901, store_id=7103, created_at="2026-07-01T22:30:00Z")])], window="2026-07-01")
        apply_views(db)
        assert q(db, "select business_date from taptouch.orders where order_id = 901") == [(date(2026, 7, 2),)]
        assert q(db, "select business_date, local_hour from analytics.hourly_sales") == [(date(2026, 7, 2), 0)]
        assert q(db, "select local_hour from taptouch.sales_hours") == [(0,)]
        with db.transaction(), db.cursor() as cur:
            assert aggregates.mismatches(cur) == {}
        bounds = "select starts_at, ends_at from taptouch.business_day_bounds(7103, date '2026-07-02')"
        assert q(db, bounds) == [
            (datetime(2026, 7, 1, 22, tzinfo=UTC), datetime(2026, 7, 2, 22, tzinfo=UTC)),
        ]
        assert q(db, "select taptouch.business_date_at(7103, '2026-07-01T22:30:00Z')") == [(date(2026, 7, 2),)]


def test_migration_0026_repairs_the_hours_kept_before_it(migrated_db):
    """The hourly aggregates a warehouse kept before 0026 (a CET store's summer sales an hour early)
    are recomputed when it applies; another store's rows are left as they are."""
    with conn_for(migrated_db) as db:
        load_stores(db, [f.store(7101), f.store(7103, "CET", updated_at="2026-06-01T10:00:00+00:00")])
        load_orders(db, [(7103, [f.order(901, store_id=7103, created_at="2026-07-01T22:30:00Z")])], window="2026-07-01")
        load_orders(db, [(7101, [f.order(5)])])
        db.execute("update taptouch.sales_hours set local_hour = 23 where store_id = 7103")  # as kept before
        before = q(db, "select * from taptouch.sales_hours where store_id = 7101")
        db.execute("delete from taptouch_meta.schema_migrations where version = 26")
    assert migrate(migrated_db) == ["0026_wall_clock_zones.sql"]
    with conn_for(migrated_db) as db:
        assert q(db, "select local_hour from taptouch.sales_hours where store_id = 7103") == [(0,)]
        assert q(db, "select * from taptouch.sales_hours where store_id = 7101") == before
        with db.transaction(), db.cursor() as cur:
            assert aggregates.mismatches(cur) == {}


def test_migration_0026_waits_for_a_merge_in_flight(migrated_db):
    """0026 rewrites sales_hours under the orders merge lock, which every writer of the aggregates
    holds: applied while a load merges (every run applies pending migrations first), it waits for
    that merge to commit instead of writing its store-days beside the load's."""
    import threading

    from pipelines.warehouse.merge import ORDERS

    with conn_for(migrated_db) as db:
        db.execute("delete from taptouch_meta.schema_migrations where version = 26")
    applied: list[list[str]] = []
    with conn_for(migrated_db) as merging:
        merging.execute("begin")
        merging.execute("select pg_advisory_xact_lock(%s)", (ORDERS.lock_key,))  # a merge in flight
        worker = threading.Thread(target=lambda: applied.append(migrate(migrated_db)))
        worker.start()
        worker.join(2.0)
        assert worker.is_alive() and applied == []  # waiting for the merge
        merging.execute("commit")
    worker.join(30)
    assert applied == [["0026_wall_clock_zones.sql"]]
