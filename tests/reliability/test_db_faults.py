"""Database faults: terminated mid-merge, statement timeout, the embedded server restarted."""

import threading
import time
from datetime import timedelta

import psycopg
import pytest

from pipelines.sync import day_window, sync_stores
from pipelines.warehouse.db import connect, embedded_database_url, stop_embedded_server
from pipelines.warehouse.migrations import migrate
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Faults, Sandbox, SandboxConfig
from tests.support.reliability import dbfaults
from tests.support.reliability.check import compare
from tests.support.windows import load_window

pytestmark = pytest.mark.reliability


def _version(rows: list[tuple], order_id: int):
    """The updated_at of ``order_id`` in a :func:`dbfaults.snapshot` (order_id, updated_at, total, status, items)."""
    (updated_at,) = [row[1] for row in rows if row[0] == order_id]
    return updated_at


def _assert_rolled_back_then_retried(o: dbfaults.FaultOutcome, conn) -> None:
    assert len(o.rows_before) > 100 and _version(o.rows_before, o.edited_order_id) < o.edited_updated_at
    assert o.rows_after_failure == o.rows_before  # the failed window rolled back whole
    assert o.diff.ok and o.diff.orders_found == o.diff.orders_expected, str(o.diff)  # the rerun loaded it
    assert conn.execute(
        "select updated_at, status from taptouch.orders where order_id = %s", (o.edited_order_id,)
    ).fetchone() == (o.edited_updated_at, "refunded")


def test_connection_terminated_mid_merge(migrated_db, conn):
    o = dbfaults.terminate_mid_merge(migrated_db)
    assert o.error.startswith("AdminShutdown: terminating connection"), o.error
    _assert_rolled_back_then_retried(o, conn)


def test_statement_timeout(migrated_db, conn):
    o = dbfaults.statement_timeout(migrated_db, timeout_ms=300)
    assert o.error == "QueryCanceled: canceling statement due to statement timeout", o.error
    _assert_rolled_back_then_retried(o, conn)


@pytest.mark.slow
def test_embedded_postgres_restarted_during_a_run(embedded_pgdata):
    url = embedded_database_url(embedded_pgdata)
    migrate(url)
    end_date = dbfaults.END_DATE
    sb = Sandbox(
        SandboxConfig(seed=9, stores=3, days=5, end_date=end_date, orders_per_day=40), faults=Faults(latency=0.1)
    )  # ~0.5 s per window: the restart lands mid-run
    days = [end_date - timedelta(days=6) + timedelta(days=i) for i in range(8)]
    errors = []
    with sb.serve() as base_url:
        client = TaptouchClient(
            client_id="sandbox-client",
            client_secret="sandbox-secret",
            base_url=base_url,
            page_size=10,
            requests_per_second=None,
        )

        def run(db_url):
            try:
                with connect(db_url, autocommit=True) as conn:
                    sync_stores(client, conn)
                    for d in days:
                        s, e = day_window(d)
                        load_window(client, conn, d.isoformat(), s, e)
            except psycopg.Error as exc:
                errors.append(exc)

        t = threading.Thread(target=run, args=(url,))
        t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # restart once the first window has committed
            with connect(url, autocommit=True) as probe:
                done = probe.execute(
                    "select count(distinct \"window\") from taptouch.sync_log where entity = 'orders'"
                ).fetchone()[0]
            if done >= 1:
                break
            time.sleep(0.05)
        assert t.is_alive() and done < len(days), "the run finished before the restart; make it slower"
        stop_embedded_server(embedded_pgdata)
        url = embedded_database_url(embedded_pgdata)  # started again
        t.join(120)
        assert errors and isinstance(errors[0], psycopg.OperationalError), errors
        assert "terminat" in str(errors[0]) or "closed" in str(errors[0]) or "shut" in str(errors[0]), str(errors[0])
        errors.clear()
        run(url)  # the retry works
        assert not errors
        with connect(url, autocommit=True) as conn:
            s, _ = day_window(days[0])
            _, e = day_window(days[-1])
            diff = compare(conn, sb, s, e)
        client.close()
    assert diff.ok and diff.orders_found > 500, str(diff)
