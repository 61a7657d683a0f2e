"""Hostile review of upgrades: warehouses written by the code of an earlier migration level,
migrated to head (each test builds the old state by migrating a fresh database up to N and
writing rows as that code did, with raw SQL)."""

from __future__ import annotations

import shutil
import tempfile
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pipelines.warehouse.migrations import migrate, migrations_dir


def _migrations_up_to(n: int) -> Path:
    target = Path(tempfile.mkdtemp(prefix="migrations-"))
    for path in sorted(migrations_dir().glob("*.sql")):
        if int(path.name[:4]) <= n:
            shutil.copy(path, target / path.name)
    return target


def _store(conn, store_id=7101, tz="Australia/Sydney"):
    conn.execute(
        "insert into taptouch.stores (store_id, name, status, timezone, currency, updated_at, raw)"
        " values (%s, 'Old', 'active', %s, 'AUD', '2026-01-01T00:00:00Z', '{}')",
        (store_id, tz),
    )


def _order(
    conn,
    order_id,
    *,
    store_id=7101,
    total="10.00",
    status="completed",
    created="2026-03-02T01:00:00Z",
    updated="2026-03-02T01:00:00Z",
    business_date="2026-03-02",
    deleted_at=None,
):
    conn.execute(
        "insert into taptouch.orders (order_id, store_id, number, source, fulfillment_type, status, created_at,"
        " updated_at, business_date, subtotal, discount, surcharge, rounding, tax, total, tips, raw, deleted_at)"
        " values (%s, %s, 'A1', 'pos', 'dine_in', %s, %s, %s, %s, %s, 0, 0, 0, 0, %s, 0, %s, %s)",
        (
            order_id,
            store_id,
            status,
            created,
            updated,
            business_date,
            total,
            total,
            Jsonb({"id": order_id, "store_id": store_id, "updated_at": updated}),
            deleted_at,
        ),
    )


# ------------------------------------------------------------------ 0015 on huge, legal old refunds


def test_0015_upgrades_a_warehouse_holding_an_order_whose_refunds_exceed_numeric_14_2(make_database):
    """Before cad74eb (2026-12-05) the boundary checked each refund against numeric(12,2) only; an
    order with 101 refunds of 9,999,999,999.99 loaded into taptouch.orders / order_refunds.
    Migration 0015 sums them into order_history.refunds numeric(14,2): the upgrade must not fail."""
    url = make_database()
    migrate(url, directory=_migrations_up_to(14))
    big = Decimal("9999999999.99")
    with psycopg.connect(url) as conn:
        _store(conn)
        _order(conn, 1, status="refunded")
        for i in range(101):
            conn.execute(
                "insert into taptouch.order_refunds (order_id, refund_id, amount) values (1, %s, %s)", (i + 1, big)
            )
    migrate(url)  # raised MigrationError: 0015 ... numeric field overflow (the warehouse stayed at 0014)
    with psycopg.connect(url) as conn:
        assert conn.execute("select max(version) from taptouch_meta.schema_migrations").fetchone()[0] >= 29


def test_a_warehouse_that_applied_0015_before_its_amendment_counts_it_applied(migrated_db):
    """0015 was amended (the refund sums above); a warehouse that applied its earlier text is not
    told the file changed: status says applied, and migrate goes on. Any other checksum still is."""
    from pipelines.warehouse.migrations import AMENDED, MigrationError, status

    for earlier in sorted(AMENDED["0015_order_history.sql"]):
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            conn.execute("update taptouch_meta.schema_migrations set checksum = %s where version = 15", (earlier,))
        assert [s.state for s in status(migrated_db) if s.version == 15] == ["applied"]
        migrate(migrated_db)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("update taptouch_meta.schema_migrations set checksum = %s where version = 15", ("0" * 64,))
    assert [s.state for s in status(migrated_db) if s.version == 15] == ["changed"]
    with pytest.raises(MigrationError, match="0015_order_history.sql was changed after it was applied"):
        migrate(migrated_db)


# ------------------------------------------------ an upgraded warehouse equals a from-scratch load

_COPIED = ("stores", "orders", "order_items", "order_payments", "order_refunds", "inventory_levels")


def _columns(conn, table):
    return [
        r[0]
        for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = 'taptouch'"
            " and table_name = %s order by ordinal_position",
            (table,),
        )
    ]


def _copy_rows(src, dst, table):
    cols = [c for c in _columns(dst, table) if c in set(_columns(src, table))]
    names = ", ".join(f'"{c}"' for c in cols)
    with (
        src.cursor().copy(f"copy (select {names} from taptouch.{table}) to stdout") as out,
        dst.cursor().copy(f"copy taptouch.{table} ({names}) from stdin") as into,
    ):
        for chunk in out:
            into.write(chunk)


