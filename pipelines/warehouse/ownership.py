"""Which account owns a store: the first account that loaded it (``taptouch.stores.account``).

Two Taptouch accounts of one deployment may both be granted the same store (a franchise group and
the store's own login). Taptouch ids are global, so their rows would collide: after an edit, an
order would keep one account while its items, payments and refunds took the other's, and the two
accounts' marks and deletions would judge each other's loads. So a store belongs to the account
that loaded it first (its store row, or before that its orders); any other account that lists it
skips it (its stores, orders, inventory and reconciliation runs), with a warning naming both
accounts. Two accounts loading a store for the very first time at the same moment may both load
it once; the store row then names the first, and the check applies from their next runs. To move a store to another account,
update ``taptouch.stores.account`` (docs/operating.md, "Several accounts").
"""

from __future__ import annotations

import psycopg

SESSION_ACCOUNT = "coalesce(nullif(current_setting('taptouch.account', true), ''), 'default')"


def session_account(conn: psycopg.Connection) -> str:
    """The account this connection writes rows for (its ``taptouch.account`` setting)."""
    return conn.execute(f"select {SESSION_ACCOUNT}").fetchone()[0]


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
        f" where coalesce(st.account, o.account) <> {SESSION_ACCOUNT}", (list(store_ids),)).fetchall()
    return dict(rows)
