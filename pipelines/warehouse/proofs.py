"""Proven completeness per store and orders window: ``taptouch.listing_proofs`` (migration 0016).

A *proof* is a complete listing of one store's orders in one orders window (the UTC day of the
partition key): every page read, no error, and the client knows nothing moved past it
(``listing.complete``). It records what the listing returned (count, first and last instant) and
the SET of (order_id, version) in ``taptouch.listing_proof_orders``, the run that listed it and
when. A listing that failed, or may have missed a record, records only its failure: never a
complete proof.

Writers: the orders loads (:class:`~pipelines.warehouse.loader.OrderWindowLoad`, in the merge's
transaction, from the versions it staged or recognised as unchanged) and the reconciliation
(:func:`pipelines.reconcile.reconcile_orders`, for each UTC day it listed whole). Readers: the
orders asset's check ``orders_proven`` (:func:`window_problems`) and ``analytics.load_coverage``.

An incremental listing (from a store's high-water mark minus the lookback) re-proves the part of the
window it read: the set's rows from that instant on are replaced by what it listed, the earlier
ones stay from the listings before it, and ``covered_from`` records how far back complete listings
reach. A window is *complete* once they reach its start. docs/operating.md, "Proven completeness".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg

from taptouch_resource.errors import storable_text

from ..settings import DEFAULT_LOOKBACK
from .db import one_row
from .merge import references_proven

REPAIRS_WINDOW = "order_deletions"
"""The ``window`` of the reconciliation's repairs (its sync_log and quarantine rows): a version it
proved and then quarantined is the quarantine's, like one an orders load of the day quarantined."""

SOURCE = "listing_set"
"""The temporary table a writer fills with what its listings returned: (store_id, order_id,
updated_at_exact), one row per order and store (the newest version the listing held)."""

_DAY_KEY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
FAILURE_CHARS = 500
SHOWN = 10  # orders named per store and kind in a check's failure


def window_bounds(key: str | None) -> tuple[datetime, datetime] | None:
    """[start, end) of the orders window ``key`` (a daily partition key, the UTC day); None for a
    window that is not a day (the reconciliation's repairs, ``order_deletions``)."""
    if key is None or not _DAY_KEY.match(key):
        return None
    try:
        day = date.fromisoformat(key)
    except ValueError:
        return None
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def day_bounds(key: str) -> tuple[datetime, datetime]:
    """:func:`window_bounds` of a key that must be a day (an error otherwise)."""
    bounds = window_bounds(key)
    if bounds is None:
        raise ValueError(f"orders window {key!r} is not a UTC day")
    return bounds


def create_source(cur: psycopg.Cursor) -> None:
    """The temporary table :data:`SOURCE` (dropped at commit)."""
    cur.execute(
        f"create temp table if not exists {SOURCE} (store_id bigint not null, order_id bigint not null,"
        " updated_at_exact numeric not null) on commit drop"
    )


def _proof_row(cur: psycopg.Cursor, store_id: int, key: str, bounds: tuple[datetime, datetime]) -> tuple:
    """(proof_id, covered_from) of the store's window, the row created when missing and locked."""
    cur.execute(
        'insert into taptouch.listing_proofs (store_id, "window", window_start, window_end) values (%s, %s, %s, %s)'
        ' on conflict (store_id, "window") do nothing',
        (store_id, key, *bounds),
    )
    cur.execute(
        'select proof_id, covered_from from taptouch.listing_proofs where store_id = %s and "window" = %s for update',
        (store_id, key),
    )
    return one_row(cur)


# The proofs a writer's listings make (one row per store): created when missing, locked, in store order.
_PROOF_ROWS = """
insert into taptouch.listing_proofs (store_id, "window", window_start, window_end)
select store_id, %(key)s, %(start)s, %(end)s from unnest(%(stores)s::bigint[]) as s(store_id) order by store_id
on conflict (store_id, "window") do nothing
"""
_LOCK_ROWS = """
select store_id, proof_id, covered_from,
       nullif(least(coalesce(api_started_at, listed_at), now()), now())  -- (a start ahead of now is no start)
from taptouch.listing_proofs
where "window" = %(key)s and store_id = any(%(stores)s::bigint[]) order by store_id for update
"""