def _rows(conn, query):
    return sorted(conn.execute(query).fetchall(), key=repr)


@pytest.mark.parametrize("level", [3, 4, 8, 14])
def test_an_upgraded_warehouse_holds_what_a_fresh_load_writes(level, migrated_db, make_database, monkeypatch):
    from pipelines.warehouse import aggregates
    from tests.support.state_model import DAY, World

    monkeypatch.setenv("TAPTOUCH_RECONCILE_CONFIRM_S", "60")
    world = World(migrated_db, seed=5)
    try:
        world.advance(DAY)
        world.sync(full=True)
        for i, oid in enumerate(world.live[:8]):
            world.edit(oid, i)
        world.advance(600)
        world.sync(full=True)
        fresh = world.conn
        gone = fresh.execute(
            "select order_id from taptouch.orders where status = 'completed' order by order_id limit 1"
        ).fetchone()[0]
        deleting = level >= 7  # taptouch.orders.deleted_at: migration 0007
        with fresh.transaction(), fresh.cursor() as cur:  # as deletions._confirm marks a confirmed deletion
            cur.execute("update taptouch.orders set deleted_at = now() where order_id = %s and %s", (gone, deleting))
            cur.execute(
                "insert into taptouch.deletion_log (order_id, deleted_at, account)"
                " select order_id, deleted_at, account from taptouch.orders where order_id = %s and deleted_at is not null",
                (gone,),
            )
            aggregates.refresh_orders(cur, [gone])
        assert fresh.execute("select count(*) from taptouch.orders where deleted_at is not null").fetchone()[0] == int(
            deleting
        )

        old = make_database()
        migrate(old, directory=_migrations_up_to(level))
        with psycopg.connect(old) as conn:
            for table in _COPIED:
                _copy_rows(fresh, conn, table)
        migrate(old)
        with psycopg.connect(old) as up:
            for table in aggregates.TABLES:
                assert _rows(up, f"select * from taptouch.{table}") == _rows(
                    fresh, f"select * from taptouch.{table}"
                ), table
            with up.transaction():
                assert aggregates.mismatches(up.cursor()) == {}
            current = (
                "select h.order_id, h.version, h.updated_at, h.store_id, h.status, h.total, h.refunds, h.raw, h.account"
                " from taptouch.order_history h join taptouch.orders o on o.order_id = h.order_id"
                " and coalesce(o.updated_at_exact, taptouch.exact_epoch(o.updated_at)) = h.version"
            )
            assert _rows(up, current) == _rows(fresh, current)
            log = "select order_id, deleted_at, restored_at, account from taptouch.deletion_log"
            assert _rows(up, log) == _rows(fresh, log)
    finally:
        world.close()


# ------------------------------- pre-0005 rows: versions finer than a microsecond (.NET's 7 digits)


def test_a_pre_0005_order_listed_again_after_the_upgrade_keeps_one_history_version(make_database):
    """An order loaded before migration 0005 holds updated_at cut to the microsecond and no
    updated_at_exact. 0015 records its current version as exact_epoch(updated_at); the same record
    listed again after the upgrade must be the same version, as in a warehouse loaded fresh."""
    from pipelines.warehouse.loader import load_stores
    from tests.support import factories as f
    from tests.warehouse.test_loader import load_orders

    record = f.order(1, created_at="2026-11-02T12:31:05.1234567+11:00")  # a 7-digit fraction (.NET)
    fresh_url, old_url = make_database(), make_database()
    migrate(fresh_url)
    migrate(old_url, directory=_migrations_up_to(3))
    with psycopg.connect(fresh_url, autocommit=True) as fresh, psycopg.connect(old_url, autocommit=True) as old:
        load_stores(fresh, [f.store(7101, "Australia/Melbourne")])
        load_orders(fresh, [(7101, [record])])
        for table in ("stores", "orders", "order_items", "order_payments", "order_refunds"):
            _copy_rows(fresh, old, table)  # what the code of 0003 wrote: updated_at cut, as it parsed it
        migrate(old_url)
        for conn in (fresh, old):
            load_orders(conn, [(7101, [record])])  # the next sync lists it again, unchanged
        history = "select order_id, version, status, total, refunds, raw from taptouch.order_history order by 1, 2"
        assert old.execute(history).fetchall() == fresh.execute(history).fetchall()


