"""Derived columns follow their source: ``taptouch.orders.business_date`` re-derived when its inputs change.

Every order's ``business_date`` is ``records.business_date(created_at, the zone taptouch.stores
holds for its store)`` after every commit: a stores load that accepts a new zone re-dates that
store's orders (:func:`rederive_business_dates`), and the orders merge re-dates what it accepted by
the warehouse's zone where the API's listing showed another (:func:`follow_store_zones`), both under
the orders merge lock. The rule runs in Python, never as a SQL copy. docs/operating.md, "Derived
columns and rebuild".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import psycopg
from psycopg import sql

from . import records

log = logging.getLogger(__name__)

_CHUNK = 20_000


def warehouse_zones(cur: psycopg.Cursor, store_ids: Iterable[int]) -> dict[int, str]:
    """store id -> the zone ``taptouch.stores`` holds (stores it does not hold are left out)."""
    cur.execute("select store_id, timezone from taptouch.stores where store_id = any(%s)", (sorted(set(store_ids)),))
    return dict(cur.fetchall())


def rederive_business_dates(cur: psycopg.Cursor, store_ids: Iterable[int], *, only: str | None = None) -> int:
    """Set ``business_date`` of the orders of ``store_ids`` (all of them, or only those whose
    ``order_id`` is in the temporary table named ``only``) to :func:`records.business_date` of
    their ``created_at`` in the zone ``taptouch.stores`` holds. Returns how many dates changed.

    Runs in the caller's transaction; the caller holds the orders merge lock (see the module doc).
    Orders of a store the warehouse does not hold keep their date."""
    zones = warehouse_zones(cur, store_ids)
    if not zones:
        return 0
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
                changed = [(oid, day) for oid, at, held in rows if (day := derive(at, tz)) != held]
                if changed:
                    with cur.copy("copy rederived_dates (order_id, business_date) from stdin") as cp:
                        for row in changed:
                            cp.write_row(row)
    cur.execute(
        "update taptouch.orders o set business_date = r.business_date from rederived_dates r"
        " where o.order_id = r.order_id and o.business_date is distinct from r.business_date"
    )
    return cur.rowcount


def follow_store_zones(cur: psycopg.Cursor, used: dict[int, str], store_ids: Iterable[int], *, only: str) -> int:
    """The orders merge's guard: the orders in temporary table ``only`` (``order_id``) of the
    stores in ``store_ids`` were dated by the zones in ``used`` (the API's store listing); where
    the warehouse holds another zone for a store, re-date them by the warehouse's zone. Returns
    how many dates changed. Call it holding the orders merge lock, after the merge."""
    ids = sorted(set(store_ids))
    if not ids:
        return 0
    held = warehouse_zones(cur, ids)
    differ = [sid for sid in ids if sid in held and held[sid] != used.get(sid)]
    if not differ:
        return 0
    n = rederive_business_dates(cur, differ, only=only)
    log.warning(
        "orders of store(s) %s were listed with another time zone than taptouch.stores holds (the stores "
        "asset has not loaded the change yet, or the listing was older): %d business date(s) follow "
        "the warehouse's zone; the next stores run that loads the change re-derives them all",
        ", ".join(map(str, differ)),
        n,
    )
    return n
