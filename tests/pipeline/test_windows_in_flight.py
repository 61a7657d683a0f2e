"""A ranged orders run with several windows in flight (pipelines.sync.sync_orders_windows): what
loading two days at once must not change, against the in-process sandbox and a real PostgreSQL."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import date, datetime

import dagster as dg
import httpx
import psycopg
import pytest

import pipelines.sync as sync_module
from pipelines.assets import taptouch as taptouch_assets_module
from pipelines.settings import RunSettings
from pipelines.sync import OrdersRun, OrderWindow, day_window, sync_orders_windows, sync_stores
from pipelines.warehouse import loader as loader_module
from pipelines.warehouse import marks as marks_module
from pipelines.warehouse.loader import OrderWindowLoad, store_timezones
from pipelines.warehouse.merge import ORDERS
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchClient, TaptouchResource
from taptouch_resource.client import ClientOptions
from taptouch_resource.retry import MAX_RETRY_AFTER
from taptouch_sandbox import Sandbox, SandboxConfig

D1, D2 = "2026-11-25", "2026-11-26"
LONG_CURRENCY = "AUD" * 4  # 12 characters: over CURRENCY_MAX (10), quarantined


def _client(transport) -> TaptouchClient:
    return TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=transport,
        requests_per_second=None,
        sleep=lambda s: None,
        page_size=20,
    )


def _windows(*days):
    return [OrderWindow.day(d) for d in days]


def _run(conn) -> OrdersRun:
    """Two store workers over the stores the test's sync_stores loaded."""
    return OrdersRun(store_timezones(conn), settings=RunSettings(store_workers=2))


@pytest.fixture
def sb():
    return Sandbox(SandboxConfig(seed=5, stores=3, days=3, end_date=date(2026, 11, 27), orders_per_day=50))


@pytest.mark.parametrize("case", ["newer_version_invalid", "older_version_invalid"])
def test_an_order_edited_between_the_windows_fetches_leaves_the_quarantine_as_a_serial_run_would(
    sb, migrated_db, monkeypatch, case
):
    """Order X is listed in D1's window, then edited into D2 before D2 is fetched: D1 stages the old
    version, D2 the new one. D2 happens to be ready first. The warehouse must end as when D1 then
    D2 load one after the other: a quarantined newest version stays unresolved (an older valid
    version merged later does not resolve it); a quarantined older version is resolved by the valid
    newer one (it is not committed, unresolved, after it)."""
    store = sb.store_ids()[0]
    x = sb.orders_in_window(store, *day_window(D1))[0]["id"]
    if case == "older_version_invalid":  # D1 serves an invalid version, D2 the valid edit
        sb.edit_order(x, currency=LONG_CURRENCY, updated_at="2026-11-25T20:00:00+00:00")
        edit = {"currency": "AUD"}
    else:  # D1 serves the valid version, D2 an invalid edit
        edit = {"currency": LONG_CURRENCY}
    v1 = sb.order(x)
    d1_staged, d2_done, edited = threading.Event(), threading.Event(), threading.Event()
    base = sb.transport()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("updated_from", "").startswith(D2):
            d1_staged.wait(10)  # D2 is fetched after D1 has every page (and after the edit)
            if not edited.is_set():
                sb.edit_order(x, updated_at="2026-11-26T12:00:00+00:00", **edit)
                edited.set()
        return base.handle_request(request)

    class D2First(OrderWindowLoad):
        """D1 has fetched everything, but its merge comes after D2 had every chance to commit."""

        def finish(self):
            if self.window == D1:
                d1_staged.set()
                d2_done.wait(1.5)
            try:
                return super().finish()
            finally:
                if self.window == D2:
                    d2_done.set()

    monkeypatch.setattr(sync_module, "OrderWindowLoad", D2First)
    client = _client(httpx.MockTransport(handler))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        reported = dict(
            sync_orders_windows(
                client, lambda: psycopg.connect(migrated_db, autocommit=True), _windows(D1, D2), _run(conn), in_flight=2
            )
        )
        v2 = sb.order(x)
        quarantine = conn.execute(
            'select "window", resolved_at is not null from taptouch.quarantine where record_key = %s', (str(x),)
        ).fetchall()
        held = conn.execute("select updated_at, currency from taptouch.orders where order_id = %s", (x,)).fetchall()
        checks = {c.check_name: c for c in taptouch_assets_module._order_checks(conn, _windows(D1, D2))}
    assert edited.is_set() and {w.key for w in reported} == {D1, D2}
    if case == "newer_version_invalid":
        # the newest version (D2's) is invalid: the warehouse keeps v1 and the quarantine says so
        assert held == [(datetime.fromisoformat(v1["updated_at"]), "AUD")]
        assert quarantine == [(D2, False)]
        assert checks["no_quarantined_records"].passed is False
        assert checks["no_quarantined_records"].metadata["quarantined"].value == 1
    else:
        # the invalid version (D1's) was superseded by a valid one the warehouse holds: resolved
        assert held == [(datetime.fromisoformat(v2["updated_at"]), "AUD")]
        assert quarantine == [(D1, True)]
        assert checks["no_quarantined_records"].passed is True


