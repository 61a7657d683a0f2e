"""High-water marks of incremental order loads (``taptouch.sync_marks``, migrations 0008 and 0012).

For each (account, store, window) the mark is an instant before which every order of that store in
that window has been read: a re-run of the window asks the API only for
``[max(window start, mark - lookback), window end)`` (:func:`fetch_from`); the lookback covers
replica lag. Newest-wins merging is unchanged, so a stale replica still cannot move a row backwards.

What may move a mark (:func:`mark_for`), and nothing else:

- only a listing that is known to be complete (:class:`taptouch_resource.listing.OrderListing`:
  keyset pages checked to be in order, or a verifying pass that found nothing missed); a listing
  that may have skipped a record leaves the mark where it was, so the next run asks again;
- to the newest ``updated_at`` that listing read, but never past the instant the listing started
  on the API's own clock (the first page's ``status.timestamp``, floored, minus one second): a
  future-dated record (a till whose clock runs ahead) still loads, but cannot carry the mark past
  edits made after the listing. Without a usable API clock the mark does not move;
- in the same transaction as the data (:func:`advance`), and never backwards.

The mark is per account (the connection's ``taptouch.account`` setting, see migration 0009): two
accounts that list one store keep their own. A full refresh asks for the whole window whatever the
mark, and stamps ``full_loaded_at``.
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
        cur.execute('select store_id, high_water from taptouch.sync_marks where entity = %s and "window" = %s'
                    f" and store_id = any(%s) and account = {_ACCOUNT}", (entity, window, store_ids))
        return dict(cur.fetchall())


def fetch_from(start: datetime, mark: datetime | None, lookback: timedelta) -> datetime:
    """Where a re-run of a window starting at ``start`` asks the API from."""
    return start if mark is None else max(start, mark - lookback)


def mark_for(listing: Any) -> datetime | None:
    """The instant a finished listing lets a mark move to (None: it may not move): the newest
    ``updated_at`` read, capped at the listing's start on the API's clock; only from a complete one."""
    newest, started = getattr(listing, "newest", None), getattr(listing, "started_at", None)
    if not getattr(listing, "complete", False) or newest is None or started is None:
        return None
    return min(newest, started)


def advance(cur: psycopg.Cursor, window: str, to: dict[int, datetime | None], *, full: bool,
            entity: str = ORDERS) -> None:
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
        cur.execute('update taptouch.sync_marks set full_loaded_at = now(), updated_at = now() where entity = %s'
                    f' and "window" = %s and store_id = any(%s) and account = {_ACCOUNT}', (entity, window, stay))
