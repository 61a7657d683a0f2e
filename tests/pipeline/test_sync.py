"""pipelines.sync against the in-process sandbox and a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import threading
from datetime import date

import psycopg
import pytest

from pipelines.settings import RunSettings
from pipelines.sync import (
    OrdersRun,
    OrderWindow,
    PageFetched,
    StoreDone,
    day_window,
    is_transient,
    list_stores,
    sync_orders_window,
    sync_orders_windows,
    sync_stores,
)
from pipelines.warehouse.loader import store_timezones
from taptouch_resource import TaptouchAPIError, TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig


@pytest.fixture
def setup(migrated_db):
    sb = Sandbox(SandboxConfig(seed=5, stores=3, days=3, end_date=date(2026, 11, 27), orders_per_day=50))
    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
        page_size=20,
    )
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        yield sb, client, conn


def test_unknown_store_is_a_named_failure_and_the_rest_loads(setup):
    sb, client, conn = setup
    sync_stores(client, conn)
    start, end = day_window("2026-11-26")
    ids = sb.store_ids()
    result = sync_orders_window(
        client, conn, OrderWindow("2026-11-26", start, end), OrdersRun(store_timezones(conn), store_ids=ids + [9999])
    )
    assert [f.store_id for f in result.failures] == [9999]
    assert "9999 is not in the API's store listing" in result.failures[0].error and not result.failures[0].transient
    expected = {o["id"] for s in ids for o in sb.orders_in_window(s, start, end)}
    assert {r[0] for r in conn.execute("select order_id from taptouch.orders")} == expected
    assert result.counts.inserted == len(expected) and result.stores_ok == ids


def test_parallel_pages_with_faults_load_everything_once(setup):
    sb, client, conn = setup
    sync_stores(client, conn)
    sb.faults.duplicate_page_boundary = True
    sb.faults.rate_limit_every = 7
    sb.faults.retry_after = "0"
    sb.faults.server_error_every = 5
    start, end = day_window("2026-11-26")
    run = OrdersRun(store_timezones(conn), settings=RunSettings(store_workers=3, batch_size=16))
    result = sync_orders_window(client, conn, OrderWindow("2026-11-26", start, end), run)
    expected = {o["id"]: o for s in sb.store_ids() for o in sb.orders_in_window(s, start, end)}
    got = dict(conn.execute("select order_id, total from taptouch.orders").fetchall())
    assert got == {k: o["total"] for k, o in expected.items()}
    assert client.stats.rate_limited > 0 and client.stats.server_errors > 0
    assert result.counts.duplicates == 0  # the listing yields each version once, whatever the pages repeat
    assert result.per_store[sb.store_ids()[0]]["pages"] >= 2


@pytest.mark.parametrize("in_flight", [1, 2, 3, 5])
def test_windows_in_flight_load_every_window_once_in_order(setup, migrated_db, in_flight):
    """A ranged run's windows, several in flight (each its own connection and transaction): every
    window is loaded and reported once, in order, and the warehouse holds exactly the source."""
    sb, client, conn = setup
    sync_stores(client, conn)
    days = ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27"]
    windows = [OrderWindow.day(d) for d in days]
    run = OrdersRun(store_timezones(conn), settings=RunSettings(store_workers=2, batch_size=16))
    reported = list(
        sync_orders_windows(
            client, lambda: psycopg.connect(migrated_db, autocommit=True), windows, run, in_flight=in_flight
        )
    )
    assert [window.key for window, _ in reported] == days
    expected = {
        o["id"]: o["total"] for s in sb.store_ids() for w in windows for o in sb.orders_in_window(s, w.start, w.end)
    }
    assert len(expected) > 100
    assert dict(conn.execute("select order_id, total from taptouch.orders").fetchall()) == expected
    assert sum(r.counts.inserted for _, r in reported) == len(expected)
    assert [r.records for _, r in reported] == [
        sum(len(sb.orders_in_window(s, w.start, w.end)) for s in sb.store_ids()) for w in windows
    ]


def test_a_window_that_fails_stops_the_windows_after_it(setup, migrated_db, monkeypatch):
    """The error propagates; the window already fetching beside it finishes on its own (committed,
    safe to load again), and no window after it starts fetching."""
    import pipelines.sync as sync_module

    sb, client, conn = setup
    sync_stores(client, conn)
    days = ["2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27"]
    real, asked = sync_module.sync_orders_window, []

    outage = threading.Event()

    def window_or_outage(client_, conn_, window, run, **kwargs):
        asked.append(window.key)
        if window.key == "2026-11-25":
            outage.set()
            raise psycopg.OperationalError("connection to server lost")
        if window.key == "2026-11-24":
            assert outage.wait(10)  # still fetching (holding its place) when 25 fails
        return real(client_, conn_, window, run, **kwargs)

    monkeypatch.setattr(sync_module, "sync_orders_window", window_or_outage)
    loaded = []
    with pytest.raises(psycopg.OperationalError, match="lost"):
        for window, _ in sync_orders_windows(
            client,
            lambda: psycopg.connect(migrated_db, autocommit=True),
            [OrderWindow.day(d) for d in days],
            OrdersRun(store_timezones(conn), settings=RunSettings(store_workers=2)),
            in_flight=2,
        ):
            loaded.append(window.key)
    # 24 and 25 fetch together (26 waits for a place); 25 fails while 24 fetches: 24 finishes and
    # commits, 26 and 27 never start (not a request)
    assert loaded == ["2026-11-24"] and sorted(asked) == days[:2]
    marks = {r[0] for r in conn.execute('select distinct "window" from taptouch.sync_marks')}
    assert marks == {"2026-11-24"}


def test_store_listing_is_read_only_and_a_malformed_record_costs_only_its_store(setup):
    sb, client, conn = setup
    good, bad = sb.store_ids()[0], sb.store_ids()[2]
    served = sb.stores()
    records = [r for r in served if r["id"] != bad] + [
        {**next(r for r in served if r["id"] == bad), "timezone": "Nowhere/Town"}
    ]
    client.list_stores = lambda: iter(records)  # the listing as the API would serve it
    listing = list_stores(client)
    assert listing.store_ids == [s for s in sb.store_ids() if s != bad]
    assert listing.timezones[good] == next(r["timezone"] for r in served if r["id"] == good)
    assert list(listing.invalid) == [str(bad)] and "Nowhere/Town" in listing.invalid[str(bad)]
    assert conn.execute("select count(*) from taptouch.stores").fetchone()[0] == 0


def test_orders_load_with_time_zones_from_the_listing_on_a_fresh_warehouse(setup):
    sb, client, conn = setup
    listing = list_stores(client)
    start, end = day_window("2026-11-26")
    result = sync_orders_window(
        client,
        conn,
        OrderWindow("2026-11-26", start, end),
        OrdersRun(listing.timezones, store_ids=listing.store_ids + [9999]),
    )
    assert [(f.store_id, f.transient) for f in result.failures] == [(9999, False)]
    assert "not in the API's store listing" in result.failures[0].error
    expected = {o["id"] for s in sb.store_ids() for o in sb.orders_in_window(s, start, end)}
    assert {r[0] for r in conn.execute("select order_id from taptouch.orders")} == expected
    assert conn.execute("select count(*) from taptouch.stores").fetchone()[0] == 0


def test_a_failing_store_is_discarded_and_named(setup):
    sb, client, conn = setup
    listing = list_stores(client)
    bad = sb.store_ids()[1]
    sb.faults.forbidden_stores = {bad}
    start, end = day_window("2026-11-26")
    result = sync_orders_window(
        client,
        conn,
        OrderWindow("2026-11-26", start, end),
        OrdersRun(listing.timezones, settings=RunSettings(store_workers=3)),
    )
    assert [(f.store_id, f.transient) for f in result.failures] == [(bad, False)]
    assert "store_forbidden" in result.failures[0].error
    assert result.stores_ok == [s for s in sb.store_ids() if s != bad]
    loaded = {r[0] for r in conn.execute("select distinct store_id from taptouch.orders")}
    assert loaded == set(result.stores_ok)


def test_fetch_events_are_frozen_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PageFetched(7, []).store_id = 8  # nobody edits an event in flight
    with pytest.raises(dataclasses.FrozenInstanceError):
        StoreDone(7, pages=2, orders=30).orders = 31


def test_only_errors_a_retry_can_cure_are_transient():
    assert is_transient(TaptouchAPIError(status=503, path="/x")) and is_transient(
        TaptouchAPIError(status=429, path="/x")
    )
    assert is_transient(TaptouchAPIError(status=0, path="/x"))  # network
    assert is_transient(psycopg.OperationalError("connection lost"))
    assert not is_transient(TaptouchAPIError(status=404, path="/x"))
    # the step retries exactly what the client retries: a proxy's 408/524 yes, 501/505 (the request is wrong) no
    assert [
        s
        for s in (408, 500, 501, 502, 503, 504, 505, 520, 524, 599)
        if is_transient(TaptouchAPIError(status=s, path="/x"))
    ] == [408, 500, 502, 503, 504, 520, 524]
    assert not is_transient(psycopg.errors.UniqueViolation("duplicate"))
    assert not is_transient(RuntimeError("a bug"))
    # a warehouse URL that is wrong fails the same way on every retry: not retried
    assert not is_transient(psycopg.OperationalError('connection failed: FATAL:  database "wh" does not exist'))
    assert not is_transient(psycopg.OperationalError('FATAL:  password authentication failed for user "etl"'))
    assert not is_transient(psycopg.OperationalError("failed to resolve host '***': Name or service not known"))
    assert is_transient(
        psycopg.OperationalError("connection to server at 10.0.0.5, port 5432 failed: Connection refused")
    )
