"""business_date is derived by one function and follows its store's time zone.

- every place that dates something (an order's business_date, an inventory snapshot's date, the
  re-derivation after a zone change) gives what :func:`records.business_date` gives, on hostile
  instants (DST gaps and folds, half-hour and 45-minute offsets, year edges, sub-microsecond text);
- a store whose zone is corrected re-dates its orders when the stores load accepts the change
  (regression: before, the dates never moved, even on a full refresh, because the order bytes
  were unchanged), ``daily_store_sales`` moves with them, and the orders path cannot put an order
  back on the old zone's date.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import date, timedelta

import psycopg
import pytest

from pipelines.sync import day_window, sync_stores
from pipelines.warehouse import records
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from pipelines.warehouse.views import apply_views
from taptouch_resource import TaptouchClient, jsonutil
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support import factories as f
from tests.support.windows import load_window

# (created_at text, zone, the local business date a person reads off a wall clock there)
HOSTILE = [
    # Sydney: DST ends 2026-04-05 03:00 -> 02:00 (the hour 02:00-03:00 happens twice)
    ("2026-04-04T13:30:00Z", "Australia/Sydney", date(2026, 4, 5)),  # 00:30 AEDT
    ("2026-04-04T12:59:59.999999Z", "Australia/Sydney", date(2026, 4, 4)),  # 23:59:59.999999 AEDT
    ("2026-04-04T13:00:00Z", "Australia/Sydney", date(2026, 4, 5)),  # midnight exactly
    ("2026-04-04T15:30:00Z", "Australia/Sydney", date(2026, 4, 5)),  # 02:30 first time (fold 0)
    ("2026-04-04T16:30:00Z", "Australia/Sydney", date(2026, 4, 5)),  # 02:30 second time (fold 1)
    # Sydney: DST starts 2026-10-04 02:00 -> 03:00 (no 02:xx that day)
    ("2026-10-03T13:59:59Z", "Australia/Sydney", date(2026, 10, 3)),  # 23:59:59 AEST
    ("2026-10-03T14:00:00Z", "Australia/Sydney", date(2026, 10, 4)),
    ("2026-10-03T15:59:59+00:00", "Australia/Sydney", date(2026, 10, 4)),
    # New York: the gap at 02:00 on 2026-03-08, and midnight on either side of an offset text
    ("2026-03-08T04:59:59-00:00", "America/New_York", date(2026, 3, 7)),
    ("2026-03-08T00:00:00-05:00", "America/New_York", date(2026, 3, 8)),
    ("2026-11-01T05:30:00Z", "America/New_York", date(2026, 11, 1)),  # 01:30 EDT... then EST
    ("2026-11-01T06:30:00Z", "America/New_York", date(2026, 11, 1)),
    # the same instant written with offsets that are not the store's
    ("2026-11-02T23:50:00+11:00", "Australia/Perth", date(2026, 11, 2)),
    ("2026-11-02T13:10:00+00:00", "Australia/Melbourne", date(2026, 11, 3)),
    ("2026-11-03T02:10:00+15:59", "Australia/Melbourne", date(2026, 11, 2)),  # 21:11 AEDT
    ("2026-11-02T00:10:00-15:59", "Pacific/Kiritimati", date(2026, 11, 3)),
    # half-hour, 45-minute and 30-minute-DST zones
    ("2026-06-30T18:15:00Z", "Asia/Kathmandu", date(2026, 7, 1)),  # 00:00 +05:45
    ("2026-06-30T18:14:59Z", "Asia/Kathmandu", date(2026, 6, 30)),
    ("2026-01-01T10:15:00Z", "Pacific/Chatham", date(2026, 1, 2)),  # 00:00 +13:45 (DST)
    ("2026-01-01T10:14:59Z", "Pacific/Chatham", date(2026, 1, 1)),
    ("2026-04-04T14:30:00Z", "Australia/Lord_Howe", date(2026, 4, 5)),  # 01:30 +11 (30-minute DST)
    ("2026-04-04T12:59:59Z", "Australia/Lord_Howe", date(2026, 4, 4)),
    ("2026-07-01T14:30:00Z", "Australia/Adelaide", date(2026, 7, 2)),  # 00:00 +09:30
    # zones the tz database has also as abbreviations (PostgreSQL's `at time zone 'CET'` is +01:00 always)
    ("2026-07-01T22:30:00Z", "CET", date(2026, 7, 2)),  # 00:30 CEST
    ("2026-07-01T21:30:00Z", "EET", date(2026, 7, 2)),
    ("2026-07-01T23:30:00Z", "WET", date(2026, 7, 2)),
    # year edges, in and out of UTC
    ("2026-12-31T13:00:00Z", "Pacific/Auckland", date(2027, 1, 1)),
    ("2026-12-31T10:59:59.9999999Z", "Pacific/Auckland", date(2026, 12, 31)),  # cut, never rounded
    ("2027-01-01T04:59:59+00:00", "America/New_York", date(2026, 12, 31)),
    ("2028-02-29T12:00:00Z", "Pacific/Kiritimati", date(2028, 3, 1)),
    ("0001-01-02T00:00:00Z", "UTC", date(1, 1, 2)),
    ("9999-12-30T23:59:59.999999Z", "UTC", date(9999, 12, 30)),
    ("9999-12-30T12:00:00Z", "Pacific/Kiritimati", date(9999, 12, 31)),
    ("1900-01-01T00:00:00Z", "Australia/Sydney", date(1900, 1, 1)),  # before any DST: LMT/standard
]


@pytest.mark.parametrize("created_at,tz,expected", HOSTILE)
def test_one_rule_on_hostile_instants(created_at, tz, expected):
    at = records.instant(created_at)
    assert records.business_date(at, tz) == expected
    assert records.local_date(at, tz) == expected  # inventory snapshot dates: the same rule
    # an order's business_date is that rule applied to its created_at
    order = f.order(1, created_at=created_at)
    assert records.order_rows(jsonutil.dumps(order).encode(), tz).order[9] == expected
    assert records.parse_order(order, tz)["order"]["business_date"] == expected


def test_day_start_is_the_one_place_for_a_later_business_day_start():
    at = records.instant("2026-04-04T16:30:00Z")  # 02:30 (second time) in Sydney on 2026-04-05
    assert records.business_date(at, "Australia/Sydney") == date(2026, 4, 5)
    assert records.business_date(at, "Australia/Sydney", timedelta(hours=4)) == date(2026, 4, 4)
    assert records.business_date(at, "Australia/Sydney", timedelta(hours=2)) == date(2026, 4, 5)
    # the day starts at the local wall time, also across the clock change
    at = records.instant("2026-10-03T16:59:59Z")  # 03:59:59 AEDT on 2026-10-04, the morning after the gap
    assert records.business_date(at, "Australia/Sydney", timedelta(hours=4)) == date(2026, 10, 3)


def test_postgresql_reads_some_zone_names_otherwise(migrated_db):
    """Why the rule lives in Python only: PostgreSQL takes 'CET' as a fixed +01:00 abbreviation,
    the tz database (and every store record naming it) as Central European Time with DST."""
    with psycopg.connect(migrated_db) as conn:
        (sql_day,) = conn.execute("select (timestamptz '2026-07-01T22:30:00Z' at time zone 'CET')::date").fetchone()
    assert sql_day == date(2026, 7, 1) != records.business_date(records.instant("2026-07-01T22:30:00Z"), "CET")


# ------------------------------------------------------------------------------------------------
# a zone corrected at the source


def _sandbox_with_zone(sb: Sandbox, store_id: int, tz: str, updated_at: str) -> None:
    """The sandbox's store record now names another zone (a merchant's correction): its orders'
    bytes do not change."""
    data = sb._data
    for i, s in enumerate(data.stores):
        if s.id == store_id:
            rec = json.loads(s.text)
            rec["timezone"], rec["updated_at"] = tz, updated_at
            new = dataclasses.replace(s, text=json.dumps(rec))
            data.stores[i] = new
            data.by_id[store_id] = new
            return
    raise AssertionError(store_id)


@pytest.fixture
def sandbox_db(migrated_db):
    sb = Sandbox(SandboxConfig(seed=11, stores=2, days=3, end_date=date(2026, 11, 27), orders_per_day=60))
    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
        page_size=50,
    )
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        yield sb, client, conn


def _dates(conn, store_id) -> dict[int, date]:
    return dict(
        conn.execute("select order_id, business_date from taptouch.orders where store_id = %s", (store_id,)).fetchall()
    )


def _expected(conn, store_id, tz) -> dict[int, date]:
    rows = conn.execute("select order_id, created_at from taptouch.orders where store_id = %s", (store_id,)).fetchall()
    return {oid: records.business_date(at, tz) for oid, at in rows}


def _daily(conn, store_id) -> dict[date, tuple]:
    return {
        d: (n, net)
        for d, n, net in conn.execute(
            "select business_date, order_count, net_sales from analytics.daily_store_sales where store_id = %s",
            (store_id,),
        ).fetchall()
    }


def _load_days(client, conn, days, **kw):
    for day in days:
        start, end = day_window(day)
        result = load_window(client, conn, day.isoformat(), start, end, **kw)
        assert not result.failures


DAYS = [date(2026, 11, 25), date(2026, 11, 26), date(2026, 11, 27)]


def test_stores_run_rederives_business_dates_when_a_zone_is_corrected(sandbox_db):
    sb, client, conn = sandbox_db
    sync_stores(client, conn)
    apply_views(conn)
    sid = sb.store_ids()[0]
    old_tz = conn.execute("select timezone from taptouch.stores where store_id = %s", (sid,)).fetchone()[0]
    new_tz = "America/Los_Angeles"  # a day or so apart from any Australian or NZ zone
    assert old_tz != new_tz
    _load_days(client, conn, DAYS)
    before = _dates(conn, sid)
    daily_before = _daily(conn, sid)
    assert before == _expected(conn, sid, old_tz) and len(before) > 100

    _sandbox_with_zone(sb, sid, new_tz, "2026-11-27T09:00:00+00:00")
    # a full refresh first: every order is unchanged (same bytes), none is re-dated by it
    _load_days(
        client,
        conn,
        DAYS,
        timezones={
            s: new_tz if s == sid else t for s, t in conn.execute("select store_id, timezone from taptouch.stores")
        },
    )
    assert _dates(conn, sid) == before  # still the zone taptouch.stores holds: consistent with it
    counts, _ = sync_stores(client, conn)
    assert counts.updated == 1
    after = _dates(conn, sid)
    assert after == _expected(conn, sid, new_tz) and after != before
    assert counts.business_dates_rederived == sum(after[k] != before[k] for k in after) > 0
    daily_after = _daily(conn, sid)
    assert daily_after != daily_before
    assert sum(n for n, _ in daily_after.values()) == sum(n for n, _ in daily_before.values())
    # the other store is untouched; a second stores run re-derives nothing
    other = sb.store_ids()[1]
    assert _dates(conn, other) == _expected(
        conn, other, conn.execute("select timezone from taptouch.stores where store_id = %s", (other,)).fetchone()[0]
    )
    counts, _ = sync_stores(client, conn)
    assert counts.business_dates_rederived == 0 and counts.as_dict()["business_dates_rederived"] == 0
    # an hourly/full orders run afterwards keeps the new dates (unchanged orders and re-loaded ones)
    _load_days(client, conn, DAYS[-1:])
    assert _dates(conn, sid) == after


def test_orders_dated_by_a_stale_listing_follow_the_warehouse_zone(migrated_db):
    """The orders path's guard: an order merged with another zone than taptouch.stores holds (an
    older store listing read by a run that started before the stores run committed) still ends
    with the warehouse zone's date; and one merged before the stores run is re-dated by it."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, "Australia/Melbourne")])
        late = "2026-11-02T13:10:00+00:00"  # 00:10 on 11-03 in Melbourne, 11-02 in Perth or UTC

        def load(order, tz):
            with OrderWindowLoad(conn, window="2026-11-02", timezones={7101: tz}) as w:
                w.add_page(7101, [order])
                return w.finish()

        load(f.order(1, created_at=late), "Australia/Perth")  # the listing's zone is not the warehouse's
        assert _dates(conn, 7101) == {1: date(2026, 11, 3)}
        counts = load_stores(conn, [f.store(7101, "UTC", updated_at="2026-11-01T00:00:00Z")])
        assert counts.business_dates_rederived == 1 and _dates(conn, 7101) == {1: date(2026, 11, 2)}
        # a new version listed with the old zone, after the change was loaded
        load(f.order(1, created_at=late, updated_at="2026-11-04T10:00:00+11:00"), "Australia/Melbourne")
        load(f.order(2, created_at=late), "Australia/Melbourne")
        assert _dates(conn, 7101) == {1: date(2026, 11, 2), 2: date(2026, 11, 2)}


