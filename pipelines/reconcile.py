"""Deletions, restores and repairs: the ``order_deletions`` asset reconciles the warehouse's orders
with the API's listing, store by store.

It lists outside any transaction or lock, loads the listed orders the warehouse lacks or holds in
an older version through the orders merge (:class:`~pipelines.warehouse.loader.OrderWindowLoad`),
then lets :mod:`pipelines.warehouse.deletions` judge the listing. The rules (two complete listings,
the share guard, restores of the deletions of the last ``TAPTOUCH_RESTORE_DAYS`` days): docs/operating.md,
"Deletions and restores".
"""

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import dagster as dg
import psycopg

from taptouch_resource import TaptouchClient

from .accounts import DEFAULT, Account
from .settings import (
    DEFAULT_LOOKBACK,
    DEFAULT_RECONCILE_CONFIRM_S,
    DEFAULT_RECONCILE_DAYS,
    DEFAULT_RESTORE_DAYS,
    reconcile_days,
)
from .sync import describe, is_transient
from .warehouse import aggregates, deletions, forget, proofs, records
from .warehouse.loader import OrderWindowLoad, _order_id, resolve_held_orders, store_timezones

if TYPE_CHECKING:  # what dg.define_asset_job returns (dagster exports no public name for it)
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

log = logging.getLogger(__name__)

LISTING_SLACK = timedelta(seconds=1)  # the warehouse rounds instants to microseconds; the API may not
# The listing's upper bound: far enough that an order whose later version is future-dated (a bad
# clock at the till) is still listed rather than taken for deleted.
LISTING_HORIZON = timedelta(days=3660)
WINDOW = proofs.REPAIRS_WINDOW  # the ``window`` of the sync_log rows (and quarantine rows) of its repairs

__all__ = [
    "reconcile_orders",
    "reconcile_days",
    "ReconcileResult",
    "StoreReconcile",
    "deletions_definitions",
    "DEFAULT_RECONCILE_DAYS",
]


@dataclass
class StoreReconcile:
    store_id: int
    listed: int = 0  # records listed (ids readable or not)
    checked: int = 0  # live warehouse orders judged
    listed_from: datetime | None = None
    complete: bool = True
    unidentified: int = 0  # listed records whose id cannot be read: nothing deleted at the store
    listed_at: datetime | None = None  # the listing's start on this machine's clock
    late_tail: bool = False  # complete only by taking a record for a late arrival: confirms no deletion
    deleted: list[int] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)  # first missed now
    waiting: list[int] = field(default_factory=list)  # missed again, not yet TAPTOUCH_RECONCILE_CONFIRM_S old
    refused: list[int] = field(default_factory=list)  # the share guard refused to delete them
    repaired: int = 0
    quarantined: int = 0
    proven: int = 0  # orders windows (UTC days) re-proven by the listing (.warehouse.proofs)
    judged: deletions.Judgement | None = field(default=None, repr=False)  # its confirmations wait for the pass


@dataclass
class ReconcileResult:
    start: datetime
    end: datetime
    stores: list[StoreReconcile] = field(default_factory=list)
    failures: list[tuple[int, str, bool]] = field(default_factory=list)  # (store, error, transient)
    held_back_by: list[int | str] = field(default_factory=list)  # stores not listed whole: no deletion confirmed

    def _n(self, name: str) -> int:
        return sum(len(getattr(s, name)) for s in self.stores)

    @property
    def deleted(self) -> int:
        return self._n("deleted")

    @property
    def restored(self) -> int:
        return self._n("restored")

    @property
    def candidates(self) -> int:
        return self._n("candidates")

    @property
    def waiting(self) -> int:
        return self._n("waiting")

    @property
    def refused(self) -> int:
        return self._n("refused")

    @property
    def repaired(self) -> int:
        return sum(s.repaired for s in self.stores)

    @property
    def checked(self) -> int:
        return sum(s.checked for s in self.stores)

    @property
    def listed(self) -> int:
        return sum(s.listed for s in self.stores)


