"""Which account owns a store: the first account that loaded it (``taptouch.stores.account``).

Taptouch ids are global, so two accounts granted the same store would write each other's rows; any
account other than the owner skips the store (stores, orders, inventory, reconciliation) with a
warning naming both. Two accounts loading a store for the very first time at once may both load it
once. :func:`move_store` hands a store to another account. docs/operating.md, "Several accounts".
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .db import first_value

UNNAMED = "default"  # the one account of a deployment with TAPTOUCH_ACCOUNTS unset (its rows' account)
SESSION_ACCOUNT = f"coalesce(nullif(current_setting('taptouch.account', true), ''), '{UNNAMED}')"


class UnnamedOwnerError(RuntimeError):
    """A deployment that names its accounts lists stores the unnamed account owns (loaded while
    ``TAPTOUCH_ACCOUNTS`` was unset): none of its accounts would ever load them again."""


def session_account(conn: psycopg.Connection) -> str:
    """The account this connection writes rows for (its ``taptouch.account`` setting)."""
    return first_value(conn.execute(f"select {SESSION_ACCOUNT}"))


def foreign_stores(conn: psycopg.Connection, store_ids: list[int]) -> dict[int, str]:
    """store id -> owning account, for the stores of ``store_ids`` another account owns."""
    if not store_ids:
        return {}
    # the store row says who owns it; a store whose row is not loaded yet belongs to the account of
    # its orders, if an orders run loaded some first (one index probe per store)
    rows = conn.execute(
        "select s.store_id, coalesce(st.account, o.account) from unnest(%s::bigint[]) as s(store_id)"
        " left join taptouch.stores st on st.store_id = s.store_id"
        " left join lateral (select account from taptouch.orders where store_id = s.store_id limit 1) o"
        " on st.store_id is null"
        f" where coalesce(st.account, o.account) <> {SESSION_ACCOUNT}",
        (list(store_ids),),
    ).fetchall()
    return dict(rows)


def refuse_unnamed_owner(me: str, foreign: dict[int, str]) -> None:
    """Raise :class:`UnnamedOwnerError` when account ``me`` (a named one) lists stores that the
    unnamed account owns: a deployment that had one account and now names its accounts
    (docs/deploying.md, "Adding a merchant") would skip them for ever, every run succeeding with
    nothing loaded. A named account never writes the unnamed one's rows, so the owner is gone for
    good; the store is handed over with ``taptouch-sync move-store``."""
    orphans = sorted(sid for sid, owner in foreign.items() if owner == UNNAMED)
    if not orphans or me == UNNAMED:
        return
    listed = ", ".join(map(str, orphans))
    raise UnnamedOwnerError(
        f"store(s) {listed} belong to account {UNNAMED!r} (loaded while TAPTOUCH_ACCOUNTS was unset), and this "
        f"deployment names its accounts, so none of them loads these stores any more. Hand each store to the "
        f"account whose credentials list it, e.g. `taptouch-sync move-store {orphans[0]} {me}` (docs/deploying.md, "
        f"'Adding a merchant'), then run again."
    )


class StoreMoveError(ValueError):
    """A store cannot be handed over as asked (unknown store, or a name no account can have)."""


def _tables_with(cur: psycopg.Cursor, column: str) -> list[str]:
    """Base tables of schema taptouch with both ``account`` and ``column``, in name order."""
    cur.execute(
        "select c.table_name from information_schema.columns c join information_schema.columns a"
        " using (table_schema, table_name) join information_schema.tables t using (table_schema, table_name)"
        " where c.table_schema = 'taptouch' and t.table_type = 'BASE TABLE' and a.column_name = 'account'"
        " and c.column_name = %s order by c.table_name",
        (column,),
    )
    return [r[0] for r in cur.fetchall()]


def move_store(conn: psycopg.Connection, store_id: int, account: str) -> dict[str, int]:
    """Hand store ``store_id`` to ``account`` (its Taptouch grant moved to that account): every row of
    the store in every table of schema ``taptouch`` that carries an account (the store, its orders
    and their items, payments and refunds, history, aggregates, proofs, marks, candidates, inventory,
    quarantine and load log) takes the new account, in one transaction under the stores, orders and
    store's inventory merge locks (in the loads' order), so that no view or check sees the store
    split between accounts. Rows still carrying another account are moved even when the store's row
    already names ``account`` (a run of the old account that merged meanwhile: run it again). The
    store's sales aggregates are recomputed from its moved orders (``sales_days``: the store-days).
    Returns rows changed per table."""
    from . import aggregates
    from .merge import INVENTORY, ORDERS, STORES

    changed: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        STORES.take_lock(cur)
        ORDERS.take_lock(cur)
        INVENTORY.take_lock(cur, store_id)
        cur.execute("select 1 from taptouch.stores where store_id = %s", (store_id,))
        if cur.fetchone() is None:
            raise StoreMoveError(
                f"store {store_id} is not in taptouch.stores: load the stores asset of the account that lists it first"
            )
        # the marks are keyed by account: the new account's (if it ever loaded the store) give way
        cur.execute(
            "delete from taptouch.sync_marks m where store_id = %s and account = %s and exists (select 1 from"
            ' taptouch.sync_marks o where o.store_id = m.store_id and o.entity = m.entity and o."window" = m."window"'
            " and o.account <> %s)",
            (store_id, account, account),
        )
        by_order = _tables_with(cur, "order_id")
        for table in _tables_with(cur, "store_id"):
            if table in by_order and table != "orders":
                continue  # reached through the store's orders (an index), below
            if table in aggregates.TABLES:
                continue  # recomputed from the moved orders, below
            cur.execute(
                sql.SQL("update {} set account = %s where store_id = %s and account <> %s").format(
                    sql.Identifier("taptouch", table)
                ),
                (account, store_id, account),
            )
            changed[table] = cur.rowcount
        for table in by_order:
            if table == "orders":
                continue
            cur.execute(
                sql.SQL(
                    "update {} as c set account = %s from taptouch.orders as o"
                    " where o.store_id = %s and c.order_id = o.order_id and c.account <> %s"
                ).format(sql.Identifier("taptouch", table)),
                (account, store_id, account),
            )
            changed[table] = cur.rowcount
        _recompute_sales(cur, store_id, account, changed)
    return changed


def _recompute_sales(cur: psycopg.Cursor, store_id: int, account: str, changed: dict[str, int]) -> None:
    """The sales aggregates are grouped by account: rows of the old account updated in place would
    sit beside the new account's (a run of the old account that merged after an earlier move), two
    rows of one group; the store's are recomputed from its moved orders instead (under the orders
    merge lock the caller holds). ``changed["sales_days"]``: the store-days, when any moved."""
    from . import aggregates

    cur.execute(
        "select exists (select 1 from taptouch.sales_days where store_id = %s and account <> %s)", (store_id, account)
    )
    if first_value(cur):
        aggregates.refresh_store_days(cur, [store_id])
        changed["sales_days"] = first_value(
            cur.execute("select count(*) from taptouch.sales_days where store_id = %s", (store_id,))
        )
