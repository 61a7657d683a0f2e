"""Which orders a complete listing proves deleted: two listings, a share guard, and restores.

:func:`judge_listing` makes the live orders a complete listing missed deletion candidates, and
marks deleted a candidate missed again ``confirm_s`` later, unless :func:`unusual_share` holds the
store back; :func:`note_listed` restores every listed id, whatever the listing. Both run in the
caller's transaction under the orders merge lock, so no API call may happen meanwhile. The rules:
docs/operating.md, "Deletions and restores".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg

from . import aggregates, records
from .merge import ORDERS

log = logging.getLogger(__name__)

LOCK_ORDERS = ORDERS.lock_key  # the orders merge lock (MergeSpec ORDERS)


def clock() -> datetime:
    """This machine's clock, as the deletion judgement times candidates (an orders load's ``now``,
    and the present a candidate's first miss may not pass). The state model replaces it with its
    fake clock, which its reconciliations pass as their ``now``."""
    return datetime.now(UTC)


MASS_SHARE = Decimal("0.10")
MASS_FLOOR = 2


def unusual_share(to_delete: int, live: int, listed: int) -> bool:
    """Would deleting ``to_delete`` of a store's ``live`` orders in range be unusual?

    Yes when the listing returned nothing at all while the store holds live orders in range (an
    empty 200 answer is the commonest fault, and one order's deletion never empties a listing
    that covers more), or when more than ``max(2, 10% of live)`` would go. Real deletions are rare
    (a mistaken order voided and removed: a handful a week at a busy store, far under 10%), and
    the floor of 2 lets a small store lose one or two; a larger share, at any store size, waits for
    an operator."""
    if to_delete <= 0:
        return False
    if listed == 0 and live > 0:
        return True
    return to_delete > max(MASS_FLOOR, int(MASS_SHARE * live))


def describe_rule() -> str:
    return (
        f"more than max({MASS_FLOOR}, {int(MASS_SHARE * 100)}%) of the store's live orders in range, "
        f"or any from an empty listing"
    )


def listed_id(raw: Any) -> int | None:
    """The order id a listed record names, read from its bytes like quarantine does
    (:func:`records.record_key`); a string id holding an integer (``"58231907"``) counts. None when
    no id can be read, or it is not one a warehouse order can have."""
    key = records.record_key("order", raw)
    if key is None:
        return None
    text = key.strip()
    try:
        value = int(text) if text.lstrip("-").isdigit() and text.isascii() else None
    except ValueError:
        value = None
    if value is None:
        try:
            number = Decimal(text)
        except (InvalidOperation, ValueError):
            return None
        if not number.is_finite() or number != number.to_integral_value():
            return None
        value = int(number)
    return value if 0 <= value <= records.BIGINT_MAX else None


@dataclass
class Judgement:
    """What :func:`judge_listing` did for one store."""

    store_id: int
    live: int = 0  # live warehouse orders in the judged range
    missing: list[int] = field(default_factory=list)  # live in range, not listed
    candidates: list[int] = field(default_factory=list)  # newly recorded candidates
    deleted: list[int] = field(default_factory=list)  # confirmed and marked deleted now
    waiting: list[int] = field(default_factory=list)  # candidates not yet confirm_s old
    restored: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)  # would have been deleted: the share guard refused
    dropped: int = 0  # candidates removed (listed again, or moved out of range)
    ripe: list[int] = field(default_factory=list)  # due, their confirmation deferred (``defer``)
    listed: int = 0  # records the listing returned (the share guard's empty-listing rule)

    @property
    def refusal(self) -> str | None:
        if not self.refused:
            return None
        return (
            f"store {self.store_id}: the listing would mark {len(self.refused)} of the store's {self.live} "
            f"live orders in range deleted ({describe_rule()} is refused as a probable API fault); nothing "
            f"was marked deleted. If these orders really were deleted in Taptouch, confirm it with the run "
            f"config of order_deletions: confirm_mass_deletion_stores: [{self.store_id}]"
        )


def _require_transaction(cur: psycopg.Cursor) -> None:
    if cur.connection.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise RuntimeError(
            "pipelines.warehouse.deletions needs an open transaction (the merge lock is transaction-scoped)"
        )


def note_listed(cur: psycopg.Cursor, ids: Iterable[int], listed_since: datetime | None = None) -> tuple[list[int], int]:
    """Orders a listing returned exist at the source: clear their ``deleted_at`` and remove their
    deletion candidates. Returns (restored order ids, candidates removed). Any listing may call it,
    complete or not, inside a transaction. ``listed_since``: when the listing began (this machine's
    clock); a deletion confirmed after that is newer news than the listing (e.g. a backfill's
    window that waited its turn to merge while two reconciliations confirmed it), and stays. (Its
    candidates are removed all the same: that only delays a deletion until a later listing misses
    the order again.)"""
    _require_transaction(cur)
    ids = sorted(set(ids))
    if not ids:
        return [], 0
    cur.execute("select pg_advisory_xact_lock(%s)", (LOCK_ORDERS,))
    cur.execute("delete from taptouch.deletion_candidates where order_id = any(%s)", (ids,))
    dropped = cur.rowcount
    cur.execute(
        "update taptouch.orders set deleted_at = null where deleted_at is not null and order_id = any(%s)"
        " and (%s::timestamptz is null or deleted_at < %s) returning order_id",
        (ids, listed_since, listed_since),
    )
    restored = sorted(r[0] for r in cur.fetchall())
    if restored:
        cur.execute(
            "update taptouch.deletion_log set restored_at = now() where order_id = any(%s) and restored_at is null",
            (restored,),
        )
    aggregates.refresh_orders(cur, restored)  # their store-days count them again
    return restored, dropped


def judge_listing(
    cur: psycopg.Cursor,
    store_id: int,
    listed_ids: Iterable[int],
    *,
    listed_from: datetime,
    listed_to: datetime | None,
    started_at: datetime,
    now: datetime,
    confirm_s: int,
    mass_confirmed: bool = False,
    listed_count: int | None = None,
    seen_by: str | None = None,
    defer: bool = False,
    listed_since: datetime | None = None,
    present: datetime | None = None,
) -> Judgement:
    """Judge one store's orders by one COMPLETE listing whose records all had a readable id (the
    caller checks both) and that returned ``listed_ids`` for ``updated_at`` in ``[listed_from,
    listed_to)`` (``None``: no upper bound), started at ``started_at`` (the API's clock, never after
    this machine's). Records candidates, confirms those missing for ``confirm_s`` seconds (by
    ``now``), restores what was listed, and applies the share guard unless ``mass_confirmed``. Only
    an open-ended listing (``listed_to`` None) confirms: a bounded one (a window of the orders asset,
    a full reload) may miss an order edited past ``listed_to`` and not loaded yet. ``listed_count``:
    records listed in all (default ``len(listed_ids)``), for the empty-listing rule. ``defer``: due
    ones returned (``ripe``) for :func:`confirm_deferred`. ``listed_since``: :func:`note_listed`'s.
    ``present``: the time of this judgement when later than ``now`` (default :func:`clock`; a
    reconciliation's ``now`` is its start): candidates first missed now are stamped with it, and
    only candidates first missed after it are reset."""
    _require_transaction(cur)  # the caller's transaction; the orders merge lock is taken below
    listed = set(listed_ids)
    result = Judgement(store_id)
    cur.execute("select pg_advisory_xact_lock(%s)", (LOCK_ORDERS,))
    result.restored, result.dropped = note_listed(cur, listed, listed_since)
    bound = started_at if listed_to is None else min(started_at, listed_to)
    live = _live_in_range(cur, store_id, listed_from, bound)
    result.live = len(live)
    missing = [oid for oid in live if oid not in listed]
    result.missing = missing
    present = max(now, clock() if present is None else present)
    held = _candidates_in_range(cur, store_id, listed_from, bound, bounded=listed_to is not None, present=present)
    # candidates no longer missing here (listed, moved out of range, deleted): not confirmed, dropped
    result.dropped += _drop_candidates(cur, sorted(set(held) - set(missing)))
    due = timedelta(seconds=confirm_s)
    # A bounded listing ([from, to)) may miss an order only because an edit moved it past ``to``
    # and the warehouse has not loaded that version yet: it records candidates, and only an
    # open-ended listing (the reconciliation's) confirms them (that one still lists a moved order).
    ripe = [] if listed_to is not None else [oid for oid in missing if oid in held and now - held[oid] >= due]
    result.waiting = [oid for oid in missing if oid in held and oid not in ripe]
    result.candidates = [oid for oid in missing if oid not in held]
    # first missed when this listing was judged (a reconciliation's ``now`` is its start, maybe long
    # before it listed this store: a candidate stamped then was due early, after seconds)
    _record_missing(cur, result, now=present, started_at=started_at, seen_by=seen_by)
    result.listed = len(listed) if listed_count is None else listed_count
    if defer:
        result.ripe = ripe
    else:
        _confirm(cur, result, ripe, listed=result.listed, mass_confirmed=mass_confirmed, now=now)
    return result


def _live_in_range(cur: psycopg.Cursor, store_id: int, listed_from: datetime, bound: datetime) -> list[int]:
    """The store's live orders the warehouse holds with ``updated_at`` in ``[listed_from, bound)``."""
    cur.execute(
        "select order_id from taptouch.orders where store_id = %s and updated_at >= %s and updated_at < %s"
        " and deleted_at is null order by order_id",
        (store_id, listed_from, bound),
    )
    return [r[0] for r in cur.fetchall()]


def _drop_candidates(cur: psycopg.Cursor, order_ids: list[int]) -> int:
    if not order_ids:
        return 0
    cur.execute("delete from taptouch.deletion_candidates where order_id = any(%s)", (order_ids,))
    return cur.rowcount


def confirm_deferred(
    cur: psycopg.Cursor, judged: Judgement, *, mass_confirmed: bool, now: datetime, marked_at: datetime | None = None
) -> None:
    """Confirm the candidates a deferred :func:`judge_listing` found due (``judged.ripe``), once
    every store of the pass was listed: those still candidates of its store and still live there (a
    later listing that returned one, another store's for an order that moved, removed its candidate). The share guard judges
    them against the store's live orders and listed records of that judgement. Runs in the caller's
    transaction; takes the orders merge lock."""
    _require_transaction(cur)
    if not judged.ripe:
        return
    cur.execute("select pg_advisory_xact_lock(%s)", (LOCK_ORDERS,))
    cur.execute(
        "select c.order_id from taptouch.deletion_candidates c join taptouch.orders o using (order_id)"
        " where c.order_id = any(%s) and c.store_id = %s and o.store_id = %s and o.deleted_at is null"
        " order by c.order_id",
        (judged.ripe, judged.store_id, judged.store_id),
    )
    still = [r[0] for r in cur.fetchall()]
    _confirm(cur, judged, still, listed=judged.listed, mass_confirmed=mass_confirmed, now=now, marked_at=marked_at)


def _candidates_in_range(
    cur: psycopg.Cursor, store_id: int, listed_from: datetime, bound: datetime, *, bounded: bool, present: datetime
) -> dict[int, datetime]:
    """order id -> first_missing_at of the store's deletion candidates a listing speaks for: all of
    them, or (``bounded``) those whose order lies in ``[listed_from, bound)``."""
    # a candidate first missed "in the future" (recorded by a clock ahead of this machine's) starts
    # its wait now: the interval is never shortened, and never made endless, by a clock step. The
    # present is the judgement's time, later than a reconciliation's ``now`` (its start): a candidate
    # an orders load recorded while it ran keeps its time (reset to the start, its wait was
    # shortened by the run's length so far); it is waiting, not due, here.
    cur.execute(
        "update taptouch.deletion_candidates set first_missing_at = %s where store_id = %s and first_missing_at > %s",
        (present, store_id, present),
    )
    if not bounded:
        cur.execute(
            "select order_id, first_missing_at from taptouch.deletion_candidates where store_id = %s", (store_id,)
        )
    else:  # a bounded listing speaks only for the candidates whose order lies in its range
        cur.execute(
            "select c.order_id, c.first_missing_at from taptouch.deletion_candidates c join taptouch.orders o"
            " using (order_id) where c.store_id = %s and o.updated_at >= %s and o.updated_at < %s",
            (store_id, listed_from, bound),
        )
    return dict(cur.fetchall())


def _record_missing(
    cur: psycopg.Cursor, result: Judgement, *, now: datetime, started_at: datetime, seen_by: str | None
) -> None:
    """New candidates recorded (first missed now); waiting ones stamped missed again now."""
    if result.candidates:
        cur.executemany(
            "insert into taptouch.deletion_candidates (order_id, store_id, first_missing_at, last_missing_at,"
            " listing_started_at, seen_by) values (%s, %s, %s, %s, %s, %s) on conflict (order_id) do nothing",
            [(oid, result.store_id, now, now, started_at, seen_by) for oid in result.candidates],
        )
    if result.waiting:
        cur.execute(
            "update taptouch.deletion_candidates set last_missing_at = %s where order_id = any(%s)",
            (now, result.waiting),
        )


def _confirm(
    cur: psycopg.Cursor,
    result: Judgement,
    ripe: list[int],
    *,
    listed: int,
    mass_confirmed: bool,
    now: datetime,
    marked_at: datetime | None = None,
) -> None:
    """Mark the ``ripe`` candidates deleted, unless they are an unusual share of the live orders in
    range (:func:`unusual_share`) and no operator confirmed it: then they stay candidates, refused."""
    if ripe and unusual_share(len(ripe), result.live, listed) and not mass_confirmed:
        result.refused = ripe
        cur.execute(
            "update taptouch.deletion_candidates set last_missing_at = %s where order_id = any(%s)", (now, ripe)
        )
        log.error("%s", result.refusal)
        return
    if ripe:
        # deleted_at: ``marked_at`` (the start of the listing that missed them last, so that an
        # orders listing begun before it cannot restore them and one begun after it can: note_listed), else now
        cur.execute(
            "update taptouch.orders set deleted_at = %s where order_id = any(%s) and deleted_at is null"
            " returning order_id",
            (marked_at or now, ripe),
        )
        result.deleted = sorted(r[0] for r in cur.fetchall())
        cur.execute(  # kept after a restore clears deleted_at (analytics.daily_restatements)
            "insert into taptouch.deletion_log (order_id, deleted_at, account)"
            " select order_id, deleted_at, account from taptouch.orders where order_id = any(%s)"
            " on conflict do nothing",
            (result.deleted,),
        )
        aggregates.refresh_orders(cur, result.deleted)  # their store-days no longer count them
        cur.execute("delete from taptouch.deletion_candidates where order_id = any(%s)", (ripe,))