def test_a_quarantine_row_open_before_0027_gets_the_version_a_fresh_load_gives_it(make_database):
    """0027 reads an open row's version with ::timestamptz, which rounds a 7-digit fraction to the
    microsecond (upwards for half of them); the loader keeps every digit. The valid version with
    that same updated_at then resolves the row in a fresh warehouse and leaves it open forever in
    the upgraded one."""
    from pipelines.warehouse.loader import load_stores
    from tests.support import factories as f
    from tests.warehouse.test_loader import load_orders

    stamp = "2026-11-02T12:31:05.1234567+11:00"
    valid = f.order(1, created_at=stamp)
    refused = dict(valid, total=valid["total"] + 1)  # total != subtotal - discount + ...: quarantined
    fresh_url, old_url = make_database(), make_database()
    migrate(fresh_url)
    migrate(old_url, directory=_migrations_up_to(26))
    with psycopg.connect(fresh_url, autocommit=True) as fresh, psycopg.connect(old_url, autocommit=True) as old:
        load_stores(fresh, [f.store(7101, "Australia/Melbourne")])
        load_orders(fresh, [(7101, [refused])])
        _copy_rows(fresh, old, "stores")
        _copy_rows(fresh, old, "quarantine")  # the row as the code of 0026 wrote it (no version column)
        migrate(old_url)
        version = "select record_key, updated_at_exact from taptouch.quarantine"
        assert old.execute(version).fetchall() == fresh.execute(version).fetchall()
        for conn in (fresh, old):
            load_orders(conn, [(7101, [valid])])
        still_open = "select record_key from taptouch.quarantine where resolved_at is null"
        assert old.execute(still_open).fetchall() == fresh.execute(still_open).fetchall() == []


def test_a_history_version_recorded_twice_before_0030_is_one_version_after_it(make_database):
    """The same, where the re-listing happened on a warehouse at 0029 (two versions already held):
    migrating further leaves the one a fresh load holds."""
    from pipelines.warehouse.loader import load_stores
    from tests.support import factories as f
    from tests.warehouse.test_loader import load_orders

    record = f.order(1, created_at="2026-11-02T12:31:05.1234567+11:00")
    fresh_url, old_url = make_database(), make_database()
    migrate(fresh_url)
    migrate(old_url, directory=_migrations_up_to(3))
    with psycopg.connect(fresh_url, autocommit=True) as fresh, psycopg.connect(old_url, autocommit=True) as old:
        load_stores(fresh, [f.store(7101, "Australia/Melbourne")])
        load_orders(fresh, [(7101, [record])])
        for table in ("stores", "orders", "order_items", "order_payments", "order_refunds"):
            _copy_rows(fresh, old, table)
        migrate(old_url, directory=_migrations_up_to(29))
        load_orders(old, [(7101, [record])])
        migrate(old_url)
        history = "select order_id, version, status, total, refunds, raw from taptouch.order_history order by 1, 2"
        assert old.execute(history).fetchall() == fresh.execute(history).fetchall()
        held = "select order_id, updated_at, updated_at_exact from taptouch.orders"
        assert old.execute(held).fetchall() == fresh.execute(held).fetchall()


@pytest.mark.parametrize("level", [17, 19])
def test_a_cet_store_upgraded_through_0018_and_0026_has_the_hours_of_a_fresh_load(level, make_database):
    from pipelines.warehouse import aggregates
    from pipelines.warehouse.loader import load_stores
    from tests.support import factories as f
    from tests.warehouse.test_loader import load_orders

    fresh_url, old_url = make_database(), make_database()
    migrate(fresh_url)
    migrate(old_url, directory=_migrations_up_to(level))
    with psycopg.connect(fresh_url, autocommit=True) as fresh, psycopg.connect(old_url, autocommit=True) as old:
        load_stores(fresh, [f.store(7101, "CET")])
        load_orders(
            fresh,
            [
                (
                    7101,
                    [
                        f.order(1, created_at="2026-07-02T00:30:00+02:00"),
                        f.order(2, created_at="2026-07-02T23:30:00+02:00", refunds=("1.00",)),
                    ],
                )
            ],
        )
        for table in ("stores", "orders", "order_items", "order_payments", "order_refunds"):
            _copy_rows(fresh, old, table)
        if level >= 18:  # the code of that level kept them, its hours read at the abbreviation CET (+01:00)
            for table in aggregates.TABLES:
                _copy_rows(fresh, old, table)
            old.execute("update taptouch.sales_hours set local_hour = (local_hour + 23) % 24")
        migrate(old_url)
        for table in aggregates.TABLES:
            assert _rows(old, f"select * from taptouch.{table}") == _rows(fresh, f"select * from taptouch.{table}"), (
                table
            )
