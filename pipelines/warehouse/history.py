"""Order history: every distinct version of an order a load saw (``taptouch.order_history``,
migration 0015), and its retention (``TAPTOUCH_HISTORY_DAYS``).

:func:`record_versions` runs in the orders load's transaction, under the orders merge lock, right
after the merge: one set-based statement from the staging table. :func:`prune` then removes the
versions older than the retention, never an order's current one. docs/warehouse.md, "Order history".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

import psycopg
from psycopg import sql

from .db import first_value

log = logging.getLogger(__name__)

# One row per distinct version the load staged (an order edited while it was being paged is staged
# twice, once per version: both are recorded; the same version staged twice counts once, as last
# seen), with the sum of that version's refunds from the staged refunds; a version the table
# already holds adds nothing (the key's check, never a comparison of raw). The versions are picked
# by their keys alone, so only one sort carries the rows' raw.
_RECORD = """
insert into taptouch.order_history
    (order_id, version, updated_at, store_id, status, total, refunds, raw, first_seen_run_id, account, created_at)
select s.order_id, s.updated_at_exact, s.updated_at, s.store_id, s.status, s.total,
       coalesce(r.refunds, 0), s.raw, %(run_id)s, s.account, s.created_at
from stage_orders as s
join (
    select distinct on (order_id, updated_at_exact) seq
    from stage_orders
    order by order_id, updated_at_exact, seq desc
) as v on v.seq = s.seq
left join (select seq, sum(amount) as refunds from stage_refunds group by seq) as r on r.seq = s.seq
order by s.order_id, s.updated_at_exact
on conflict (order_id, version) do nothing
"""

# The versions `taptouch-sync rebuild` merged from quarantined records that pass the boundary now
# (temporary tables ``rb_orders``, one row per order, and ``rb_order_refunds``): seen by no run.
_RECORD_RETRIED = """
insert into taptouch.order_history
    (order_id, version, updated_at, store_id, status, total, refunds, raw, first_seen_run_id, account, created_at)
select o.order_id, o.updated_at_exact, o.updated_at, o.store_id, o.status, o.total,
       coalesce(r.refunds, 0), o.raw, null, o.account, o.created_at
from rb_orders as o
left join (select order_id, sum(amount) as refunds from rb_order_refunds group by order_id) as r using (order_id)
order by o.order_id
on conflict (order_id, version) do nothing
"""

# "Not the current version": the version taptouch.orders holds for the order.
_NOT_CURRENT = (
    "not exists (select 1 from taptouch.orders as o where o.order_id = h.order_id"
    " and coalesce(o.updated_at_exact, taptouch.exact_epoch(o.updated_at)) = h.version)"
)


@dataclass(frozen=True)
class Retention:
    """How long superseded versions are kept: ``days`` (``TAPTOUCH_HISTORY_DAYS``), None: forever."""

    days: int | None = None


def record_versions(cur: psycopg.Cursor, run_id: str | None) -> int:
    """Insert into ``taptouch.order_history`` every distinct version the load staged (temporary
    tables ``stage_orders``, ``stage_refunds``) that it does not hold yet, first seen now (the
    statement's time) by ``run_id``. Returns how many were new."""
    cur.execute(_RECORD, {"run_id": run_id})
    return cur.rowcount


def record_retried(cur: psycopg.Cursor) -> int:
    """Insert the versions ``taptouch-sync rebuild`` retried from the quarantine (``rb_orders``) that
    the history does not hold, first seen now by no run. Returns how many were new."""
    cur.execute(_RECORD_RETRIED)
    recorded = cur.rowcount
    _prune_replaced(cur, "rb_orders")
    return recorded


def record(cur: psycopg.Cursor, run_id: str | None, retention: Retention | None) -> int:
    """The load's history step: :func:`record_versions`, then :func:`prune` by ``retention`` (None:
    no pruning, e.g. a reconciliation's repair, which has no run settings). Returns the versions
    new to the history."""
    recorded = record_versions(cur, run_id)
    if retention is not None:
        prune(cur, retention.days, touched="accepted")
    else:
        _prune_replaced(cur, "accepted")
    return recorded


def _prune_replaced(cur: psycopg.Cursor, touched: str) -> int:
    """For a load that has no run settings (a reconciliation's repair, ``rebuild``): remove the
    superseded versions of the orders it replaced (temporary table ``touched``) by the retention
    the last load with settings applied (``taptouch_meta.history_retention``; none: nothing). The
    range prune of later loads starts where the last one ended, so a version that was current then
    and is replaced here would otherwise be kept forever."""
    cur.execute("select days from taptouch_meta.history_retention")
    row = cur.fetchone()
    if row is None or row[0] is None:
        return 0
    cur.execute("select statement_timestamp() - %s", (timedelta(days=row[0]),))
    return _delete_touched(cur, touched, first_value(cur))


def _delete_touched(cur: psycopg.Cursor, touched: str, cutoff: object) -> int:
    """Delete the versions first seen before ``cutoff`` of the orders in temporary table
    ``touched`` that are not their order's current version. Returns how many."""
    cur.execute(
        sql.SQL(
            "delete from taptouch.order_history as h where h.order_id in (select order_id from {})"
            " and h.first_seen_at < %s and " + _NOT_CURRENT
        ).format(sql.Identifier(touched)),
        (cutoff,),
    )
    return cur.rowcount


def prune(cur: psycopg.Cursor, days: int | None, touched: str | None = None) -> int:
    """Remove the versions first seen more than ``days`` days ago that are not their order's
    current version (None: keep everything, and forget the retention's progress). Cheap: the
    versions of the orders the load just replaced (``touched``: a temporary table of ``order_id``,
    read by the primary key) and the versions that aged past the limit since the last prune (a
    range of the ``first_seen_at`` index). The caller holds the orders merge lock. Returns the
    number removed."""
    if days is None:
        cur.execute("delete from taptouch_meta.history_retention")
        return 0
    cur.execute("select statement_timestamp() - %s", (timedelta(days=days),))
    cutoff = first_value(cur)
    cur.execute("select pruned_before from taptouch_meta.history_retention")
    row = cur.fetchone()
    since = row[0] if row is not None else None
    removed = 0
    if touched is not None:
        removed += _delete_touched(cur, touched, cutoff)
    if since is None or since < cutoff:
        cur.execute(
            "delete from taptouch.order_history as h where h.first_seen_at < %s"
            " and (%s::timestamptz is null or h.first_seen_at >= %s) and " + _NOT_CURRENT,
            (cutoff, since, since),
        )
        removed += cur.rowcount
        cur.execute(
            "insert into taptouch_meta.history_retention (days, pruned_before, pruned) values (%s, %s, %s)"
            " on conflict (singleton) do update set days = excluded.days, pruned_before = excluded.pruned_before,"
            " pruned_at = now(), pruned = history_retention.pruned + excluded.pruned",
            (days, cutoff, removed),
        )
    else:  # nothing aged since the last prune (the retention was raised): the setting still holds now
        cur.execute("update taptouch_meta.history_retention set days = %s where days is distinct from %s", (days, days))
    if removed:
        log.info("order history: %d version(s) older than %d day(s) pruned", removed, days)
    return removed
