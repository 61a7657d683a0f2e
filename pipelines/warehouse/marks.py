"""High-water marks of incremental order loads (``taptouch.sync_marks``, migration 0008).

For each (store, window) the mark is the newest ``updated_at`` the warehouse holds for that store in
that window, written by the loader in the same transaction as the data (:func:`advance`), so a mark
never runs ahead of what committed. A re-run of the window asks the API only for
``[max(window start, mark - lookback), window end)`` (:func:`fetch_from`); the lookback covers
replica lag. Newest-wins merging is unchanged, so a stale replica still cannot move a row backwards.
A full refresh ignores the marks and stamps ``full_loaded_at``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

ORDERS = "orders"


def read(conn: psycopg.Connection, window: str, store_ids: list[int], entity: str = ORDERS) -> dict[int, datetime]:
    """store id -> high-water mark, for the stores of ``window`` that have one."""
    with conn.cursor() as cur:
        cur.execute('select store_id, high_water from taptouch.sync_marks where entity = %s and "window" = %s'
                    " and store_id = any(%s)", (entity, window, store_ids))
        return dict(cur.fetchall())


def fetch_from(start: datetime, mark: datetime | None, lookback: timedelta) -> datetime:
    """Where a re-run of a window starting at ``start`` asks the API from."""
    return start if mark is None else max(start, mark - lookback)


def advance(cur: psycopg.Cursor, window: str, store_ids: list[int], start: datetime, end: datetime, *,
            full: bool, entity: str = ORDERS) -> None:
    """Move the marks of ``store_ids`` (loaded completely in this transaction) to the newest
    ``updated_at`` the warehouse now holds for them in [start, end). Never moves a mark back."""
    if not store_ids:
        return
    cur.execute(
        'insert into taptouch.sync_marks as m (entity, store_id, "window", high_water, full_loaded_at)'
        " select %(entity)s, o.store_id, %(window)s, max(o.updated_at), case when %(full)s then now() end"
        " from taptouch.orders o where o.store_id = any(%(stores)s) and o.updated_at >= %(start)s"
        " and o.updated_at < %(end)s group by o.store_id"
        ' on conflict (entity, store_id, "window") do update set'
        " high_water = greatest(m.high_water, excluded.high_water),"
        " full_loaded_at = coalesce(excluded.full_loaded_at, m.full_loaded_at), updated_at = now()",
        {"entity": entity, "window": window, "full": full, "stores": store_ids, "start": start, "end": end},
    )