@pytest.mark.slow
def test_rederiving_100k_orders_of_a_store_is_fast(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, "Australia/Sydney"), f.store(7102, "Australia/Perth")])
        raw = jsonutil.dumps(f.order(1))
        for sid, first in ((7101, 1), (7102, 200_001)):
            conn.execute(
                "insert into taptouch.orders (order_id, store_id, status, created_at, updated_at, business_date,"
                " subtotal, discount, surcharge, rounding, tax, total, tips, raw)"
                " select i, %s, 'completed', t, t, (t at time zone 'Australia/Sydney')::date, 1, 0, 0, 0, 0, 1, 0, %s::jsonb"
                " from (select i, timestamptz '2026-01-01T00:00:00Z' + (i - %s) * interval '5 minutes' as t"
                "       from generate_series(%s::bigint, %s::bigint + 99999) i) x",
                (sid, raw, first, first, first),
            )
        t0 = time.monotonic()
        counts = load_stores(conn, [f.store(7101, "America/New_York", updated_at="2026-11-01T00:00:00Z")])
        seconds = time.monotonic() - t0
        assert _dates(conn, 7101) == _expected(conn, 7101, "America/New_York")
        assert 40_000 < counts.business_dates_rederived < 100_000  # ~15 h apart: about 60% of 5-minute slots move
        assert seconds < 10, seconds  # ~1-2 s on a 2-core machine
        assert (
            conn.execute(
                "select count(*) from taptouch.orders where store_id = 7102"
                " and business_date <> (created_at at time zone 'Australia/Sydney')::date"
            ).fetchone()[0]
            == 0
        )