# What each proof covers (the listing's parameters), its bounds as exact epochs as the source holds them.
_SCOPE = """
insert into proof_scope
select proof_id, store_id, whole, lower, taptouch.exact_epoch(lower), taptouch.exact_epoch(upper), covered,
       listed_from, api_started_at
from unnest(%s::bigint[], %s::bigint[], %s::boolean[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[],
            %s::timestamptz[], %s::timestamptz[])
    as s(proof_id, store_id, whole, lower, upper, covered, listed_from, api_started_at)
"""

# Each proof's listing: its store's rows of the source in [lower, upper), one per order, the newest version.
_LISTED = """
create temp table proof_listed on commit drop as
select s.proof_id, l.order_id, max(l.updated_at_exact) as v
from proof_scope as s join listing_set as l using (store_id)
where l.updated_at_exact >= s.lower_exact and l.updated_at_exact < s.upper_exact
group by s.proof_id, l.order_id
"""

# The proven set's part each listing re-read (all of it when whole; else from lower, and every order it
# returned), but for the rows it returned unchanged (an hourly re-run rewrites nothing it need not).
_STALE = """
delete from taptouch.listing_proof_orders as p using proof_scope as s
where p.proof_id = s.proof_id
  and (s.whole or p.updated_at_exact >= s.lower_exact
       or exists (select from proof_listed as l where l.proof_id = p.proof_id and l.order_id = p.order_id))
  and not exists (select from proof_listed as l
                  where l.proof_id = p.proof_id and l.order_id = p.order_id and l.v = p.updated_at_exact)
"""
_ADD = """
insert into taptouch.listing_proof_orders (proof_id, order_id, updated_at_exact)
select proof_id, order_id, v from proof_listed order by proof_id, order_id
on conflict (proof_id, order_id) do nothing
"""

_DESCRIBE = """
update taptouch.listing_proofs as p set
    covered_from = s.covered, complete = s.covered <= p.window_start, listed_from = s.listed_from,
    listed_at = %(listed_at)s, settled_at = least(%(listed_at)s, s.api_started_at) - %(settle)s::interval,
    api_started_at = s.api_started_at,
    listed_orders = coalesce(l.n, 0), first_updated_at = to_timestamp(l.first::double precision),
    last_updated_at = to_timestamp(l.last::double precision),
    proven_orders = (select count(*) from taptouch.listing_proof_orders as o where o.proof_id = p.proof_id),
    proved_by = %(run_id)s, proved_at = now()
from proof_scope as s
left join (select proof_id, count(*) as n, min(v) as first, max(v) as last from proof_listed group by proof_id) as l
    using (proof_id)
where p.proof_id = s.proof_id
"""


def prove(
    cur: psycopg.Cursor,
    key: str,
    listings: Mapping[int, tuple[datetime, datetime, datetime | None]],
    *,
    listed_at: datetime,
    run_id: str | None,
    settle: timedelta = DEFAULT_LOOKBACK,
) -> int:
    """Record the complete listings of window ``key``: store id -> (listed from, listed to, started
    at: the API's clock, never after this machine's); what each returned is in :data:`SOURCE`. A
    listing that does not reach the window's end proves nothing. ``settle``: how long a record may take to reach the API's
    listings (the run's lookback): the proof holds for what was updated before ``listed_at -
    settle`` (``settled_at``, what analytics.load_coverage compares), or before the listing's start
    on the API's clock minus ``settle`` when that is earlier (this machine's clock running ahead
    must not settle a business day the API has not reached). A proof whose listing started later
    (an overlapping run that committed first) is left as it is: an older listing never replaces a
    newer one's set. Set-based: a handful of statements for every store of the window. Returns the
    proofs written."""
    bounds = window_bounds(key)
    if bounds is None:
        return 0
    start, end = bounds
    stores = sorted(sid for sid, (_, listed_to, _) in listings.items() if listed_to >= end)
    if not stores:
        return 0
    cur.execute(_PROOF_ROWS, {"key": key, "start": start, "end": end, "stores": stores})
    cur.execute(_LOCK_ROWS, {"key": key, "stores": stores})
    scope = []
    for store_id, proof_id, covered_from, proven_start in cur.fetchall():
        listed_from, _, api_started_at = listings[store_id]
        if proven_start is not None and proven_start > (api_started_at or listed_at):
            continue  # a listing that started later has proven it (overlapping runs committing out of order)
        whole = listed_from <= start
        covered = listed_from if whole or covered_from is None else min(covered_from, listed_from)
        scope.append((proof_id, store_id, whole, max(start, listed_from), end, covered, listed_from, api_started_at))
    cur.execute("drop table if exists pg_temp.proof_scope, pg_temp.proof_listed")
    cur.execute(
        "create temp table proof_scope (proof_id bigint, store_id bigint, whole boolean, lower timestamptz,"
        " lower_exact numeric, upper_exact numeric, covered timestamptz, listed_from timestamptz,"
        " api_started_at timestamptz) on commit drop"
    )
    if not scope:
        return 0
    cur.execute(_SCOPE, [list(column) for column in zip(*scope, strict=True)])
    cur.execute(_LISTED)
    cur.execute(_STALE)
    with references_proven(cur):  # each row's proof is one of the rows locked above
        cur.execute(_ADD)
    cur.execute(_DESCRIBE, {"listed_at": listed_at, "settle": settle, "run_id": run_id})
    return len(scope)


