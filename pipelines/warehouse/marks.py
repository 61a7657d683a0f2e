"""High-water marks of incremental order loads (``taptouch.sync_marks``), per account, store and window.

A re-run asks the API only from ``mark - lookback`` (:func:`fetch_from`). A mark moves only from a
complete listing, to the newest ``updated_at`` it read but never past the listing's start on the
API's clock or on this machine's, whichever is earlier (:func:`mark_for`), in the data's own transaction and never backwards
(:func:`advance`). The rules: docs/operating.md, "The rules of a mark".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import psycopg

ORDERS = "orders"
_ACCOUNT = "coalesce(nullif(current_setting('taptouch.account', true), ''), 'default')"


def read(conn: psycopg.Connection, window: str, store_ids: list[int], entity: str = ORDERS) -> dict[int, datetime]:
    """store id -> high-water mark of this connection's account, for the stores of ``window`` that have one."""
    with conn.cursor() as cur:
        cur.execute(
            'select store_id, high_water from taptouch.sync_marks where entity = %s and "window" = %s'
            f" and store_id = any(%s) and account = {_ACCOUNT}",
            (entity, window, store_ids),
        )
        return dict(cur.fetchall())


def fetch_from(start: datetime, mark: datetime | None, lookback: timedelta) -> datetime:
    """Where a re-run of a window starting at ``start`` asks the API from."""
    return start if mark is None else max(start, mark - lookback)


def mark_for(listing: Any) -> datetime | None:
    """The instant a finished listing lets a mark move to (None: it may not move): the newest
    ``updated_at`` read, capped at the listing's start (``started_at``: the API's clock, never after
    this machine's); only from a complete one."""
    newest, started = getattr(listing, "newest", None), getattr(listing, "started_at", None)
    if not getattr(listing, "complete", False) or newest is None or started is None:
        return None
    return min(newest, started)


def advance(
    cur: psycopg.Cursor, window: str, to: dict[int, datetime | None], *, full: bool, entity: str = ORDERS
) -> None:
    """Move the marks of this connection's account to ``to`` (store id -> instant), in the caller's
    transaction. Never moves a mark back; a store mapped to None keeps its mark (a full refresh
    still stamps ``full_loaded_at`` for it once a mark exists)."""
    moving = {sid: at for sid, at in to.items() if at is not None}
    if moving:
        cur.execute(
            'insert into taptouch.sync_marks as m (entity, account, store_id, "window", high_water, full_loaded_at)'
            f" select %(entity)s, {_ACCOUNT}, s.store_id, %(window)s, s.at, case when %(full)s then now() end"
            " from unnest(%(stores)s::bigint[], %(ats)s::timestamptz[]) as s(store_id, at)"
            ' on conflict (entity, account, store_id, "window") do update set'
            " high_water = greatest(m.high_water, excluded.high_water),"
            " full_loaded_at = coalesce(excluded.full_loaded_at, m.full_loaded_at), updated_at = now()",
            {"entity": entity, "window": window, "full": full, "stores": list(moving), "ats": list(moving.values())},
        )
    stay = [sid for sid, at in to.items() if at is None]
    if full and stay:
        cur.execute(
            "update taptouch.sync_marks set full_loaded_at = now(), updated_at = now() where entity = %s"
            f' and "window" = %s and store_id = any(%s) and account = {_ACCOUNT}',
            (entity, window, stay),
        )
