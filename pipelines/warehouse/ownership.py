"""Which account owns a store: the first account that loaded it (``taptouch.stores.account``).

Two Taptouch accounts of one deployment may both be granted the same store (a franchise group and
the store's own login). Taptouch ids are global, so their rows would collide: after an edit, an
order would keep one account while its items, payments and refunds took the other's, and the two
accounts' marks and deletions would judge each other's loads. So a store belongs to the account
that loaded it first; any other account that lists it skips it (its stores, orders, inventory and
reconciliation runs), with a warning naming both accounts. To move a store to another account,
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
    rows = conn.execute(f"select store_id, account from taptouch.stores where store_id = any(%s)"
                        f" and account <> {SESSION_ACCOUNT}", (list(store_ids),)).fetchall()
    return dict(rows)