def failed(cur: psycopg.Cursor, key: str, failures: dict[int, str], *, run_id: str | None) -> None:
    """Record listings of window ``key`` that failed or may have missed a record (store id -> why):
    never a complete proof; a proof an earlier listing made stays."""
    bounds = window_bounds(key)
    if bounds is None:
        return
    for store_id, why in sorted(failures.items()):
        proof_id, _ = _proof_row(cur, store_id, key, bounds)
        cur.execute(
            "update taptouch.listing_proofs set failed_at = now(), failed_by = %s, failure = %s where proof_id = %s",
            (run_id, storable_text(why[:FAILURE_CHARS]), proof_id),  # a server's text may hold a NUL
        )


# ------------------------------------------------------------------------------------------ the check


@dataclass(frozen=True)
class Problem:
    """Why a store's window is not proven: ``kind`` is ``unproven`` (never completely listed),
    ``missing`` (the listing returned versions the warehouse lacks or holds older) or ``extra`` (the
    warehouse holds versions in the window the listing did not return)."""

    store_id: int
    window: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"store {self.store_id}, window {self.window}: {self.detail}"


def _unproven(cur: psycopg.Cursor, key: str, store_ids: list[int]) -> tuple[list[Problem], dict[int, tuple]]:
    cur.execute(
        "select s.store_id, p.proof_id, p.complete, p.covered_from, p.failure, p.failed_by,"
        " coalesce(p.api_started_at, p.listed_at)"
        " from unnest(%s::bigint[]) as s(store_id) left join taptouch.listing_proofs p on p.store_id = s.store_id"
        ' and p."window" = %s order by s.store_id',
        (store_ids, key),
    )
    problems, proven = [], {}
    for store_id, proof_id, complete, covered_from, failure, failed_by, started in cur.fetchall():
        if complete:
            proven[store_id] = (proof_id, started)
            continue
        if proof_id is None:
            why = "never listed"
        elif covered_from is not None:
            why = f"complete listings cover it only from {covered_from.isoformat()}"
        else:
            why = "never completely listed"
        if failure:
            why += f"; the latest listing (run {failed_by}) failed: {failure}"
        problems.append(Problem(store_id, key, "unproven", why))
    return problems, proven


