"""The orders merge's cheaper paths keep every result exact (issue 23, item 3).

- The sales aggregates of a store-day that a later window adds new orders to are the held rows
  plus the new orders' rows (``aggregates.add_staged``), equal to a from-scratch recomputation;
  a window that replaces an order recomputes that order's store-days whole.
- ``aggregates.COLUMNS`` names every aggregate table's columns in table order.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from pipelines.warehouse import aggregates
from pipelines.warehouse.loader import OrderWindowLoad, load_stores, store_timezones
from taptouch_sandbox import Sandbox, SandboxConfig

END = date(2026, 11, 20)


def _windows(sb: Sandbox, days: int) -> list[tuple[str, datetime, datetime, list[tuple[int, list[bytes]]]]]:
    """Every UTC day's orders, per store, as the API would list them (exact JSON bytes)."""
    first = datetime(END.year, END.month, END.day, tzinfo=UTC) - timedelta(days=days)
    out = []
    for i in range(days + 2):
        start = first + timedelta(days=i)
        end = start + timedelta(days=1)
        pages = []
        for sid in sb.store_ids():
            texts = [
                sb._data.order_text(oid).encode()
                for oid in sb._data.window_ids(sid, int(start.timestamp()), int(end.timestamp()))
            ]
            if texts:
                pages.append((sid, texts))
        out.append((start.date().isoformat(), start, end, pages))
    return out


def _load(conn: psycopg.Connection, key: str, start: datetime, end: datetime, pages: list) -> None:
    with OrderWindowLoad(conn, window=key, run_id="test", timezones=store_timezones(conn), full=True) as load:
        for sid, texts in pages:
            load.add_page(sid, texts)
        for sid, _ in pages:
            load.store_listed(sid, end, (start, end, end))
        load.finish()


def _differences(conn: psycopg.Connection) -> dict:
    with conn.transaction():
        return aggregates.mismatches(conn.cursor())


@pytest.fixture
def spies(monkeypatch) -> dict[str, list[int]]:
    """What each window's merge did to the aggregates: orders added, store-days recomputed."""
    seen: dict[str, list[int]] = {"added": [], "recomputed": []}
    add, recompute = aggregates.add_staged, aggregates.recompute

    def add_spy(cur, accepted):
        seen["added"].append(add(cur, accepted))
        return seen["added"][-1]

    def recompute_spy(cur):
        seen["recomputed"].append(recompute(cur))
        return seen["recomputed"][-1]

    monkeypatch.setattr(aggregates, "add_staged", add_spy)
    monkeypatch.setattr(aggregates, "recompute", recompute_spy)
    return seen


def test_new_orders_are_added_to_held_store_days_and_replaced_ones_recomputed(migrated_db, spies):
    sb = Sandbox(SandboxConfig(seed=3, stores=2, days=3, orders_per_day=40, end_date=END))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, sb.stores())
        assert spies["recomputed"] == [0]  # the new stores' aggregates (they hold no order yet)
        spies["recomputed"].clear()
        windows = _windows(sb, 3)
        for key, start, end, pages in windows:
            _load(conn, key, start, end, pages)
            assert _differences(conn) == {}
        # a first load reads no order back: every window added its orders, none recomputed a day
        assert sum(spies["added"]) > 100
        assert spies["recomputed"] == [0] * len(windows)
        # store-days that two windows filled (local days straddle UTC days)
        straddling = conn.execute(
            "select count(*) from (select store_id, business_date from taptouch.orders"
            " group by 1, 2 having min(updated_at)::date <> max(updated_at)::date) d"
        ).fetchone()[0]
        assert straddling > 0

        # an edit at the source (a refund): the window stages only that order, a replacement
        oid = conn.execute(
            "select order_id from taptouch.orders where status = 'completed' order by order_id limit 1"
        ).fetchone()[0]
        edited = sb.edit_order(oid, status="refunded")
        at = datetime.fromisoformat(edited["updated_at"]).astimezone(UTC)
        start = datetime(at.year, at.month, at.day, tzinfo=UTC)
        key = start.date().isoformat()
        pages = next(p for k, _, _, p in _windows(sb, 3) if k == key)
        spies["added"].clear()
        spies["recomputed"].clear()
        _load(conn, key, start, start + timedelta(days=1), pages)
        assert spies["recomputed"][0] >= 1  # the refunded order's store-day, recomputed whole
        assert conn.execute("select status from taptouch.orders where order_id = %s", (oid,)).fetchone() == (
            "refunded",
        )
        assert _differences(conn) == {}


def test_the_declared_columns_are_the_tables_columns(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        for table, cols in aggregates.COLUMNS.items():
            held = conn.execute(
                "select array_agg(column_name::text order by ordinal_position) from information_schema.columns"
                " where table_schema = 'taptouch' and table_name = %s",
                (table,),
            ).fetchone()[0]
            assert tuple(held) == cols, table


def test_the_merge_skips_only_the_foreign_key_checks_it_proves(migrated_db, monkeypatch):
    from pipelines.warehouse import merge

    sb = Sandbox(SandboxConfig(seed=4, stores=1, days=1, orders_per_day=20, end_date=END))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, sb.stores())
        role = "select current_setting('session_replication_role')"
        with conn.transaction(), conn.cursor() as cur:
            assert merge.may_skip_reference_checks(cur)  # the tests' role is a superuser
            with merge.references_proven(cur):
                assert cur.execute(role).fetchone() == ("replica",)
            assert cur.execute(role).fetchone() == ("origin",)
        # without the privilege the checks run as usual
        monkeypatch.setitem(merge._MAY_SKIP, conn, False)
        with conn.transaction(), conn.cursor() as cur, merge.references_proven(cur):
            assert cur.execute(role).fetchone() == ("origin",)
        monkeypatch.undo()
        for key, start, end, pages in _windows(sb, 1):
            _load(conn, key, start, end, pages)
        # the constraints stay declared and hold for every other writer
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(
                "insert into taptouch.order_payments (order_id, payment_id, method, amount, tip, surcharge)"
                " values (1, 1, 'cash', 1, 0, 0)"
            )
        orphans = conn.execute(
            "select (select count(*) from taptouch.order_items i where not exists"
            " (select from taptouch.orders o where o.order_id = i.order_id)),"
            " (select count(*) from taptouch.listing_proof_orders p where not exists"
            " (select from taptouch.listing_proofs l where l.proof_id = p.proof_id)),"
            " (select count(*) from taptouch.order_items), (select count(*) from taptouch.listing_proof_orders)"
        ).fetchone()
        assert orphans[:2] == (0, 0) and orphans[2] > 0 and orphans[3] > 0