def test_a_statement_timeout_does_not_cancel_a_window_waiting_for_the_other_windows_merge(sb, migrated_db, monkeypatch):
    """Every statement of a merge is under the warehouse's statement_timeout, but a merge is several
    statements: the window after it must not spend one statement waiting for all of them."""
    real_advance = marks_module.advance

    def slow_advance(cur, *args, **kwargs):  # a big window's merge: each statement within the timeout
        real_advance(cur, *args, **kwargs)
        for _ in range(3):
            cur.execute("select pg_sleep(0.6)")

    monkeypatch.setattr(marks_module, "advance", slow_advance)
    client = _client(sb.transport())
    days = [D1, D2]
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        reported = list(
            sync_orders_windows(
                client,
                lambda: psycopg.connect(migrated_db, autocommit=True, options="-c statement_timeout=1000"),
                _windows(*days),
                _run(conn),
                in_flight=2,
            )
        )
        loaded = dict(conn.execute("select order_id, total from taptouch.orders").fetchall())
    assert [w.key for w, _ in reported] == days
    expected = {
        o["id"]: o["total"] for s in sb.store_ids() for d in days for o in sb.orders_in_window(s, *day_window(d))
    }
    assert loaded == expected


def test_an_interrupt_stops_the_windows_in_flight_and_nothing_more_commits(sb, migrated_db):
    """Run termination: Dagster raises DagsterExecutionInterruptedError in the main thread (here
    while it waits for the first window). The windows in flight must stop (roll back, no more API
    requests) as a window loaded alone would, not go on fetching and commit after the run ended."""
    base = sb.transport()
    requests = []

    def slow(request: httpx.Request) -> httpx.Response:
        if "/orders" in request.url.path:
            requests.append(time.monotonic())
            time.sleep(0.1)
        return base.handle_request(request)

    client = _client(httpx.MockTransport(slow))

    def interrupt(signum, frame):
        raise dg.DagsterExecutionInterruptedError("run terminated")

    days = ["2026-11-24", D1, D2, "2026-11-27"]
    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            sync_stores(client, conn)
            timer.start()
            with pytest.raises(dg.DagsterExecutionInterruptedError):
                for _ in sync_orders_windows(
                    client,
                    lambda: psycopg.connect(migrated_db, autocommit=True),
                    _windows(*days),
                    _run(conn),
                    in_flight=2,
                ):
                    pass
            asked = len(requests)
            time.sleep(0.6)
            committed = conn.execute("select count(*) from taptouch.orders").fetchone()[0]
            marked = conn.execute("select count(*) from taptouch.sync_marks").fetchone()[0]
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    assert 0 < asked < 3 * 3 * 2  # interrupted early: fewer requests than two whole windows take
    assert len(requests) == asked  # nothing asked after the interrupt was raised
    assert (committed, marked) == (0, 0)


