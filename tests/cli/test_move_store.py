"""``taptouch-sync move-store STORE ACCOUNT``: a store whose grant moved to another account takes
that account in every table that carries one (its orders' child rows too), in one transaction, so
that no view or check sees the store split between accounts; the other stores are untouched."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pipelines.cli import main
from pipelines.warehouse import aggregates
from pipelines.warehouse.views import apply_views
from tests.support.state_model import DAY, World


def accounts_of(conn, store_id: int) -> dict[str, set[str]]:
    """table -> the accounts the store's rows carry there (children through their order)."""
    tables = conn.execute(
        "select c.table_name, bool_or(c.column_name = 'store_id') from information_schema.columns c"
        " join information_schema.columns a using (table_schema, table_name)"
        " join information_schema.tables t using (table_schema, table_name)"
        " where c.table_schema = 'taptouch' and t.table_type = 'BASE TABLE' and a.column_name = 'account'"
        " and c.column_name in ('store_id', 'order_id') group by c.table_name"
    ).fetchall()
    out = {}
    for table, by_store in tables:
        name = sql.Identifier("taptouch", table)
        query = (
            sql.SQL("select distinct account from {} where store_id = %s").format(name)
            if by_store
            else sql.SQL(
                "select distinct c.account from {} c join taptouch.orders o using (order_id) where o.store_id = %s"
            ).format(name)
        )
        found = {r[0] for r in conn.execute(query, (store_id,))}
        if found:
            out[table] = found
    return out


@pytest.fixture
def loaded(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
    world = World(migrated_db, seed=5)
    world.advance(DAY)
    world.sync(full=True)
    world.reconcile()  # proofs, candidates and deletion bookkeeping too
    yield world
    world.close()


def test_a_store_moves_to_another_account_in_every_table(loaded, migrated_db, capsys, monkeypatch):
    monkeypatch.setenv("TAPTOUCH_ACCOUNTS", "north,south")
    moved, other = loaded.store_ids
    conn = loaded.conn
    before = accounts_of(conn, moved)
    assert {"orders", "order_items", "sales_days", "sync_marks", "listing_proofs"} <= set(before)
    assert all(found == {"default"} for found in before.values())

    assert main(["move-store", str(moved), "south", "--database-url", migrated_db]) == 0
    out = capsys.readouterr().out
    assert f"Store {moved} handed to account south" in out and "taptouch.order_items:" in out
    after = accounts_of(conn, moved)
    assert set(after) == set(before) and all(found == {"south"} for found in after.values()), after
    assert all(found == {"default"} for found in accounts_of(conn, other).values())
    with conn.transaction(), conn.cursor() as cur:
        assert aggregates.mismatches(cur) == {}
    daily = conn.execute("select distinct account from analytics.daily_store_sales where store_id = %s", (moved,))
    assert {r[0] for r in daily} <= {"south"}

    assert main(["move-store", str(moved), "south", "--database-url", migrated_db]) == 0
    assert "every row already carries account south" in capsys.readouterr().out

    # a run of the old account that merged after the move (its rows take its session's account):
    # the command run again moves them, though the store's row names south already
    conn.execute("update taptouch.orders set account = 'default' where store_id = %s", (moved,))
    assert main(["move-store", str(moved), "south", "--database-url", migrated_db]) == 0
    assert "taptouch.orders:" in capsys.readouterr().out
    assert all(found == {"south"} for found in accounts_of(conn, moved).values())


@pytest.mark.parametrize(
    "argv, says",
    [
        (["999999", "south"], "store 999999 is not in taptouch.stores"),
        (["7101", "South!"], "'South!' is not an account of this code location"),
        (["7101", ""], "'' is not an account"),
        (["7101", "north,south"], "'north,south' is not an account"),
        (["7101", "west"], "TAPTOUCH_ACCOUNTS names north, south"),
    ],
)
def test_a_store_that_cannot_move_says_why(loaded, migrated_db, capsys, monkeypatch, argv, says):
    monkeypatch.setenv("TAPTOUCH_ACCOUNTS", "north,south")
    assert main(["move-store", *argv, "--database-url", migrated_db]) == 2
    assert says in capsys.readouterr().err
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("select count(*) from taptouch.orders where account <> 'default'").fetchone()[0] == 0


def test_moving_again_after_an_old_account_run_merged_keeps_one_aggregate_row_per_group(migrated_db, monkeypatch):
    # the documented cure for a run of the old account that merged after the move (run the command
    # again) left the store-day's sales rows twice under the new account (updated in place beside
    # the rows the earlier move had already moved): daily_store_sales showed the day twice
    from pipelines.warehouse.loader import OrderWindowLoad, load_stores
    from pipelines.warehouse.ownership import move_store
    from tests.support import factories as f

    monkeypatch.setenv("TAPTOUCH_ACCOUNTS", "north,south")
    with psycopg.connect(migrated_db, autocommit=True) as north, psycopg.connect(migrated_db, autocommit=True) as south:
        apply_views(south)
        north.execute("select set_config('taptouch.account', 'north', false)")
        south.execute("select set_config('taptouch.account', 'south', false)")
        load_stores(north, [f.store(7101)])
        tz = {7101: "Australia/Melbourne"}
        with OrderWindowLoad(north, window="2026-11-02", timezones=tz) as load:
            load.add_page(7101, [f.order(1)])
            load.finish()
        late = OrderWindowLoad(north, window="2026-11-02", timezones=tz)  # north's run, staged before the move
        late.__enter__()
        late.add_page(7101, [f.order(2, created_at="2026-11-02T13:00:00+11:00")])
        late.close_staging()
        move_store(south, 7101, "south")
        late.finish()  # merges after the move, under north
        move_store(south, 7101, "south")  # the cure

        days = south.execute("select account, order_count from taptouch.sales_days where store_id = 7101").fetchall()
        assert days == [("south", 2)]
        with south.transaction(), south.cursor() as cur:
            assert aggregates.mismatches(cur) == {}
        daily = south.execute("select account, order_count from analytics.daily_store_sales where store_id = 7101")
        assert daily.fetchall() == [("south", 2)]