def _differences(cur: psycopg.Cursor, key: str, store_id: int, proof_id: int, started: datetime) -> list[Problem]:
    """The listing's set against the warehouse's (order_id, updated_at_exact) in the window."""
    start, end = day_bounds(key)
    cur.execute(
        "select p.order_id, p.updated_at_exact, coalesce(o.updated_at_exact, taptouch.exact_epoch(o.updated_at)),"
        " o.deleted_at is not null from taptouch.listing_proof_orders p left join taptouch.orders o using (order_id)"
        " where p.proof_id = %s and (o.order_id is null or o.deleted_at is not null"
        " or coalesce(o.updated_at_exact, taptouch.exact_epoch(o.updated_at)) < p.updated_at_exact)"
        # a version the reconciliation read (and proved) whose repair was quarantined: the warehouse
        # keeps the version before, the quarantine check's warning (an orders load never proves one)
        " and not exists (select 1 from taptouch.quarantine q where q.entity = 'order'"
        ' and q.record_key = p.order_id::text and q."window" in (%s, %s) and q.resolved_at is null)'
        " order by p.order_id",
        (proof_id, key, REPAIRS_WINDOW),
    )
    missing = [
        f"{oid} v{v} ({'not held' if held is None else 'held deleted' if gone else f'held at v{held}'})"
        for oid, v, held, gone in cur.fetchall()
    ]
    cur.execute(
        "select o.order_id, coalesce(o.updated_at_exact, taptouch.exact_epoch(o.updated_at)) as v,"
        " p.updated_at_exact from taptouch.orders o left join taptouch.listing_proof_orders p"
        " on p.proof_id = %s and p.order_id = o.order_id"
        " where o.store_id = %s and o.updated_at >= %s and o.updated_at < %s and o.deleted_at is null"
        " and o.updated_at < %s and p.updated_at_exact is distinct from"
        " coalesce(o.updated_at_exact, taptouch.exact_epoch(o.updated_at))"
        " and not exists (select 1 from taptouch.deletion_candidates c where c.order_id = o.order_id)"
        " and not exists (select 1 from taptouch.quarantine q where q.entity = 'order' and q.\"window\" in (%s, %s)"
        " and q.record_key = o.order_id::text and q.resolved_at is null)"
        " order by o.order_id",
        (proof_id, store_id, start, end, started, key, REPAIRS_WINDOW),
    )
    extra = [f"{oid} v{v}" + ("" if listed is None else f" (listed v{listed})") for oid, v, listed in cur.fetchall()]
    found = []
    for kind, ids, what in (
        ("missing", missing, "the latest complete listing returned order version(s) the warehouse lacks"),
        ("extra", extra, "the warehouse holds order version(s) the latest complete listing did not return"),
    ):
        if ids:
            shown = ", ".join(ids[:SHOWN]) + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")
            found.append(Problem(store_id, key, kind, f"{what}: {len(ids)}: {shown}"))
    return found


def window_problems(conn: psycopg.Connection, keys: list[str], store_ids: list[int]) -> list[Problem]:
    """Every store of ``store_ids`` whose window (of ``keys``) is not proven, or whose warehouse set
    disagrees with the latest complete listing's (sets of (order_id, version), not counts). An
    order the warehouse holds at a version newer than the listing's start (an edit after it), a
    deletion candidate (a complete listing missed it; the reconciliation confirms it), or an order
    whose listed version was quarantined in the window (the check ``no_quarantined_records`` warns
    of it; the warehouse keeps the version before) is no disagreement."""
    problems: list[Problem] = []
    with conn.cursor() as cur:
        for key in keys:
            if window_bounds(key) is None:
                continue
            unproven, proven = _unproven(cur, key, sorted(store_ids))
            problems += unproven
            for store_id, (proof_id, started) in sorted(proven.items()):
                problems += _differences(cur, key, store_id, proof_id, started)
    return problems


def repair_hint(problems: list[Problem], asset: str = "orders") -> str:
    """How to repair: which partitions to re-run, and how."""
    keys = sorted({p.window for p in problems})
    if not keys:
        return "nothing to repair"
    first, last = keys[0], keys[-1]
    span = first if first == last else f"{first}...{last}"
    return (
        f"re-run the partition(s) {', '.join(keys)} of {asset}: dagster asset materialize -m pipelines.definitions "
        f"--select {asset} --partition {first}"
        + ("" if first == last else f" (one per partition, or a backfill of {span} in the UI)")
        + f"; in the UI: Assets > {asset} > Materialize, partition(s) {', '.join(keys)}. An order the listing "
        "no longer returns in the window because a later edit moved it to a later day is repaired by "
        "re-running that later day's partition; an order deleted at the source, by the order_deletions "
        "reconciliation"
    )
