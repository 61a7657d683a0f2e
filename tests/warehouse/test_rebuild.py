"""``taptouch-sync rebuild`` re-derives every typed table from raw, as a user runs it.

Typed columns are damaged by SQL (what a parser bug, or a hand edit, leaves behind), the command
runs (``main([...])`` in process, and the console script in a subprocess), and the warehouse equals
what the record boundary derives from raw again; the report says what changed; no history is
written; quarantined records that now pass are loaded, never over a newer version; an interrupted
rebuild finishes when run again.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from pipelines import cli
from pipelines.warehouse import rebuild as rebuild_module
from pipelines.warehouse.loader import OrderWindowLoad, load_inventory, load_stores
from taptouch_resource import jsonutil
from tests.support import factories as f

D = Decimal
ROOT = Path(__file__).resolve().parents[2]

TYPED = {
    "orders": "select order_id, store_id, number, status, created_at, updated_at, completed_at, business_date, subtotal,"
    " total, tips, cashier_name, updated_at_exact, account, deleted_at, raw_hash from taptouch.orders"
    " order by order_id",
    "order_items": "select order_id, item_id, product_id, name, quantity, unit_price, total, modifiers::text, account"
    " from taptouch.order_items order by 1, 2",
    "order_payments": "select order_id, payment_id, method, amount, paid_at, account from taptouch.order_payments"
    " order by 1, 2",
    "order_refunds": "select order_id, refund_id, amount, reason, account from taptouch.order_refunds order by 1, 2",
    "stores": "select store_id, name, timezone, address::text, updated_at, account from taptouch.stores order by 1",
    "inventory_levels": "select store_id, product_id, name, on_hand, cost_price, updated_at from taptouch.inventory_levels"
    " order by 1, 2",
}
HISTORY = (
    "select count(*) from taptouch.sync_log",
    "select count(*) from taptouch.inventory_snapshots",
    "select count(*) from taptouch.sync_marks",
)


def state(conn) -> dict:
    return {name: conn.execute(q).fetchall() for name, q in TYPED.items()}


def history(conn) -> list:
    return [conn.execute(q).fetchone()[0] for q in HISTORY]


def load_orders(conn, store_id, orders, window="2026-11-02"):
    with OrderWindowLoad(conn, window=window) as w:
        w.add_page(store_id, [jsonutil.dumps(o).encode() for o in orders])
        return w.finish()


@pytest.fixture
def warehouse(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, "Australia/Melbourne"), f.store(7102, "Australia/Perth")])
        load_orders(conn, 7101, [f.order(i, refunds=["5.00"] if i % 3 == 0 else ()) for i in range(1, 31)])
        load_orders(
            conn, 7102, [f.order(100 + i, store_id=7102, created_at="2026-11-02T17:30:00+00:00") for i in range(1, 11)]
        )
        load_inventory(conn, 7101, [f.inventory(p) for p in range(500, 520)], snapshot_date=date(2026, 11, 27))
        yield migrated_db, conn


def run_rebuild(url, capsys, *extra) -> str:
    code = cli.main(["rebuild", "--database-url", url, *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def report_row(out: str, table: str) -> tuple[int, ...]:
    for line in out.splitlines():
        if line.startswith(f"taptouch.{table} "):
            return tuple(int(x) for x in line.split()[1:])
    raise AssertionError(f"{table} missing from the report:\n{out}")


def test_rebuild_repairs_damaged_typed_columns_and_reports_them(warehouse, capsys):
    url, conn = warehouse
    good = state(conn)
    kept = history(conn)
    # damage: typed values that no longer match raw (a parser bug's leftovers, a hand edit)
    conn.execute("update taptouch.orders set total = total + 1, business_date = business_date - 3 where order_id = 5")
    conn.execute("update taptouch.orders set cashier_name = 'nobody' where order_id in (7, 8)")
    conn.execute("update taptouch.order_items set name = 'Wrong', quantity = 9 where order_id = 9 and item_id = 1")
    conn.execute("delete from taptouch.order_payments where order_id = 10")
    conn.execute("delete from taptouch.order_refunds where order_id = 12")
    conn.execute("insert into taptouch.order_refunds (order_id, refund_id, amount) values (11, 999, 1.00)")
    conn.execute("update taptouch.stores set name = 'Renamed', timezone = 'UTC' where store_id = 7102")
    conn.execute("update taptouch.orders set business_date = '2000-01-01' where store_id = 7102")
    conn.execute("update taptouch.inventory_levels set on_hand = -1 where product_id in (501, 502, 503)")
    assert state(conn) != good

    out = run_rebuild(url, capsys, "--batch-size", "7")
    assert state(conn) == good
    assert history(conn) == kept  # no sync_log row, no snapshot, no mark
    assert report_row(out, "orders") == (40, 3, 0)
    assert report_row(out, "order_items")[1:] == (1, 0)
    assert report_row(out, "order_payments")[1:] == (1, 0)
    assert report_row(out, "order_refunds")[1:] == (2, 0)  # one restored, one removed
    assert report_row(out, "stores") == (2, 1, 0)
    assert report_row(out, "inventory_levels") == (20, 3, 0)
    # store 7102's zone came back from raw: its orders' dates followed (then were checked again)
    assert "business dates re-derived after a zone change: 10" in out

    out = run_rebuild(url, capsys)
    assert "Nothing changed" in out and report_row(out, "orders") == (40, 0, 0)
    assert state(conn) == good and history(conn) == kept


def test_rebuild_keeps_each_rows_account_and_soft_deletes(warehouse, capsys):
    url, conn = warehouse
    conn.execute("update taptouch.orders set account = 'north' where order_id = 4")
    conn.execute("update taptouch.order_items set account = 'north' where order_id = 4")
    conn.execute("update taptouch.orders set deleted_at = now() where order_id = 6")
    conn.execute("update taptouch.order_items set name = 'x' where order_id = 4")
    run_rebuild(url, capsys)
    assert set(conn.execute("select account from taptouch.order_items where order_id = 4").fetchall()) == {("north",)}
    assert conn.execute("select name from taptouch.order_items where order_id = 4 order by item_id").fetchall() == [
        ("Latte",),
        ("Big breakfast",),
    ]
    assert conn.execute("select deleted_at is not null from taptouch.orders where order_id = 6").fetchone() == (True,)


def test_an_interrupted_rebuild_finishes_when_run_again(warehouse, capsys, monkeypatch):
    url, conn = warehouse
    good = state(conn)
    conn.execute("update taptouch.orders set total = 0")
    real = rebuild_module._replace_children
    calls = []

    def dies_in_the_third_batch(cur, report, of):
        calls.append(of)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the operator's ^C, mid-batch
        return real(cur, report, of)

    monkeypatch.setattr(rebuild_module, "_replace_children", dies_in_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        cli.main(["rebuild", "--database-url", url, "--batch-size", "10"])
    # two batches of 10 committed whole; the third rolled back whole
    assert conn.execute("select count(*) from taptouch.orders where total = 0").fetchone()[0] == 20
    monkeypatch.setattr(rebuild_module, "_replace_children", real)
    out = run_rebuild(url, capsys, "--batch-size", "10")
    assert report_row(out, "orders") == (40, 20, 0)
    assert state(conn) == good


def quarantine(conn, entity, key, store_id, record, reason="an old rule refused it"):
    conn.execute(
        "insert into taptouch.quarantine (entity, record_key, store_id, reason, raw) values (%s, %s, %s, %s,"
        " %s::jsonb) returning quarantine_id",
        (entity, key, store_id, reason, jsonutil.dumps(record)),
    )


def test_rebuild_loads_quarantined_records_that_now_pass_never_over_a_newer_version(warehouse, capsys):
    url, conn = warehouse
    kept = history(conn)
    # a valid order a former rule quarantined, as two versions; the newer must win
    quarantine(conn, "order", "900", 7101, f.order(900, updated_at="2026-11-02T13:00:00+11:00", status="open"))
    quarantine(conn, "order", "900", 7101, f.order(900, updated_at="2026-11-02T14:00:00+11:00", refunds=["2.00"]))
    # an older version of an order the warehouse holds newer: not loaded, but resolved (superseded)
    quarantine(
        conn,
        "order",
        "3",
        7101,
        f.order(3, created_at="2026-11-02T10:00:00+11:00", updated_at="2026-11-01T10:00:00+11:00", status="open"),
    )
    # still invalid: stays unresolved
    bad = f.order(901)
    bad["total"] = D("1.00")
    quarantine(conn, "order", "901", 7101, bad)
    quarantine(conn, "store", "7103", None, f.store(7103, "Pacific/Auckland"))
    quarantine(conn, "inventory", "600", 7101, f.inventory(600))
    before = conn.execute("select order_id, total, updated_at from taptouch.orders where order_id = 3").fetchall()

    out = run_rebuild(url, capsys)
    assert conn.execute(
        "select status, updated_at_exact, business_date from taptouch.orders where order_id = 900"
    ).fetchone() == ("completed", D(1793588400), date(2026, 11, 2))
    assert conn.execute("select amount from taptouch.order_refunds where order_id = 900").fetchall() == [(D("2.00"),)]
    assert conn.execute("select count(*) from taptouch.order_items where order_id = 900").fetchone()[0] == 2
    assert (
        conn.execute("select order_id, total, updated_at from taptouch.orders where order_id = 3").fetchall() == before
    )
    assert conn.execute("select timezone from taptouch.stores where store_id = 7103").fetchone() == (
        "Pacific/Auckland",
    )
    assert conn.execute(
        "select on_hand from taptouch.inventory_levels where store_id = 7101 and product_id = 600"
    ).fetchone() == (D("12.5"),)
    unresolved = conn.execute("select entity, record_key from taptouch.quarantine where resolved_at is null").fetchall()
    assert unresolved == [("order", "901")]
    assert history(conn) == kept
    lines = [line.split() for line in out.splitlines()]
    assert ["order", "4", "1", "3", "1"] in lines  # examined, loaded, resolved, still invalid
    assert ["store", "1", "1", "1", "0"] in lines and ["inventory", "1", "1", "1", "0"] in lines
    # again: nothing more to do
    out = run_rebuild(url, capsys)
    assert ["order", "1", "0", "0", "1"] in [line.split() for line in out.splitlines()]


def test_a_product_a_later_listing_no_longer_had_is_not_brought_back(warehouse, capsys):
    url, conn = warehouse
    quarantine(conn, "inventory", "601", 7101, f.inventory(601))
    conn.execute("update taptouch.quarantine set quarantined_at = now() - interval '1 day' where record_key = '601'")
    load_inventory(conn, 7101, [f.inventory(p) for p in range(500, 520)], snapshot_date=date(2026, 11, 28))
    run_rebuild(url, capsys)
    assert conn.execute("select count(*) from taptouch.inventory_levels where product_id = 601").fetchone()[0] == 0


def test_the_console_script_runs_it(warehouse):
    url, conn = warehouse
    conn.execute("update taptouch.orders set subtotal = 1 where order_id = 2")
    script = Path(sys.executable).with_name("taptouch-sync")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pipelines.cli"]
    done = subprocess.run(
        [*command, "rebuild", "--database-url", url], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert report_row(done.stdout, "orders") == (40, 1, 0) and "1 row(s) changed." in done.stdout
    assert conn.execute("select subtotal from taptouch.orders where order_id = 2").fetchone() == (D("36.60"),)
    bad = subprocess.run(
        [*command, "rebuild", "--database-url", url, "--batch-size", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--batch-size" in bad.stderr
