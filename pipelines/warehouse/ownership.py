"""Which account owns a store: the first account that loaded it (``taptouch.stores.account``).

Taptouch ids are global, so two accounts granted the same store would write each other's rows; any
account other than the owner skips the store (stores, orders, inventory, reconciliation) with a
warning naming both. Two accounts loading a store for the very first time at once may both load it
once. docs/operating.md, "Several accounts".
"""

from __future__ import annotations

import psycopg

from .db import first_value

SESSION_ACCOUNT = "coalesce(nullif(current_setting('taptouch.account', true), ''), 'default')"


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
