"""High-water marks you can trust, on the sandbox and real PostgreSQL:
an edit during a listing skips nothing; a mark moves only from a complete listing and never past the
listing's start on the API's clock (nor on this machine's), so a future-dated record cannot freeze a
store's hourly loads."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import httpx
import psycopg
import pytest

from pipelines.sync import day_window, sync_stores
from pipelines.warehouse import marks
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.windows import load_window

pytestmark = pytest.mark.postgres

DAY = "2026-11-26"
START, END = day_window(DAY)
LOOKBACK = timedelta(minutes=5)


def make(clock: list[float], *, wrap=None, page_size: int = 10, here=None):
    """``here``: this machine's clock for the client (default the real one, far after the sandbox's)."""
    sb = Sandbox(
        SandboxConfig(seed=3, stores=1, days=2, end_date=date(2026, 11, 26), orders_per_day=60), clock=lambda: clock[0]
    )
    transport = sb.transport()
    if wrap is not None:
        transport = httpx.MockTransport(wrap(sb, transport))
    client = TaptouchClient(
        client_id=sb.config.client_id,
        client_secret=sb.config.client_secret,
        transport=transport,
        page_size=page_size,
        requests_per_second=None,
        sleep=lambda s: None,
        **({} if here is None else {"clock": here}),
    )
    return sb, client


def t(s: str) -> datetime:
    return datetime.fromisoformat(s)


def held(conn) -> dict[int, str]:
    return {oid: u for oid, u in conn.execute("select order_id, raw->>'updated_at' from taptouch.orders")}


def truth(sb) -> dict[int, str]:
    sid = sb.store_ids()[0]
    return {o["id"]: o["updated_at"] for o in sb.orders_in_window(sid, START, END)}


def mark_of(conn, sid):
    return marks.read(conn, DAY, [sid]).get(sid)


def test_an_edit_during_the_listing_skips_no_order(migrated_db):
    """Order 2 of page 0 is edited right after page 0 is served: it moves behind the reader. Read
    by page number, the record at the page boundary slid onto page 0 and was never read."""
    clock = [(END + timedelta(hours=1)).timestamp()]
    edited: list[int] = []

    def wrap(sb, inner):
        def handler(request: httpx.Request) -> httpx.Response:
            response = inner.handle_request(request)
            if request.url.path.endswith("/orders") and not edited:
                page0 = sb.orders_in_window(sb.store_ids()[0], START, END)[:10]
                edited.append(page0[1]["id"])
                sb.edit_order(page0[1]["id"], status="voided", updated_at=(END - timedelta(minutes=1)).isoformat())
            return response

        return handler

    sb, client = make(clock, wrap=wrap)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        result = load_window(client, conn, DAY, START, END)
        assert edited and result.incomplete == []
        assert held(conn) == truth(sb)  # every order, the edited one in its new version
        assert conn.execute("select status from taptouch.orders where order_id = %s", (edited[0],)).fetchone() == (
            "voided",
        )


def test_a_future_dated_order_does_not_freeze_the_store(migrated_db):
    """At 17:00 (the API's clock) the day already holds orders dated up to 23:59 (a till whose clock
    runs ahead). They load, but the mark stops at the listing's start (16:59:59), so an edit made at
    17:30 is loaded by the next hourly run. With the mark at the newest record loaded (23:59), the
    next run would have asked only from 23:54 and never seen it."""
    clock = [(START + timedelta(hours=17)).timestamp()]
    sb, client = make(clock)
    sid = sb.store_ids()[0]
    day = sb.orders_in_window(sid, START, END)
    assert max(t(o["updated_at"]) for o in day) > START + timedelta(hours=22)  # future-dated records
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        load_window(client, conn, DAY, START, END, lookback=LOOKBACK)
        assert held(conn) == truth(sb)  # the future-dated orders loaded too
        assert mark_of(conn, sid) == START + timedelta(hours=16, minutes=59, seconds=59)

        early = next(o for o in day if t(o["updated_at"]) < START + timedelta(hours=10))
        clock[0] = (START + timedelta(hours=18)).timestamp()
        sb.edit_order(early["id"], status="voided", updated_at=(START + timedelta(hours=17, minutes=30)).isoformat())
        load_window(client, conn, DAY, START, END, lookback=LOOKBACK)
        assert conn.execute("select status from taptouch.orders where order_id = %s", (early["id"],)).fetchone() == (
            "voided",
        )
        assert held(conn) == truth(sb)
        assert mark_of(conn, sid) == START + timedelta(hours=17, minutes=59, seconds=59)


def test_an_api_clock_running_ahead_cannot_carry_the_mark_past_real_time(migrated_db):
    """At 06:00 (this machine's clock, and the records' real time) the API's clock says 12:00 and
    the day holds orders dated up to 23:59. Capped at the API's clock alone, the mark went to 11:59:59;
    once the API's clock was right again, an edit at 06:30 lay before every later listing's start
    (mark minus lookback) and no incremental run read it. The mark stops at this machine's clock."""
    clock = [(START + timedelta(hours=6)).timestamp()]
    sb, client = make(clock, here=lambda: clock[0])
    sid = sb.store_ids()[0]
    sb.faults.clock_skew = 6 * 3600
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        load_window(client, conn, DAY, START, END, lookback=LOOKBACK)
        assert held(conn) == truth(sb)
        assert mark_of(conn, sid) == START + timedelta(hours=5, minutes=59, seconds=59)

        sb.faults.clock_skew = 0
        clock[0] = (START + timedelta(hours=7)).timestamp()
        early = next(o for o in sb.orders_in_window(sid, START, END) if t(o["updated_at"]) < START + timedelta(hours=5))
        sb.edit_order(early["id"], status="voided", updated_at=(START + timedelta(hours=6, minutes=30)).isoformat())
        load_window(client, conn, DAY, START, END, lookback=LOOKBACK)
        assert conn.execute("select status from taptouch.orders where order_id = %s", (early["id"],)).fetchone() == (
            "voided",
        )
        assert held(conn) == truth(sb)


