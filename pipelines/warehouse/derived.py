"""Derived columns follow their source: ``taptouch.orders.business_date`` re-derived when its inputs change.

``business_date`` is derived from an order's ``created_at`` and its store's zone by one function,
:func:`pipelines.warehouse.records.business_date`. The order's bytes do not hold the zone, so a
store whose zone is corrected leaves the dates of its orders stale unless something re-derives
them. The rule this module keeps: **every order's business_date is business_date(created_at, the
zone taptouch.stores holds for its store)**, after every commit:

- :func:`pipelines.warehouse.loader.load_stores`, when it accepts a store whose zone differs from
  the one the warehouse held (or a store it did not hold yet), re-derives the dates of that
  store's orders in the same transaction (:func:`rederive_business_dates`);
- the orders merge dates orders by the zone its caller read from the API's store listing; where
  that differs from the zone the warehouse holds (the listing saw a change the ``stores`` asset has
  not loaded yet, or an older listing), :func:`follow_store_zones` re-dates the orders it just
  accepted by the warehouse's zone, in the same transaction;
- ``taptouch-sync rebuild`` (:mod:`.rebuild`) re-derives every order from ``raw`` with the same rule.

Both writers hold the orders merge lock while they read the zones and write the dates, so a
``stores`` load and an ``orders`` load running at once cannot leave a date behind.

The re-derivation goes through the Python function, not a SQL copy of it: PostgreSQL reads some
zone names as fixed-offset abbreviations (``at time zone 'CET'``) and may carry other tz data than
Python, so a SQL twin would not be provably the same rule. It is still set-based where it counts:
one server-side read of the store's orders, the changed dates COPYed into a temporary table, one
``UPDATE ... FROM`` (about a second for 100k orders of a store).
"""

from __future__ import annotations

import logging
from typing import Iterable

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
    cur.execute("create temp table if not exists rederived_dates (order_id bigint primary key, business_date date)"
                " on commit drop")
    cur.execute("truncate rederived_dates")
    restrict = sql.SQL("") if only is None else sql.SQL(" and o.order_id in (select order_id from {})").format(
        sql.Identifier(only))
    query = sql.SQL("select o.order_id, o.created_at, o.business_date from taptouch.orders o"
                    " where o.store_id = %s") + restrict
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
    cur.execute("update taptouch.orders o set business_date = r.business_date from rederived_dates r"
                " where o.order_id = r.order_id and o.business_date is distinct from r.business_date")
    return cur.rowcount


def follow_store_zones(cur: psycopg.Cursor, used: dict[int, str], store_ids: Iterable[int], *,
                       only: str) -> int:
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
    log.warning("orders of store(s) %s were listed with another time zone than taptouch.stores holds (the stores "
                "asset has not loaded the change yet, or the listing was older): %d business date(s) follow "
                "the warehouse's zone; the next stores run that loads the change re-derives them all",
                ", ".join(map(str, differ)), n)
    return n