@dataclass
class _Listing:
    ids: set[int] = field(default_factory=set)
    records: int = 0
    unidentified: int = 0
    repairs: dict[int, tuple[Decimal, bytes]] = field(default_factory=dict)  # id -> (version, bytes)
    complete: bool = True
    started_at: datetime | None = None
    versions: dict[int, Decimal] = field(default_factory=dict)  # id -> the newest version listed (readable)
    held: set[int] = field(default_factory=set)  # ids listed in exactly the bytes the warehouse holds
    late_tail: bool = False  # OrderListing.late_tail


def _list_store(
    client: TaptouchClient,
    conn: psycopg.Connection,
    store_id: int,
    start: datetime,
    end: datetime,
    late: timedelta = timedelta(0),
) -> _Listing:
    """One listing of a store's orders, read as bytes, outside any transaction: the ids it names
    and the records the warehouse lacks or holds in an older version (checked page by page with a
    read-only query; the merge decides again under its lock). ``late``: how late a record may reach
    the API's listing and still leave it complete (the run's lookback, as the orders loads allow)."""
    out = _Listing()
    # the last page is asked for twice: an empty or cut-short 200 answer looks like the listing's end
    listing = client.iter_order_record_pages(store_id, updated_from=start, updated_to=end, confirm_end=True, late=late)
    for page in listing:
        out.records += len(page)
        found: list[tuple[int, bytes]] = []
        for raw in page:
            raw = records.as_bytes(raw)
            oid = _order_id(raw)
            if oid is None:
                oid = deletions.listed_id(raw)
                if oid is None:
                    out.unidentified += 1
                    log.warning(
                        "reconcile: store %s lists a record whose order id cannot be read; nothing at "
                        "this store is marked deleted from this listing",
                        store_id,
                    )
                    continue
                out.ids.add(oid)
                continue  # listed (it shields its order), but not loadable here: the orders asset quarantines it
            out.ids.add(oid)
            found.append((oid, raw))
        if found:
            _note_found(conn, out, found)
    out.complete = bool(getattr(listing, "complete", True))
    out.late_tail = getattr(listing, "late_tail", False) is True
    started = getattr(listing, "started_at", None)
    out.started_at = started if isinstance(started, datetime) else None
    return out


def _note_found(conn: psycopg.Connection, out: _Listing, found: list[tuple[int, bytes]]) -> None:
    """A page's loadable records: each one's version noted, and kept for repair where the warehouse
    lacks it or holds an older version."""
    in_warehouse = dict(
        (
            (oid, (bytes(h) if h is not None else None, v))
            for oid, h, v in conn.execute(
                "select order_id, raw_hash, coalesce(updated_at_exact, taptouch.exact_epoch(updated_at))"
                " from taptouch.orders where order_id = any(%s)",
                ([oid for oid, _ in found],),
            )
        )
    )
    for oid, raw in found:
        have = in_warehouse.get(oid)
        if have is not None and have[0] == hashlib.blake2b(raw, digest_size=16).digest():
            _note_version(out, oid, have[1])
            out.held.add(oid)
            continue  # exactly this version
        version = records.record_version(raw)
        if version is not None:
            _note_version(out, oid, version)
        if version is None or (have is not None and version < have[1]):
            continue  # unreadable version (the orders asset quarantines it), or older than the warehouse's
        kept = out.repairs.get(oid)
        if kept is None or version >= kept[0]:
            out.repairs[oid] = (version, raw)


def _note_version(listing: _Listing, oid: int, version: Decimal | None) -> None:
    if version is not None and (oid not in listing.versions or version > listing.versions[oid]):
        listing.versions[oid] = version


