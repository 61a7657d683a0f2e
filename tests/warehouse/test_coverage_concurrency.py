"""taptouch.business_day_coverage under concurrent writers (migration 0020).

Two transactions may refresh the same store-days at once: two orders windows of a store (their
business dates overlap), an orders run and a stores run that moves the store's zone, a
reconciliation's re-proofs. Each refresh deletes the store-days' rows and inserts them again; the
second one must wait for the first and then compute from what it committed, not fail on the rows
the first inserted (a unique violation) nor leave rows computed from an older snapshot."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from pipelines.warehouse.db import libpq_url

pytestmark = pytest.mark.postgres

STORE = 7101
FRESH = (
    "select store_id, business_date, day_starts_at, day_ends_at, windows, windows_proven, last_proven_at, proven_by"
    " from taptouch.business_day_coverage_of(%s, null, null)"
)
KEPT = (
    "select store_id, business_date, day_starts_at, day_ends_at, windows, windows_proven, last_proven_at, proven_by"
    " from taptouch.business_day_coverage where store_id = %s"
)


def prove(cur: psycopg.Cursor, window: str, *, run: str) -> None:
    start = datetime.fromisoformat(window).replace(tzinfo=UTC)
    cur.execute(
        'insert into taptouch.listing_proofs (store_id, "window", window_start, window_end, complete, covered_from,'
        " listed_at, settled_at, proved_by, account) values (%s, %s, %s, %s + interval '1 day', true, %s,"
        " %s + interval '3 days', %s + interval '3 days', %s, 'default')",
        (STORE, window, start, start, start, start, start, run),
    )


def test_two_writers_of_overlapping_store_days_wait_for_each_other(migrated_db):
    url = libpq_url(migrated_db)
    with psycopg.connect(url, autocommit=True) as setup:
        setup.execute(
            "insert into taptouch.stores (store_id, name, status, timezone, currency, updated_at, raw, account)"
            " values (%s, 'Surry Hills', 'active', 'Australia/Sydney', 'AUD', now(), '{}', 'default')",
            (STORE,),
        )
    first = psycopg.connect(url)
    second = psycopg.connect(url)
    errors: list[BaseException] = []
    try:
        with first.cursor() as cur:
            prove(cur, "2026-11-17", run="first")  # Sydney business dates 17 and 18 of November
        done = threading.Event()

        def write_second() -> None:
            try:
                with second.cursor() as cur:
                    prove(cur, "2026-11-18", run="second")  # dates 18 and 19: the 18th is shared
                second.commit()
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)
                second.rollback()
            finally:
                done.set()

        writer = threading.Thread(target=write_second)
        writer.start()
        assert not done.wait(1.0), "the second writer must wait for the first's store-days"
        first.commit()
        writer.join(30)
        assert errors == []
        with psycopg.connect(url) as check:
            kept = sorted(check.execute(KEPT, (STORE,)).fetchall())
            fresh = sorted(check.execute(FRESH, (STORE,)).fetchall())
        assert kept == fresh
        # the 18th has both windows, each proven by its own writer's listing
        day18 = next(row for row in kept if str(row[1]) == "2026-11-18")
        assert day18[4] == ["2026-11-17", "2026-11-18"] and day18[5] == ["2026-11-17", "2026-11-18"]
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("writer", ["stores load", "rebuild"])
def test_a_stores_writer_moving_a_zone_waits_for_an_orders_merge_of_the_store_without_a_deadlock(migrated_db, writer):
    # the stores merge's trigger locks the store's coverage, then its orders are re-dated under the
    # orders merge lock; an orders merge holds that lock, then its proof locks the coverage. Orders
    # lock first in both (a stores load takes it before its merge when a zone may change, and so
    # does taptouch-sync rebuild's stores pass), or one of the two runs failed with a deadlock. A
    # third session holds the proof row so that the orders merge is inside its merge lock, before
    # its proofs, when the stores writer starts
    from pipelines.warehouse import rebuild
    from pipelines.warehouse.loader import OrderWindowLoad, load_stores
    from tests.support import factories as f

    window, start, end = "2026-11-02", datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)

    def listed(conn, oid: int, created_at: str) -> OrderWindowLoad:
        load = OrderWindowLoad(conn, window=window, timezones={STORE: "Australia/Melbourne"})
        load.__enter__()
        load.add_page(STORE, [f.order(oid, created_at=created_at)])
        load.store_listed(STORE, None, complete=(start, end, datetime(2026, 11, 3, 1, tzinfo=UTC)))
        return load

    url = libpq_url(migrated_db)
    with (
        psycopg.connect(url, autocommit=True) as first,
        psycopg.connect(url) as holder,
        psycopg.connect(url, autocommit=True) as orders_conn,
        psycopg.connect(url, autocommit=True) as stores_conn,
    ):
        load_stores(first, [f.store(STORE, tz="Australia/Melbourne")])
        listed(first, 1, "2026-11-02T12:00:00+11:00").finish()
        if writer == "rebuild":  # the typed zone differs from raw's (a rule changed): rebuild re-derives it
            first.execute("update taptouch.stores set timezone = 'Australia/Perth' where store_id = %s", (STORE,))
            want = "Australia/Melbourne"

            def write() -> None:
                rebuild._stores(stores_conn, rebuild.RebuildReport(), 100)

        else:
            want = "Australia/Perth"

            def write() -> None:
                load_stores(stores_conn, [f.store(STORE, tz=want, updated_at="2026-10-03T10:15:00+10:00")])

        holder.execute(
            'select 1 from taptouch.listing_proofs where store_id = %s and "window" = %s for update', (STORE, window)
        )
        errors: dict[str, str] = {}
        load = listed(orders_conn, 2, "2026-11-02T13:00:00+11:00")

        def run(name, fn):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the test reports it
                errors[name] = repr(exc)

        orders = threading.Thread(target=run, args=("orders", load.finish))
        orders.start()
        time.sleep(1.0)  # the orders merge holds its lock, waiting for the proof row
        stores = threading.Thread(target=run, args=(writer, write))
        stores.start()
        time.sleep(1.0)  # the stores writer waits too (for the orders lock, or, before the fix, its coverage)
        holder.rollback()
        orders.join(60)
        stores.join(60)

        assert errors == {}
        assert first.execute("select timezone from taptouch.stores").fetchone() == (want,)
        assert first.execute("select count(*) from taptouch.orders").fetchone() == (2,)
