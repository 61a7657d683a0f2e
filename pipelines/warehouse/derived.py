"""Derived columns follow their source: ``taptouch.orders.business_date`` re-derived when its inputs change.

Every order's ``business_date`` is ``records.business_date(created_at, the zone taptouch.stores
holds for its store, the store's day start)`` after every commit. The day start a store's stored
dates follow is recorded in ``taptouch_meta.business_day_starts`` (no row: local midnight), written
in the same transaction as the dates; loads date new orders with it (:func:`dated_starts`).

Two inputs can change, and one mechanism follows both (:func:`rederive_business_dates`, under the
orders merge lock): a stores load that accepts a new zone re-dates that store's orders, and a run
that finds a store's wanted start (its row in ``taptouch.store_business_days``, else
TAPTOUCH_BUSINESS_DAY_START) differing from the recorded one re-dates its orders and records the
new start (:func:`follow_day_starts`: each orders window before it loads, the stores load and
``taptouch-sync rebuild``). The orders merge re-dates what it accepted where the zone or start it
dated with is no longer the warehouse's (:func:`follow_store_zones`). The rule runs in Python,
never as a SQL copy. docs/operating.md, "Derived columns and rebuild".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta

import psycopg
from psycopg import sql

from . import aggregates, records
from .merge import ORDERS

log = logging.getLogger(__name__)

_CHUNK = 20_000


def warehouse_zones(cur: psycopg.Cursor, store_ids: Iterable[int]) -> dict[int, str]:
    """store id -> the zone ``taptouch.stores`` holds (stores it does not hold are left out)."""
    cur.execute("select store_id, timezone from taptouch.stores where store_id = any(%s)", (sorted(set(store_ids)),))
    return dict(cur.fetchall())


def dated_starts(cur: psycopg.Cursor | psycopg.Connection, store_id: int | None = None) -> dict[int, timedelta]:
    """store id -> the day start its stored business dates follow (stores without a recorded
    start are left out: local midnight, :data:`records.NO_DAY_START`); every store, or ``store_id``."""
    if store_id is None:
        rows = cur.execute("select store_id, day_starts from taptouch_meta.business_day_starts").fetchall()
    else:
        rows = cur.execute(
            "select store_id, day_starts from taptouch_meta.business_day_starts where store_id = %s", (store_id,)
        ).fetchall()
    return {sid: timedelta(hours=t.hour, minutes=t.minute, seconds=t.second) for sid, t in rows}


def wanted_starts(cur: psycopg.Cursor, setting: timedelta) -> dict[int, timedelta]:
    """store id -> the day start it should have, for every store of ``taptouch.stores``: its row
    in ``taptouch.store_business_days``, else ``setting`` (TAPTOUCH_BUSINESS_DAY_START)."""
    cur.execute(
        "select s.store_id, o.day_starts from taptouch.stores s"
        " left join taptouch.store_business_days o using (store_id)"
    )
    return {
        sid: setting if t is None else timedelta(hours=t.hour, minutes=t.minute, seconds=t.second)
        for sid, t in cur.fetchall()
    }


def _moved_starts(cur: psycopg.Cursor, setting: timedelta) -> dict[int, timedelta]:
    held = dated_starts(cur)
    return {
        sid: start for sid, start in wanted_starts(cur, setting).items() if held.get(sid, records.NO_DAY_START) != start
    }


def apply_day_starts(conn: psycopg.Connection, setting: timedelta) -> dict[int, int]:
    """:func:`follow_day_starts` in a transaction of its own (``conn`` autocommit or not)."""
    with conn.transaction(), conn.cursor() as cur:
        return follow_day_starts(cur, setting)


def follow_day_starts(cur: psycopg.Cursor, setting: timedelta) -> dict[int, int]:
    """Where a store's wanted day start (:func:`wanted_starts`; ``setting``: TAPTOUCH_BUSINESS_DAY_START)
    differs from the one its dates follow, re-date its orders with it and record it, in the
    caller's transaction, under the orders merge lock (taken only when some start moved; the check
    is repeated under it). Returns store id -> how many dates changed, for the stores whose start
    moved."""
    moved = _moved_starts(cur, setting)
    if not moved:
        return {}
    ORDERS.take_lock(cur)
    moved = _moved_starts(cur, setting)
    changed = {}
    for sid, start in sorted(moved.items()):
        changed[sid] = rederive_business_dates(cur, [sid], starts={sid: start})
        cur.execute(
            "insert into taptouch_meta.business_day_starts (store_id, day_starts) values (%s, %s)"
            " on conflict (store_id) do update set day_starts = excluded.day_starts, derived_at = now()",
            (sid, start),
        )
        log.log(
            logging.WARNING if changed[sid] else logging.INFO,
            "store %s: business day now starts at %s local time; %d business date(s) of its orders re-derived",
            sid,
            str(start)[:-3],
            changed[sid],
        )
    return changed


def rederive_business_dates(
    cur: psycopg.Cursor,
    store_ids: Iterable[int],
    *,
    only: str | None = None,
    starts: dict[int, timedelta] | None = None,
    zone_changed: Iterable[int] = (),
) -> int:
    """Set ``business_date`` of the orders of ``store_ids`` (all of them, or only those whose
    ``order_id`` is in the temporary table named ``only``) to :func:`records.business_date` of
    their ``created_at`` in the zone ``taptouch.stores`` holds, for the day start in ``starts``
    (default: the recorded ones, :func:`dated_starts`). Returns how many dates changed. Without
    ``only``, the sales aggregates of the stores whose dates moved are recomputed, and those of the
    stores in ``zone_changed`` (a new zone moves local hours, ``sales_hours``, even where no date moves).

    Runs in the caller's transaction; the caller holds the orders merge lock (see the module doc).
    Orders of a store the warehouse does not hold keep their date."""
    zones = warehouse_zones(cur, store_ids)
    if not zones:
        return 0
    starts = dated_starts(cur) if starts is None else starts
    conn = cur.connection
    cur.execute(
        "create temp table if not exists rederived_dates (order_id bigint primary key, business_date date)"
        " on commit drop"
    )
    cur.execute("truncate rederived_dates")
    restrict = (
        sql.SQL("")
        if only is None
        else sql.SQL(" and o.order_id in (select order_id from {})").format(sql.Identifier(only))
    )
    query = (
        sql.SQL("select o.order_id, o.created_at, o.business_date from taptouch.orders o where o.store_id = %s")
        + restrict
    )
    derive = records.business_date
    for store_id, tz in sorted(zones.items()):
        # a server-side cursor: memory bounded by the chunk, whatever the store's size
        with conn.cursor(name=f"rederive_{store_id}") as reader:
            reader.execute(query, (store_id,))
            while True:
                rows = reader.fetchmany(_CHUNK)
                if not rows:
                    break
                start = starts.get(store_id, records.NO_DAY_START)
                changed = [(oid, day) for oid, at, held in rows if (day := derive(at, tz, start)) != held]
                if changed:
                    with cur.copy("copy rederived_dates (order_id, business_date) from stdin") as cp:
                        for row in changed:
                            cp.write_row(row)
    cur.execute(
        "with moved as (update taptouch.orders o set business_date = r.business_date from rederived_dates r"
        " where o.order_id = r.order_id and o.business_date is distinct from r.business_date"
        " returning o.store_id) select store_id, count(*) from moved group by store_id"
    )
    moved: dict[int, int] = dict(cur.fetchall())
    if only is None:  # (with ``only``, the orders merge recomputes the days it noted)
        aggregates.refresh_store_days(cur, set(moved) | (set(zone_changed) & set(zones)))
    return sum(moved.values())


def follow_store_zones(
    cur: psycopg.Cursor,
    used: dict[int, str],
    store_ids: Iterable[int],
    *,
    only: str,
    used_starts: dict[int, timedelta] | None = None,
) -> int:
    """The orders merge's guard: the orders in temporary table ``only`` (``order_id``) of the
    stores in ``store_ids`` were dated by the zones in ``used`` (the API's store listing) and the
    day starts in ``used_starts`` (unset: the recorded ones); where the warehouse holds another
    zone or start for a store, re-date them by the warehouse's. Returns how many dates changed.
    Call it holding the orders merge lock, after the merge."""
    ids = sorted(set(store_ids))
    if not ids:
        return 0
    held = warehouse_zones(cur, ids)
    differ = [sid for sid in ids if sid in held and held[sid] != used.get(sid)]
    if used_starts is not None:
        now = dated_starts(cur)
        none = records.NO_DAY_START
        differ += [
            sid for sid in ids if sid in held and sid not in differ and now.get(sid, none) != used_starts.get(sid, none)
        ]
    if not differ:
        return 0
    n = rederive_business_dates(cur, differ, only=only)
    log.warning(
        "orders of store(s) %s were dated with another time zone or day start than the warehouse holds "
        "(the stores asset has not loaded the change yet, the listing was older, or another run moved "
        "the day start): %d business date(s) follow the warehouse's",
        ", ".join(map(str, differ)),
        n,
    )
    return n
