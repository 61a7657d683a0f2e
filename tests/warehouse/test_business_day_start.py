"""Business days that start after midnight (issue 24, part 3): TAPTOUCH_BUSINESS_DAY_START and the
per-store ``taptouch.store_business_days``, through the production path (sandbox API -> client ->
sync_orders_window -> loader -> PostgreSQL -> views), against truth computed here from the
sandbox's own records with zoneinfo (not with ``records.business_date``).

The sandbox's three stores: 7101 Australia/Sydney (its clocks go 02:00 -> 03:00 in the night of
Sunday 2026-10-04), 7102 Australia/Perth (no DST), 7103 Pacific/Auckland (DST since 2026-09-27).
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from pipelines.cli import main
from pipelines.sync import day_window, sync_inventory, sync_stores
from pipelines.warehouse import aggregates
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from pipelines.warehouse.rebuild import rebuild
from pipelines.warehouse.views import apply_views
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support import truth
from tests.support.windows import load_window

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

END = date(2026, 10, 5)
DAYS = 4
FOUR = timedelta(hours=4)
SYDNEY, PERTH, AUCKLAND = 7101, 7102, 7103
ZONES = {SYDNEY: "Australia/Sydney", PERTH: "Australia/Perth", AUCKLAND: "Pacific/Auckland"}


def expected_date(created_at: str, tz: str, start: timedelta) -> date:
    """The rule, written independently: the local date of (local wall-clock time minus the start)."""
    wall = datetime.fromisoformat(created_at).astimezone(ZoneInfo(tz))
    naive = datetime(wall.year, wall.month, wall.day, wall.hour, wall.minute, wall.second, wall.microsecond)
    return (naive - start).date()


# Sales placed on the edges: (store, local wall-clock time, its UTC offset, business date with a 04:00 start)
EDGES = [
    (SYDNEY, "2026-10-03T01:30:00", "+10:00", date(2026, 10, 2)),  # before the start: the night before
    (SYDNEY, "2026-10-03T03:59:59", "+10:00", date(2026, 10, 2)),
    (SYDNEY, "2026-10-03T04:00:00", "+10:00", date(2026, 10, 3)),
    (SYDNEY, "2026-10-04T01:59:59", "+10:00", date(2026, 10, 3)),  # the DST night: the last second of AEST
    (SYDNEY, "2026-10-04T03:00:00", "+11:00", date(2026, 10, 3)),  # the next second is 03:00 AEDT
    (SYDNEY, "2026-10-04T03:59:59", "+11:00", date(2026, 10, 3)),
    (SYDNEY, "2026-10-04T04:00:00", "+11:00", date(2026, 10, 4)),  # the wall clock decides
    (PERTH, "2026-10-03T01:30:00", "+08:00", date(2026, 10, 2)),
    (PERTH, "2026-10-03T03:59:59", "+08:00", date(2026, 10, 2)),
    (PERTH, "2026-10-03T04:00:00", "+08:00", date(2026, 10, 3)),
    (AUCKLAND, "2026-10-03T01:30:00", "+13:00", date(2026, 10, 2)),
    (AUCKLAND, "2026-10-03T03:59:59", "+13:00", date(2026, 10, 2)),
    (AUCKLAND, "2026-10-03T04:00:00", "+13:00", date(2026, 10, 3)),
]


def make_sandbox() -> tuple[Sandbox, dict[int, tuple[int, date]]]:
    """The sandbox with one completed order of each store moved onto each edge; returns
    order id -> (store, the business date a 04:00 start gives it)."""
    sb = Sandbox(SandboxConfig(seed=24, stores=3, days=DAYS, orders_per_day=12, end_date=END))
    assert {s["id"]: s["timezone"] for s in sb.stores()} == ZONES
    free = {sid: [o for o in sb.orders(sid) if o["status"] == "completed"] for sid in ZONES}
    placed = {}
    for store, wall, offset, expected in EDGES:
        order = free[store].pop()
        created = datetime.fromisoformat(wall + offset)
        sb.edit_order(
            order["id"],
            created_at=created.isoformat(),
            completed_at=(created + timedelta(minutes=5)).isoformat(),
            updated_at=created + timedelta(minutes=10),
        )
        placed[order["id"]] = (store, expected)
    return sb, placed


def client_for(sb: Sandbox) -> TaptouchClient:
    return TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        page_size=500,
        requests_per_second=None,
    )


def utc_days() -> list[date]:
    """Every UTC day an updated_at can fall on (east of UTC starts the day before; edits an hour on)."""
    first = END - timedelta(days=DAYS + 1)
    return [first + timedelta(days=i) for i in range(DAYS + 3)]


def sync(client, conn, start: timedelta, days: list[date] | None = None) -> None:
    for day in utc_days() if days is None else days:
        lo, hi = day_window(day)
        result = load_window(client, conn, day.isoformat(), lo, hi, business_day_start=start)
        assert not result.failures, result.failures


def stored_dates(conn) -> dict[int, tuple[int, date]]:
    return {
        oid: (sid, d) for oid, sid, d in conn.execute("select order_id, store_id, business_date from taptouch.orders")
    }


def truth_dates(sb: Sandbox, starts: dict[int, timedelta]) -> dict[int, tuple[int, date]]:
    return {
        o["id"]: (sid, expected_date(o["created_at"], ZONES[sid], starts[sid])) for sid in ZONES for o in sb.orders(sid)
    }


def truth_daily_sales(sb: Sandbox, starts: dict[int, timedelta]) -> dict[tuple[int, date], tuple[int, Decimal]]:
    """(store, business date) -> (sales orders, net sales), as analytics.daily_store_sales."""
    acc: dict[tuple[int, date], list] = defaultdict(lambda: [0, Decimal("0.00")])
    for sid in ZONES:
        for o in sb.orders(sid):
            if o["status"] in truth.SALES_STATUSES:
                row = acc[(sid, expected_date(o["created_at"], ZONES[sid], starts[sid]))]
                row[0] += 1
                row[1] += o["total"] - sum((r["amount"] for r in o["refunds"]), Decimal("0.00"))
    return {k: (n, net) for k, (n, net) in acc.items()}


def aggregate_mismatches(conn) -> dict:
    with conn.transaction(), conn.cursor() as cur:
        return aggregates.mismatches(cur)


@pytest.fixture
def world(migrated_db):
    sb, placed = make_sandbox()
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, sb.stores())
        yield sb, placed, client_for(sb), conn, migrated_db


def test_a_0400_start_dates_the_edges_in_three_zones_and_the_dst_night(world):
    sb, placed, client, conn, _ = world
    sync(client, conn, FOUR)
    held = stored_dates(conn)
    # the sales placed on the edges: 01:30 and 03:59:59 count toward the day before, 04:00 not
    assert {oid: held[oid] for oid in placed} == placed
    # and every order of the sandbox, by the independent rule
    assert held == truth_dates(sb, dict.fromkeys(ZONES, FOUR))
    # the stores' dates are recorded as following 04:00
    assert dict(conn.execute("select store_id, day_starts from taptouch_meta.business_day_starts")) == dict.fromkeys(
        ZONES, time(4)
    )
    # the SQL helpers agree: on the DST night Sydney's business day 2026-10-03 lasts 23 hours
    bounds = conn.execute("select * from taptouch.business_day_bounds(%s, %s)", (SYDNEY, date(2026, 10, 3))).fetchone()
    assert bounds == (datetime(2026, 10, 2, 18, tzinfo=UTC), datetime(2026, 10, 3, 17, tzinfo=UTC))
    for oid, (sid, expected) in placed.items():
        at = conn.execute("select created_at from taptouch.orders where order_id = %s", (oid,)).fetchone()[0]
        assert conn.execute("select taptouch.business_date_at(%s, %s)", (sid, at)).fetchone()[0] == expected


def test_a_stores_own_start_beats_the_setting(world):
    sb, _, client, conn, _ = world
    conn.execute("insert into taptouch.store_business_days (store_id, day_starts) values (%s, '06:30')", (PERTH,))
    sync(client, conn, FOUR)
    starts = {SYDNEY: FOUR, PERTH: timedelta(hours=6, minutes=30), AUCKLAND: FOUR}
    assert stored_dates(conn) == truth_dates(sb, starts)
    with pytest.raises(psycopg.errors.CheckViolation):  # 00:00 to 11:59 only
        conn.execute("insert into taptouch.store_business_days (store_id, day_starts) values (7103, '12:00')")


def test_a_changed_setting_re_dates_on_the_next_run_and_a_changed_override_with_rebuild(world):
    sb, placed, client, conn, url = world
    sync(client, conn, timedelta(0))
    midnight = truth_dates(sb, dict.fromkeys(ZONES, timedelta(0)))
    assert stored_dates(conn) == midnight
    assert stored_dates(conn) != truth_dates(sb, dict.fromkeys(ZONES, FOUR))  # the edges differ
    # the next run, of one window only, with TAPTOUCH_BUSINESS_DAY_START=04:00: every date follows
    sync(client, conn, FOUR, days=[END])
    assert stored_dates(conn) == truth_dates(sb, dict.fromkeys(ZONES, FOUR))
    assert aggregate_mismatches(conn) == {}
    # a store's own start, then `rebuild` (the setting still 04:00): that store's dates follow
    conn.execute("insert into taptouch.store_business_days (store_id, day_starts) values (%s, '02:15')", (SYDNEY,))
    report = rebuild(conn, day_start=FOUR)
    starts = {SYDNEY: timedelta(hours=2, minutes=15), PERTH: FOUR, AUCKLAND: FOUR}
    assert stored_dates(conn) == truth_dates(sb, starts)
    moved = sum(
        1
        for oid, (sid, d) in truth_dates(sb, starts).items()
        if d != truth_dates(sb, dict.fromkeys(ZONES, FOUR))[oid][1]
    )
    assert moved > 0
    assert report.day_start_dates_rederived == moved
    assert report.tables["orders"].changed == 0  # the rest of rebuild dates with the recorded starts
    assert aggregate_mismatches(conn) == {}  # the sales aggregates moved with the dates
    # a later load dates new versions with the recorded start, not midnight
    oid = next(iter(placed))
    sb.edit_order(oid, updated_at=datetime(2026, 10, 5, 12, tzinfo=UTC))
    sync(client, conn, FOUR, days=[END])
    assert stored_dates(conn) == truth_dates(sb, starts)


def test_views_follow_the_business_day(world):
    sb, _, client, conn, _ = world
    conn.execute("insert into taptouch.store_business_days (store_id, day_starts) values (%s, '05:00')", (AUCKLAND,))
    sync(client, conn, FOUR)
    apply_views(conn)
    starts = {SYDNEY: FOUR, PERTH: FOUR, AUCKLAND: timedelta(hours=5)}
    daily = {
        (sid, d): (n, net)
        for sid, d, n, net in conn.execute(
            "select store_id, business_date, order_count, net_sales from analytics.daily_store_sales"
        )
    }
    assert daily == truth_daily_sales(sb, starts)
    # business_days: each day runs from its start to the next day's start, local wall-clock
    for sid, d, starts_at, ends_at in conn.execute(
        "select store_id, business_date, day_starts_at, day_ends_at from analytics.business_days"
    ):
        zone = ZoneInfo(ZONES[sid])
        assert starts_at == datetime.combine(d, time(0), zone) + starts[sid]
        assert ends_at == datetime.combine(d + timedelta(days=1), time(0), zone) + starts[sid]
    # the view's bounds are taptouch.business_day_bounds' (written out there for speed)
    assert conn.execute(
        "select count(*) from analytics.business_days d, taptouch.business_day_bounds(d.store_id, d.business_date) b"
        " where (b.starts_at, b.ends_at) is distinct from (d.day_starts_at, d.day_ends_at)"
    ).fetchone() == (0,)
    # hourly_sales: the hour stays the wall-clock hour; hours before the start sit on the previous date
    hours = defaultdict(int)
    for sid in ZONES:
        for o in sb.orders(sid):
            if o["status"] in truth.SALES_STATUSES:
                wall = datetime.fromisoformat(o["created_at"]).astimezone(ZoneInfo(ZONES[sid]))
                hours[(sid, expected_date(o["created_at"], ZONES[sid], starts[sid]), wall.hour)] += 1
    got = {
        (sid, d, h): n
        for sid, d, h, n in conn.execute(
            "select store_id, business_date, local_hour, order_count from analytics.hourly_sales"
        )
    }
    assert got == dict(hours)
    assert any(h < 4 for (_, _, h) in got)  # the night's sales are there, on the night before
    # docs/analytics.md's query of the stores' business days
    docs = (Path(__file__).resolve().parents[2] / "docs" / "analytics.md").read_text()
    query = next(q for q in re.findall(r"```sql\n(.*?)```", docs, re.S) if "business_day_bounds" in q)
    rows = conn.execute(query).fetchall()
    assert [(r[1], r[4]) for r in rows] == [(SYDNEY, time(4)), (PERTH, time(4)), (AUCKLAND, time(5))]
    assert all(r[6] - r[5] in (timedelta(hours=23), timedelta(hours=24), timedelta(hours=25)) for r in rows)


def test_the_stores_run_re_dates_too_and_snapshots_take_the_start(world):
    sb, placed, client, conn, _ = world
    sync(client, conn, timedelta(0))
    counts, _ = sync_stores(client, conn, day_start=FOUR)  # the stores asset, TAPTOUCH_BUSINESS_DAY_START=04:00
    four = truth_dates(sb, dict.fromkeys(ZONES, FOUR))
    assert stored_dates(conn) == four
    midnight = truth_dates(sb, dict.fromkeys(ZONES, timedelta(0)))
    assert counts.business_dates_rederived == sum(1 for oid in four if four[oid] != midnight[oid]) > 0
    assert aggregate_mismatches(conn) == {}
    # an inventory sync at 01:30 in Perth (17:30 UTC) snapshots the night before's business date
    sync_inventory(client, conn, timezones=ZONES, store_ids=[PERTH], now=datetime(2026, 10, 4, 17, 30, tzinfo=UTC))
    assert conn.execute("select distinct snapshot_date from taptouch.inventory_snapshots").fetchall() == [
        (date(2026, 10, 4),)
    ]


def test_a_load_dated_with_a_start_that_moved_meanwhile_follows_the_warehouse(world):
    sb, placed, client, conn, _ = world
    sync(client, conn, FOUR)
    # a load that dated its orders with midnight (it read the starts before another run moved them
    # to 04:00): its merge re-dates them by the start the warehouse's dates follow
    oid, (store, _) = next(iter(placed.items()))
    sb.edit_order(oid, updated_at=datetime(2026, 10, 5, 12, tzinfo=UTC))
    record = next(o for o in sb.orders(store) if o["id"] == oid)
    with OrderWindowLoad(conn, window="2026-10-05", day_starts=dict.fromkeys(ZONES, timedelta(0))) as load:
        load.add_page(store, [record])
        load.finish()
    assert stored_dates(conn)[oid] == (store, expected_date(record["created_at"], ZONES[store], FOUR))
    assert stored_dates(conn)[oid] == placed[oid]


def test_taptouch_sync_rebuild_applies_a_changed_setting(world, monkeypatch, capsys):
    sb, _, client, conn, url = world
    sync(client, conn, timedelta(0))
    four, midnight = (truth_dates(sb, dict.fromkeys(ZONES, s)) for s in (FOUR, timedelta(0)))
    moved = sum(1 for oid in four if four[oid] != midnight[oid])
    monkeypatch.setenv("TAPTOUCH_BUSINESS_DAY_START", "04:00")
    assert main(["rebuild", "--database-url", url]) == 0
    assert f"business dates re-derived after a day start change: {moved}" in capsys.readouterr().out
    assert stored_dates(conn) == four
    assert aggregate_mismatches(conn) == {}
    assert main(["rebuild", "--database-url", url]) == 0  # applied once: nothing moves again
    assert "business dates re-derived after a day start change: 0" in capsys.readouterr().out