def _prove_days(
    conn: psycopg.Connection,
    listing: _Listing,
    sr: StoreReconcile,
    *,
    listed_at: datetime,
    run_id: str | None,
    settle: timedelta,
) -> int:
    """Re-prove every orders window (UTC day) the store's complete listing read whole, from its
    first whole day to the day it started (:mod:`.warehouse.proofs`). Returns the windows proven."""
    if not listing.complete or listing.unidentified or sr.listed_from is None:
        return 0
    first = sr.listed_from.astimezone(UTC).date() + timedelta(days=1)
    if sr.listed_from == datetime(first.year, first.month, first.day, tzinfo=UTC) - timedelta(days=1):
        first -= timedelta(days=1)  # it started on a day's first instant
    started = listing.started_at or listed_at
    keys = [(first + timedelta(days=n)).isoformat() for n in range((started.astimezone(UTC).date() - first).days + 1)]
    rows = [(sr.store_id, oid, v) for oid, v in listing.versions.items()]
    with conn.transaction(), conn.cursor() as cur:
        proofs.create_source(cur)
        with cur.copy(f"copy {proofs.SOURCE} (store_id, order_id, updated_at_exact) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        for key in keys:
            start, end = proofs.day_bounds(key)
            proofs.prove(
                cur,
                key,
                {sr.store_id: (start, end, listing.started_at)},
                listed_at=listed_at,
                run_id=run_id,
                settle=settle,  # the run's lookback, as the orders loads settle theirs
            )
    return len(keys)


# one probe of the partial index orders_store_deleted_at (migration 0021), not a read of the store's orders
EARLIEST_DELETED_SQL = "select min(updated_at) from taptouch.orders where store_id = %s and deleted_at >= %s"


def _earliest_deleted(conn: psycopg.Connection, store_id: int, since: datetime) -> datetime | None:
    """The earliest ``updated_at`` of the store's orders marked deleted at ``since`` or later (the
    deletions still looked for again); None if there are none."""
    row = conn.execute(EARLIEST_DELETED_SQL, (store_id, since)).fetchone()
    return row[0] if row else None


def _judge_store(
    conn: psycopg.Connection,
    listing,
    sr: StoreReconcile,
    *,
    start: datetime,
    now: datetime,
    present: datetime,
    confirm_s: int,
    mass_confirmed: bool,
    seen_by: str,
) -> None:
    """One store's judgement of its finished listing, in one short transaction under the merge
    lock (deletions.judge_listing, or only restores from a listing that cannot judge). The
    candidates due are confirmed by :func:`_confirm_store` once every store was listed."""
    started_at = listing.started_at or now
    with conn.transaction(), conn.cursor() as cur:
        if listing.complete and not listing.unidentified:
            judged = deletions.judge_listing(
                cur,
                sr.store_id,
                listing.ids,
                listed_from=start,
                listed_to=None,
                started_at=started_at,
                now=now,
                confirm_s=confirm_s,
                mass_confirmed=mass_confirmed,
                listed_count=listing.records,
                seen_by=seen_by,
                defer=True,
                present=present,
                # a deletion confirmed since this listing began (another reconciliation's) is newer
                # news than it, and stays (as for the orders loads' listings: deletions.note_listed)
                listed_since=_listed_since(sr, now),
            )
            sr.checked = judged.live
            sr.restored, sr.candidates, sr.waiting = judged.restored, judged.candidates, judged.waiting
            sr.judged = judged
        else:
            why = (
                "the listing is not known to be complete"
                if not listing.complete
                else f"{listing.unidentified} listed record(s) have no readable order id"
            )
            log.warning(
                "reconcile: store %s: %s; nothing at this store is marked deleted from it (listed "
                "orders are still restored)",
                sr.store_id,
                why,
            )
            sr.restored, _ = deletions.note_listed(cur, listing.ids, _listed_since(sr, now))


def _unreadable_key(key: object) -> int | str:
    """A malformed store record's key (:func:`.sync.list_stores`'s ``invalid``): its store id when
    the key is a whole number in ASCII digits, else the key itself (an id absent or not a number:
    its store still holds deletions back, and no store id excuses it)."""
    text = str(key)
    return int(text) if re.fullmatch(r"[0-9]{1,19}", text) else text


def _listed_since(sr: StoreReconcile, now: datetime) -> datetime:
    """When the store's listing began, as its confirmations date a deletion (``deleted_at``: the
    run's ``now`` when later): a deletion another reconciliation confirmed after it is newer news
    than this listing, and is not restored by it (deletions.note_listed's ``listed_since``)."""
    return max(now, sr.listed_at) if sr.listed_at is not None else now


def _confirm_store(conn: psycopg.Connection, sr: StoreReconcile, rpass: "_Pass") -> str | None:
    """The store's deletions confirmed, after every store of the pass was listed (one that a later
    store's listing returned is not deleted: it moved there), and its judgement logged in sync_log.
    Returns the share guard's refusal, if any."""
    refusal = None
    with conn.transaction(), conn.cursor() as cur:
        judged = sr.judged
        if judged is not None and judged.ripe:
            # deleted as of the listing that missed them last (an orders load that began listing
            # after it is newer news, and restores: deletions.note_listed)
            marked = _listed_since(sr, rpass.now)
            deletions.confirm_deferred(
                cur, judged, mass_confirmed=sr.store_id in rpass.mass_confirmed, now=rpass.now, marked_at=marked
            )
            sr.deleted, sr.refused = judged.deleted, judged.refused
            refusal = judged.refusal
        if sr.deleted or sr.restored or sr.repaired:
            _log_judgement(cur, sr, start=rpass.start, now=rpass.now, run_id=rpass.run_id)
    return refusal


def _log_judgement(
    cur: psycopg.Cursor, sr: StoreReconcile, *, start: datetime, now: datetime, run_id: str | None
) -> None:
    """The store's sync_log row: deleted = marked deleted, updated = restored (repairs have their own rows)."""
    cur.execute(
        'insert into taptouch.sync_log (entity, store_id, "window", run_id, started_at, deleted, updated)'
        " values ('order_deletions', %s, %s, %s, %s, %s, %s)",
        (
            sr.store_id,
            f"{(sr.listed_from or start).isoformat()}..{now.isoformat()}",  # listed_from: set by the caller
            run_id,
            now,
            len(sr.deleted),
            len(sr.restored),
        ),
    )


def reconcile_orders(
    client: TaptouchClient,
    conn: psycopg.Connection,
    *,
    days: int = DEFAULT_RECONCILE_DAYS,
    store_ids: list[int] | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    timezones: dict[int, str] | None = None,
    confirm_s: int = DEFAULT_RECONCILE_CONFIRM_S,
    confirm_mass_deletion_stores: Iterable[int] = (),
    run_id: str | None = None,
    restore_days: int = DEFAULT_RESTORE_DAYS,
    excused_stores: Iterable[int] = (),
    late: timedelta | None = None,
    clock: Callable[[], datetime] | None = None,
    unreadable_stores: Iterable[str] = (),
) -> ReconcileResult:
    """Reconcile each store's orders with one listing of the API (module docstring): repair what
    the warehouse lacks or holds older, record deletion candidates, mark deleted those a complete
    listing at least ``confirm_s`` seconds earlier missed too, and restore what is listed again.
    ``days``, ``confirm_s`` and ``restore_days``: the run's ``TAPTOUCH_RECONCILE_DAYS``,
    ``TAPTOUCH_RECONCILE_CONFIRM_S`` and ``TAPTOUCH_RESTORE_DAYS``
    (:class:`pipelines.settings.RunSettings`). A store is listed from the earliest of ``now - days``
    and the ``updated_at`` of its orders marked deleted at ``now - restore_days`` or later: older
    deletions are settled, restored only if the listing of the period returns them.

    ``conn`` must be an autocommit connection: the listing runs outside any transaction, and each
    store's repairs and judgement are short transactions of their own. ``now`` (default:
    ``clock()``) is the run's start, and ``clock`` tells when each store is judged (default: this
    machine's, :func:`.warehouse.deletions.clock`; when ``now`` is given, ``now`` itself, so tests
    pass a fake one). A store in ``confirm_mass_deletion_stores`` may lose any share of its orders.
    Deletions are confirmed only when every store was listed whole, but for ``excused_stores`` (an
    operator's word that no order moved to them, e.g. a store whose access was withdrawn for good).
    ``late``: the run's ``TAPTOUCH_LOOKBACK``: a record stamped up to this long before a store's
    listing started that reaches the listing's last page between its two answers (a busy store
    behind a lagging replica) leaves the listing complete, as in the orders loads, instead of
    holding back every store's deletions. But a first answer cut short reads the same, so such a
    listing (``late_tail``) confirms no deletion at its store, due ones included, and holds back no
    other store's: the orders it missed are recorded as candidates and wait for a later listing.
    ``unreadable_stores``: keys of malformed store records: their stores' orders are not listed, so
    each holds back every deletion unless excused, as a store whose listing failed."""
    _need_autocommit(conn)
    progress = progress or log.info
    clock = clock or (deletions.clock if now is None else _frozen(now))
    now = now or clock()
    start = now - timedelta(days=days)
    result = ReconcileResult(start=start, end=now)
    timezones = store_timezones(conn) if timezones is None else timezones
    store_ids = _every_store(conn) if store_ids is None else store_ids
    mass = {int(s) for s in confirm_mass_deletion_stores}
    rpass = _Pass(start, now, confirm_s, mass, timezones, run_id, now - timedelta(days=restore_days), clock=clock)
    rpass = _with_late(replace(rpass, unreadable=frozenset(map(_unreadable_key, unreadable_stores))), late)
    for store_id in store_ids:
        sr = _reconcile_store(client, conn, store_id, rpass, result)
        if sr is not None:
            result.stores.append(sr)
            progress(_listed_summary(sr))
    _confirm_all(conn, result, rpass, set(excused_stores), progress)
    return result


def _with_late(rpass: "_Pass", late: timedelta | None) -> "_Pass":
    """The pass with the run's lookback: how late a record may reach a listing, and how long its
    proofs let records settle (unset: no record is let in late, and the proofs settle by the
    default 5 minutes)."""
    return rpass if late is None else replace(rpass, late=late, settle=late)


def _listed_summary(sr: StoreReconcile) -> str:
    return (
        f"store {sr.store_id}: {sr.listed} listed, {sr.repaired} repaired, {len(sr.candidates)} newly "
        "missing; deletions are confirmed once every store is listed"
    )


def _every_store(conn: psycopg.Connection) -> list[int]:
    return [r[0] for r in conn.execute("select store_id from taptouch.stores order by store_id")]


def _frozen(at: datetime) -> Callable[[], datetime]:
    return lambda: at


def _need_autocommit(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        raise ValueError(
            "reconcile_orders needs an autocommit connection: its listing must run outside any "
            "transaction (a transaction left open would hold its locks through every API call)"
        )


def _confirm_all(
    conn: psycopg.Connection,
    result: ReconcileResult,
    rpass: "_Pass",
    excused: set[int],
    progress: Callable[[str], None],
) -> None:
    """Every store's due deletions confirmed, unless a store (not ``excused``) could not be listed
    whole: an order missing at one store may have moved to it (a store with a record whose id cannot
    be read deletes nothing itself, but holds no one back; nor does one complete only by taking a
    record on its last page for a late arrival, an answer cut short being the other reading)."""
    unlisted: list[int | str] = sorted(
        ({sid for sid, _, _ in result.failures} | {s.store_id for s in result.stores if not s.complete}) - excused
    )
    # a store the store listing names in a record it could not read was not listed at all (one
    # whose id cannot be read either: it cannot be excused by its id)
    unread = rpass.unreadable - excused - set(unlisted)
    unlisted += sorted(k for k in unread if isinstance(k, int)) + sorted(k for k in unread if isinstance(k, str))
    result.held_back_by = unlisted
    if unlisted:
        held = (
            f"store(s) {', '.join(map(str, unlisted))} could not be listed whole: no deletion is confirmed in this "
            "run (an order missing elsewhere may have moved there); the candidates wait for a run that lists every "
            "store, or for run config excused_stores naming these"
        )
        log.warning("%s", held)
        progress(held)
    for sr in result.stores:  # every store listed: an order that moved between stores is not deleted
        if sr.judged is not None and (unlisted or sr.late_tail):
            if sr.late_tail and sr.judged.ripe:
                log.warning(
                    "store %s: the listing's last page, asked again, held records stamped before it started "
                    "(late arrivals, or a first answer cut short): its %d due deletion(s) wait for the next run",
                    sr.store_id,
                    len(sr.judged.ripe),
                )
            sr.judged.ripe = []
        refusal = _confirm_store(conn, sr, rpass)
        if refusal:
            result.failures.append((sr.store_id, refusal, False))
        progress(_store_summary(sr))


@dataclass(frozen=True)
class _Pass:
    """What every store of one reconciliation shares: its period, clock, confirmations and run."""

    start: datetime
    now: datetime
    confirm_s: int
    mass_confirmed: set[int]
    timezones: dict[int, str]
    run_id: str | None
    restore_since: datetime  # orders marked deleted since then are looked for again (TAPTOUCH_RESTORE_DAYS)
    late: timedelta = timedelta(0)  # how late a record may reach a complete listing (TAPTOUCH_LOOKBACK)
    settle: timedelta = DEFAULT_LOOKBACK  # how long its proofs let records settle (the run's lookback)
    clock: Callable[[], datetime] = deletions.clock  # each store's judgement time (``now``: the run's start)
    # stores whose store record could not be read: not listed (its key when the id is no whole number)
    unreadable: frozenset[int | str] = frozenset()

    @property
    def seen_by(self) -> str:
        return f"order_deletions run {self.run_id}" if self.run_id else "order_deletions"


def _reconcile_store(
    client: TaptouchClient, conn: psycopg.Connection, store_id: int, rpass: _Pass, result: ReconcileResult
) -> StoreReconcile | None:
    """List one store (from the earliest of the period and of its orders marked deleted since
    ``rpass.restore_since``), repair, judge (its deletions are confirmed once every store was
    listed: :func:`_confirm_store`) and re-prove it. A failed listing is added to
    ``result.failures`` (None returned)."""
    start, now = rpass.start, rpass.now
    earliest = _earliest_deleted(conn, store_id, rpass.restore_since)
    listed_from = min(start, earliest) if earliest is not None else start
    listed_at = datetime.now(UTC)  # the listing's start on this machine's clock (as the proofs record it)
    with conn.cursor() as cur:  # a customer forgotten while the store is listed is forgotten in its repairs
        known = forget.forgotten(cur)
    try:
        listing = _list_store(
            client,
            conn,
            store_id,
            listed_from - LISTING_SLACK,
            max(now, datetime.now(UTC)) + LISTING_HORIZON,
            rpass.late,
        )
    except Exception as exc:  # a hostile answer costs its own store, never the others'
        result.failures.append((store_id, describe(exc), is_transient(exc)))
        log.error("reconcile: store %s: %s", store_id, describe(exc))
        return None
    sr = StoreReconcile(
        store_id,
        listed=listing.records,
        listed_from=listed_from,
        complete=listing.complete,
        unidentified=listing.unidentified,
        listed_at=listed_at,
        late_tail=listing.late_tail,
    )
    if listing.repairs and store_id in rpass.timezones:
        _repair(conn, listing, sr, rpass.timezones[store_id], rpass.run_id, rpass.now, known)
    if listing.held:  # served valid again in the held bytes: what was quarantined of them is replaced
        with conn.transaction(), conn.cursor() as cur:
            resolve_held_orders(cur, listing.held)
    _judge_store(
        conn,
        listing,
        sr,
        start=start,
        now=now,
        present=rpass.clock(),
        confirm_s=rpass.confirm_s,
        mass_confirmed=store_id in rpass.mass_confirmed,
        seen_by=rpass.seen_by,
    )
    sr.proven = _prove_days(conn, listing, sr, listed_at=listed_at, run_id=rpass.run_id, settle=rpass.settle)
    return sr


def _repair(
    conn: psycopg.Connection,
    listing: _Listing,
    sr: StoreReconcile,
    zone: str,
    run_id: str | None,
    now: datetime,
    forgotten: frozenset[int] | None = None,
) -> None:
    """Load the listed records the warehouse lacks or holds older through the orders loader's merge
    (``forgotten``: the customers forgotten before the store was listed). Its listing began at
    ``sr.listed_at``: a deletion confirmed since is newer news, and stays."""
    with OrderWindowLoad(
        conn,
        window=WINDOW,
        run_id=run_id,
        timezones={sr.store_id: zone},
        forgotten=forgotten,
        listed_since=_listed_since(sr, now),
    ) as load:
        load.add_page(sr.store_id, [raw for _, (_, raw) in sorted(listing.repairs.items())])
        counts = load.finish()
    sr.repaired, sr.quarantined = counts.inserted + counts.updated, counts.quarantined


def _store_summary(sr: StoreReconcile) -> str:
    return (
        f"store {sr.store_id}: {sr.listed} listed, {sr.checked} checked, {len(sr.candidates)} newly missing, "
        f"{len(sr.waiting)} awaiting confirmation, {len(sr.deleted)} marked deleted, {len(sr.restored)} "
        f"restored, {sr.repaired} repaired, {sr.proven} day window(s) re-proven"
        + ("" if sr.complete else " (listing incomplete: nothing deleted)")
    )


# ------------------------------------------------------------------------------------------ dagster

RECONCILE_ASSET = "order_deletions"
RECONCILE_CRON = "30 */6 * * *"


class ReconcileConfig(dg.Config):
    """Run config of ``order_deletions``."""

    confirm_mass_deletion_stores: list[int] = []
    """Stores whose unusual share of deletions an operator confirms (they really were deleted in
    Taptouch): e.g. ``[1042]``. Confirms only orders two complete listings missed."""

    excused_stores: list[int] = []
    """Stores whose failed or incomplete listing does not hold back the other stores' deletions (an
    operator's word that no order moved to them, e.g. a store whose access was withdrawn for good):
    e.g. ``[1042]``. While any other store cannot be listed whole, no deletion is confirmed."""


def _reconcile_metadata(result: ReconcileResult) -> dict:
    """What ``order_deletions`` shows of a reconciliation: counts, the ids changed, the stores."""
    deleted_ids = [oid for s in result.stores for oid in s.deleted]
    restored_ids = [oid for s in result.stores for oid in s.restored]
    return {
        "window_start": result.start.isoformat(),
        "window_end": result.end.isoformat(),
        "listed": result.listed,
        "checked": result.checked,
        "newly_missing": result.candidates,
        "awaiting_confirmation": result.waiting,
        "deleted": result.deleted,
        "restored": result.restored,
        "repaired": result.repaired,
        "refused": result.refused,
        "deleted_order_ids": ", ".join(map(str, deleted_ids[:200])) or "none",
        "restored_order_ids": ", ".join(map(str, restored_ids[:200])) or "none",
        "deletions_held_back_by": ", ".join(map(str, result.held_back_by)) or "none",
        "deletions_waiting_late_tail": ", ".join(str(s.store_id) for s in result.stores if s.late_tail) or "none",
        "stores_incomplete": ", ".join(str(s.store_id) for s in result.stores if not s.complete or s.unidentified)
        or "none",
        "stores_ok": len(result.stores),
        "stores_failed": len(result.failures),
    }


def _fail_if_not_reconciled(result: ReconcileResult, metadata: dict) -> None:
    """A ``dg.Failure`` naming each store not reconciled (retried only when one failure is transient)."""
    if not result.failures:
        return
    lines = "\n".join(
        f"- store {sid}: {err}" if not err.startswith(f"store {sid}:") else f"- {err}"
        for sid, err, _ in result.failures
    )
    raise dg.Failure(
        description=f"order reconciliation: {len(result.failures)} store(s) not reconciled; the others were.\n{lines}",
        metadata=metadata,
        allow_retries=any(transient for _, _, transient in result.failures),
    )


_DESCRIPTION = (
    "Soft deletes: taptouch.orders.deleted_at for orders of the last TAPTOUCH_RECONCILE_DAYS days (default 7) "
    "that two complete listings TAPTOUCH_RECONCILE_CONFIRM_S (3600 s) apart no longer return; cleared when a "
    "listing returns them again (it reaches back to the deletions of the last TAPTOUCH_RESTORE_DAYS days, "
    "default 30). Repairs orders the warehouse lacks or holds older. Run config "
    "confirm_mass_deletion_stores: [<store>] confirms an unusual share of deletions."
)


def deletions_definitions(
    account: Account = DEFAULT,
) -> tuple[dg.AssetsDefinition, "UnresolvedAssetJobDefinition", dg.ScheduleDefinition]:
    """``order_deletions`` of one account (under its key prefix, in its pool, with its resource),
    its job and its schedule (every 6 hours; named ``orders_reconcile_daily`` as before)."""
    resource_key = account.resource_key

    @dg.asset(
        key=account.key(RECONCILE_ASSET),
        group_name=account.group,
        kinds={"taptouch", "postgres"},
        deps=[account.key("orders")],
        check_specs=[aggregates.check_spec(account.key(RECONCILE_ASSET), "the reconciliation's period")],
        pool=account.pool,
        required_resource_keys={resource_key, "warehouse"},
        retry_policy=dg.RetryPolicy(
            max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
        ),
        metadata={
            "writes": "taptouch.orders.deleted_at and taptouch.deletion_candidates; repairs (orders the "
            "warehouse lacks or holds older) through the orders loader's merge"
        },
        description=_DESCRIPTION,
    )
    def order_deletions(context: dg.AssetExecutionContext, config: ReconcileConfig) -> dg.MaterializeResult:
        """Compare the API's orders with the warehouse's: repair, record candidates, confirm, restore."""
        # the assets' run context (settings, migrations, a verified client, a connection) and error policy
        from .assets.taptouch import run_context, step_errors

        taptouch, warehouse = getattr(context.resources, resource_key), context.resources.warehouse
        started = time.monotonic()
        with step_errors(), run_context(taptouch, warehouse, account=account, context=context) as run:
            listing = run.store_listing(context)
            result = reconcile_orders(
                run.client,
                run.conn,
                days=run.settings.reconcile_days,
                store_ids=listing.store_ids,
                timezones=listing.timezones,
                confirm_s=run.settings.reconcile_confirm_s,
                restore_days=run.settings.restore_days,
                confirm_mass_deletion_stores=config.confirm_mass_deletion_stores,
                excused_stores=config.excused_stores,
                unreadable_stores=list(listing.invalid),  # their orders are not listed: they hold deletions back
                late=run.settings.lookback,
                run_id=context.run.run_id,
                progress=context.log.info,
            )
            api_md = run.api_metadata()
            check = _aggregates_check(run, result, account)
        metadata = {**_reconcile_metadata(result), **api_md, "duration_s": round(time.monotonic() - started, 3)}
        _fail_if_not_reconciled(result, metadata)
        return dg.MaterializeResult(metadata=metadata, check_results=[check])

    job, schedule = _reconcile_job_and_schedule(account)
    return order_deletions, job, schedule


def _aggregates_check(run: Any, result: ReconcileResult, account: Account) -> dg.AssetCheckResult:
    """``sales_aggregates_exact`` over the reconciliation's period: its deletions, restores and
    repairs, and whatever else moved a recent store-day (a zone change, a stores load) since the
    orders runs last checked it."""
    mine = None if account.is_default else account.name
    with run.connect() as conn:
        return aggregates.check_result(conn, result.start, result.end, mine, account.key(RECONCILE_ASSET))


def _reconcile_job_and_schedule(
    account: Account,
) -> tuple["UnresolvedAssetJobDefinition", dg.ScheduleDefinition]:
    """The account's job of ``order_deletions`` and its schedule (every 6 hours)."""
    job = dg.define_asset_job(
        account.named("orders_reconcile_job"),
        selection=dg.AssetSelection.assets(account.key(RECONCILE_ASSET)),
        description="Repair and soft-delete recent orders (two listings apart confirm a deletion); restore those "
        "listed again.",
    )
    schedule = dg.ScheduleDefinition(
        name=account.named("orders_reconcile_daily"),
        job=job,
        cron_schedule=RECONCILE_CRON,
        execution_timezone="UTC",
        description="Every 6 hours (00:30, 06:30, 12:30, 18:30 UTC; the name says daily for compatibility): "
        "reconcile the last TAPTOUCH_RECONCILE_DAYS days of orders (repairs, deletions confirmed by a "
        "second listing, restores).",
    )
    return job, schedule