def test_a_ranged_run_survives_the_server_closing_idle_sessions(migrated_db, monkeypatch):
    """idle_session_timeout (a DBA's guard against leaked connections) closes a session that sat
    idle, outside a transaction, for longer than the limit. The windows load on their own
    connections, so the run's first connection sits idle for the whole range: the asset checks
    must not depend on it (an OperationalError there retries the step, and the next attempt idles
    as long again)."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(f"alter database {conn.info.dbname} set idle_session_timeout = '1000ms'")
    monkeypatch.setattr(taptouch_assets_module, "RETRY", dg.RetryPolicy(max_retries=0))
    stores, orders, _ = taptouch_assets_module.taptouch_assets()
    sb = Sandbox(SandboxConfig(seed=5, stores=3, days=3, end_date=date(2026, 11, 27), orders_per_day=50))
    sb.faults.latency = 0.5  # over HTTP: the listing and the three days take a few seconds
    with sb.serve() as url:
        res = {
            "taptouch": TaptouchResource(
                client_id="sandbox-client", client_secret="sandbox-secret", base_url=url, requests_per_second=0
            ),
            "warehouse": PostgresResource(database_url=migrated_db),
        }
        assert dg.materialize([stores], resources=res).success
        days = ["2026-11-25", "2026-11-26", "2026-11-27"]
        tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]}
        t0 = time.monotonic()
        with dg.instance_for_test() as instance:
            result = dg.materialize([orders], resources=res, tags=tags, instance=instance, raise_on_error=False)
        took = time.monotonic() - t0
    assert took > 1.5  # the run's first connection did idle past the limit
    assert result.success, result.failure_data_for_node("orders")
    with psycopg.connect(migrated_db) as conn:
        loaded = {r[0] for r in conn.execute("select order_id from taptouch.orders")}
    expected = {o["id"] for s in sb.store_ids() for d in days for o in sb.orders_in_window(s, *day_window(d))}
    assert loaded == expected
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {
        "no_quarantined_records": True,
        "order_arithmetic": True,
        "no_future_dated_orders": True,
        "money_reconciliation": True,
        "orders_proven": True,
        "sales_aggregates_exact": True,
    }


def test_the_next_window_is_fetched_while_the_staged_ones_wait_for_their_merge(sb, migrated_db, monkeypatch):
    """Two windows fetch at once; a window that has staged everything gives its place to the next one
    while it waits for its turn to merge. With the merges held back (another session holds the orders
    merge lock), the third day is fetched before the first commits, never more than two windows stage
    at once, and the three days still commit in order, exactly as served."""
    days = ["2026-11-25", "2026-11-26", "2026-11-27"]
    base = sb.transport()
    second_asked, third_asked = threading.Event(), threading.Event()
    staging, most = [0], [0]
    count = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        day = request.url.params.get("updated_from", "")[:10]
        if day == days[0]:
            second_asked.wait(10)  # the first day stages until the second is being fetched beside it
        elif day == days[1]:
            second_asked.set()
        elif day == days[2]:
            third_asked.set()
        return base.handle_request(request)

    class Counted(OrderWindowLoad):
        def __enter__(self):
            with count:
                staging[0] += 1
                most[0] = max(most[0], staging[0])
            return super().__enter__()

        def close_staging(self):
            staged = self._staging_closed
            super().close_staging()
            if not staged:
                with count:
                    staging[0] -= 1

        def finish(self):
            counts = super().finish()  # committed
            committed_order.append(self.window)
            return counts

    monkeypatch.setattr(sync_module, "OrderWindowLoad", Counted)
    client = _client(httpx.MockTransport(handler))
    seen_while_held: list[bool] = []
    committed_order: list[str] = []

    def hold_the_merge_lock(locked: threading.Event) -> None:
        with psycopg.connect(migrated_db) as other:  # a transaction: the lock is held until it ends
            other.execute("select pg_advisory_xact_lock(%s)", (ORDERS.lock_key,))
            locked.set()
            seen_while_held.append(third_asked.wait(15))
            committed = other.execute("select count(*) from taptouch.sync_marks").fetchone()[0]
            seen_while_held.append(committed == 0)

    locked = threading.Event()
    holder = threading.Thread(target=hold_the_merge_lock, args=(locked,))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        holder.start()
        assert locked.wait(10)
        reported = [
            w.key
            for w, _ in sync_orders_windows(
                client, lambda: psycopg.connect(migrated_db, autocommit=True), _windows(*days), _run(conn), in_flight=2
            )
        ]
        holder.join()
        loaded = dict(conn.execute("select order_id, updated_at from taptouch.orders").fetchall())
    assert seen_while_held == [True, True]  # the third day was asked for while nothing had committed
    assert most[0] == 2
    assert reported == days and committed_order == days
    expected = {
        o["id"]: datetime.fromisoformat(o["updated_at"])
        for s in sb.store_ids()
        for d in days
        for o in sb.orders_in_window(s, *day_window(d))
    }
    assert loaded == expected


def test_a_window_waiting_on_the_api_outlasts_a_short_idle_in_transaction_timeout(sb, migrated_db):
    """A window's transaction is open while its pages are fetched; a DBA's
    idle_in_transaction_session_timeout (here 1 s) would end it while the API makes the run wait
    (a Retry-After can be 15 minutes), and again on every retry. The load raises the limit until
    its transaction ends: the session keeps the server's afterwards."""
    server_ms = 1000
    base = sb.transport()
    asked = []

    def slow_first_page(request: httpx.Request) -> httpx.Response:
        if "/orders" in request.url.path:
            asked.append(request.url.path)
            if len(asked) == 1:
                time.sleep(1.6)  # the window's transaction is open, idle, meanwhile
        return base.handle_request(request)

    client = _client(httpx.MockTransport(slow_first_page))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(f"alter database {conn.info.dbname} set idle_in_transaction_session_timeout = {server_ms}")
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        result = sync_module.sync_orders_window(client, conn, OrderWindow.day(D1), _run(conn))
        after = conn.execute("show idle_in_transaction_session_timeout").fetchone()[0]
        loaded = {r[0] for r in conn.execute("select order_id from taptouch.orders")}
    assert result.failures == [] and len(asked) > 1
    expected = {o["id"] for s in sb.store_ids() for o in sb.orders_in_window(s, *day_window(D1))}
    assert loaded == expected and expected
    assert after == "1s"  # the session's own limit is untouched


@pytest.mark.parametrize(
    ("server_ms", "inside"),
    [(0, "0"), (1000, "1h"), (3_599_999, "1h"), (3_600_000, "1h"), (7_200_000, "2h")],
)
def test_the_load_raises_only_a_limit_below_an_hour_and_only_in_its_transaction(migrated_db, server_ms, inside):
    """0 (no limit) and a limit of an hour or more stay; a lower one is an hour inside the load's
    transaction, and the server's again after it. An hour outlasts the client's longest wait for
    one request: a Retry-After at its cap, then the retry budget."""
    assert (MAX_RETRY_AFTER + ClientOptions().retry_budget) * 1000 <= loader_module.IDLE_IN_TRANSACTION_FLOOR_MS
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(f"set idle_in_transaction_session_timeout = {server_ms}")
        before = conn.execute("show idle_in_transaction_session_timeout").fetchone()[0]
        with OrderWindowLoad(conn, window=D1) as load:
            during = conn.execute("show idle_in_transaction_session_timeout").fetchone()[0]
            load.finish()
        after = conn.execute("show idle_in_transaction_session_timeout").fetchone()[0]
    assert (during, after) == (inside, before)