def test_no_api_clock_no_mark(migrated_db):
    """A server that sends no status.timestamp gives no instant to cap at: the data loads, the mark
    stays (the next run reads the window again)."""
    clock = [(END + timedelta(hours=1)).timestamp()]

    def wrap(sb, inner):
        def handler(request: httpx.Request) -> httpx.Response:
            response = inner.handle_request(request)
            if request.url.path.endswith("/orders"):
                body = response.read().replace(b'"timestamp":', b'"clock":', 1)
                return httpx.Response(response.status_code, headers={"content-type": "application/json"}, content=body)
            return response

        return handler

    sb, client = make(clock, wrap=wrap)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        load_window(client, conn, DAY, START, END, lookback=LOOKBACK)
        assert held(conn) == truth(sb)
        assert mark_of(conn, sb.store_ids()[0]) is None


def test_an_incomplete_listing_loads_what_it_read_and_keeps_the_mark(migrated_db, monkeypatch):
    clock = [(END + timedelta(hours=1)).timestamp()]
    sb, client = make(clock)
    sid = sb.store_ids()[0]
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        load_window(client, conn, DAY, START, END, lookback=LOOKBACK)
        before = mark_of(conn, sid)
        assert before is not None
        clock[0] += 7200
        newer = END - timedelta(minutes=2)
        oid = truth(sb).popitem()[0]
        sb.edit_order(oid, status="voided", updated_at=newer.isoformat())

        real = client.iter_order_record_pages
        monkeypatch.setattr(client, "iter_order_record_pages", lambda *a, **kw: _Wrapped(real(*a, **kw)))
        result = load_window(client, conn, DAY, START, END, lookback=LOOKBACK)
        assert result.incomplete == [sid]
        assert t(held(conn)[oid]) == newer  # what it read is loaded
        assert mark_of(conn, sid) == before  # but the mark did not move


class _Wrapped:
    """A real listing that turns out incomplete (as when its verifying pass found a skip)."""

    def __init__(self, listing):
        self.listing, self.complete = listing, True
        self.newest, self.started_at = listing.newest, listing.started_at

    def __iter__(self):
        yield from self.listing
        self.newest, self.started_at, self.complete = self.listing.newest, self.listing.started_at, False


def test_marks_are_per_account(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        at = datetime(2026, 11, 26, 5, tzinfo=UTC)
        with conn.transaction(), conn.cursor() as cur:
            marks.advance(cur, DAY, {7101: at}, full=False)
        conn.execute("select set_config('taptouch.account', 'north', false)")
        assert marks.read(conn, DAY, [7101]) == {}
        with conn.transaction(), conn.cursor() as cur:
            marks.advance(cur, DAY, {7101: at + timedelta(hours=1)}, full=False)
            marks.advance(cur, DAY, {7101: at}, full=False)  # never backwards
        assert marks.read(conn, DAY, [7101]) == {7101: at + timedelta(hours=1)}
        conn.execute("select set_config('taptouch.account', '', false)")
        assert marks.read(conn, DAY, [7101]) == {7101: at}
