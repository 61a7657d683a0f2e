"""Sync jobs independent of Dagster: API -> loader, with parallel stores and per-store isolation.

The assets call these functions, and so do the benchmark and the reliability report. One orders
window: stores are fetched in bounded parallel threads (one client, one token cache and rate
limit) that hand pages to the calling thread through a bounded queue of typed events, so fetching
and staging overlap and memory does not grow with the window; a failing store is dropped, the
others commit. A ranged run (:func:`sync_orders_windows`) keeps :data:`WINDOWS_IN_FLIGHT` windows
fetching (and one more staged, waiting to merge or merging), each its own connection and
transaction, committing in window order. Only
:func:`sync_stores` writes ``taptouch.stores``. docs/operating.md; the figures: docs/performance.md.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from taptouch_resource import TaptouchAPIError, TaptouchClient, TaptouchError
from taptouch_resource.listing import EndUnknown
from taptouch_resource.retry import RETRY_STATUSES, stop_on

from .settings import RunSettings
from .warehouse import derived, marks, ownership
from .warehouse import records as record_rules
from .warehouse.budget import requests_of
from .warehouse.db import warehouse_misconfigured
from .warehouse.history import Retention
from .warehouse.loader import (
    LoadCounts,
    OrderWindowLoad,
    _product_id,
    load_inventory,
    load_stores,
    store_timezones,
)

log = logging.getLogger(__name__)

WINDOWS_IN_FLIGHT = 2
"""Windows of a ranged run fetched and staged at once (:func:`sync_orders_windows`), each in its own
transaction on its own connection; a third, staged, waits for its turn to merge or merges meanwhile."""


@dataclass
class StoreFailure:
    store_id: int
    error: str
    transient: bool  # worth retrying the step (network, 5xx, 429, a lost database connection)

    def __str__(self) -> str:
        return f"store {self.store_id}: {self.error}"


@dataclass
class SyncResult:
    counts: LoadCounts = field(default_factory=LoadCounts)
    stores_ok: list[int] = field(default_factory=list)
    failures: list[StoreFailure] = field(default_factory=list)
    pages: int = 0
    records: int = 0
    seconds: float = 0.0
    per_store: dict[int, dict[str, int]] = field(default_factory=dict)
    pages_skipped: int = 0  # pages not requested thanks to the high-water marks (estimated)
    incremental_stores: int = 0  # stores fetched from their mark instead of the window's start
    incomplete: list[int] = field(default_factory=list)  # stores whose listing may have missed a record

    def merge(self, other: SyncResult) -> None:
        self.counts += other.counts
        self.stores_ok = sorted(set(self.stores_ok) | set(other.stores_ok))
        self.failures.extend(other.failures)
        self.pages += other.pages
        self.records += other.records
        self.seconds += other.seconds
        self.pages_skipped += other.pages_skipped
        self.incremental_stores += other.incremental_stores
        self.incomplete = sorted(set(self.incomplete) | set(other.incomplete))


def is_transient(exc: BaseException) -> bool:
    """Can retrying cure it? A network error, a 408, 429, 500, 502-504 or a proxy's 52x from the
    API (what the client retries; not 501 or 505, which say the request itself is wrong), or a lost database
    connection (psycopg's OperationalError: also deadlocks and cancelled statements). Anything
    else (credentials, 4xx, a malformed answer, a bug) fails the same way again."""
    if isinstance(exc, EndUnknown):  # a last page that changed while it was read: the data moved
        return True
    if isinstance(exc, TaptouchAPIError):  # the statuses the client itself retries (RETRY_STATUSES)
        return exc.status == 0 or exc.status in RETRY_STATUSES
    if isinstance(exc, psycopg.OperationalError):
        return not warehouse_misconfigured(exc)
    return False


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TaptouchError) else f"{type(exc).__name__}: {exc}"


def day_window(day: date | str) -> tuple[datetime, datetime]:
    """[day 00:00Z, next day 00:00Z)."""
    d = date.fromisoformat(day) if isinstance(day, str) else day
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


@dataclass(frozen=True)
class OrderWindow:
    """The orders with ``updated_at`` in ``[start, end)``, loaded as one transaction. ``key`` names
    it: the ``window`` of its high-water marks, sync_log and quarantine rows (a daily partition
    key for the ``orders`` asset)."""

    key: str
    start: datetime
    end: datetime

    @classmethod
    def day(cls, day: date | str) -> OrderWindow:
        """The UTC day ``day`` (a daily partition of ``orders``), keyed ``YYYY-MM-DD``."""
        start, end = day_window(day)
        return cls(start.date().isoformat(), start, end)


@dataclass(frozen=True)
class FullRefresh:
    """Sync mode: every store's whole window, whatever its high-water mark (the marks record the
    full load)."""

    def __str__(self) -> str:
        return "full refresh (high-water marks ignored)"


@dataclass(frozen=True)
class Incremental:
    """Sync mode: each store from its high-water mark minus ``lookback`` (replica lag), or from the
    window's start when it has none (:mod:`.warehouse.marks`)."""

    lookback: timedelta

    def __str__(self) -> str:
        return f"incremental from each store's high-water mark, lookback {self.lookback}"


SyncMode = FullRefresh | Incremental
FULL_REFRESH = FullRefresh()


@dataclass(frozen=True)
class OrdersRun:
    """What every window of one orders run shares: the stores and their time zones (which date
    the orders: :attr:`StoreListing.timezones`), the sync mode, the run's settings (store workers,
    batch size) and where progress goes. ``store_ids``: the stores to load (unset: every store of
    ``timezones``); one whose time zone is unknown is a named, permanent failure."""

    timezones: dict[int, str]
    mode: SyncMode = FULL_REFRESH
    settings: RunSettings = RunSettings()
    run_id: str | None = None
    progress: Callable[[str], None] = log.info
    store_ids: list[int] | None = None


# ------------------------------------------------------------------------------------------------
# stores


def sync_stores(
    client: TaptouchClient,
    conn: psycopg.Connection,
    *,
    run_id: str | None = None,
    day_start: timedelta | None = None,
) -> tuple[LoadCounts, list[dict]]:
    """Fetch every store the token may read and upsert them into ``taptouch.stores`` (the ``stores``
    asset, the table's one writer), except the stores another account owns
    (:mod:`.warehouse.ownership`). Returns counts and the raw records loaded. ``day_start``: the
    run's TAPTOUCH_BUSINESS_DAY_START; stores whose day start moved get their orders re-dated
    (:func:`.warehouse.derived.apply_day_starts`)."""
    # read as list_stores reads it (_every_store: a store a shifted page hid is found by the next pass)
    records = list(_every_store(client))
    ids = [r.get("id") for r in records if isinstance(r, dict)]
    foreign = ownership.foreign_stores(conn, [i for i in ids if isinstance(i, int) and not isinstance(i, bool)])
    if foreign:
        _warn_foreign(conn, foreign)
        records = [r for r in records if not (isinstance(r, dict) and r.get("id") in foreign)]
    counts = load_stores(conn, records, run_id=run_id)
    if day_start is not None:
        counts.business_dates_rederived += sum(derived.apply_day_starts(conn, day_start).values())
    log.info(
        "stores: %d listed, %d inserted, %d updated, %d unchanged, %d quarantined",
        len(records),
        counts.inserted,
        counts.updated,
        counts.unchanged,
        counts.quarantined,
    )
    return counts, records


def _warn_foreign(conn: psycopg.Connection, foreign: dict[int, str]) -> None:
    """Name each store another account owns (skipped); stores of the unnamed account listed by a
    named one fail the run instead (:func:`.warehouse.ownership.refuse_unnamed_owner`)."""
    me = ownership.session_account(conn)
    ownership.refuse_unnamed_owner(me, foreign)
    for sid, owner in sorted(foreign.items()):
        log.warning(
            "store %s skipped: account %r lists it, but account %r loaded it first and owns it "
            "(see docs/operating.md, 'Several accounts')",
            sid,
            me,
            owner,
        )


STORE_LISTING_PASSES = 3
"""A store listing of more than one page is read until a pass adds no store (at most this many passes)."""


def _every_store(client: TaptouchClient) -> Iterator[Any]:
    """The records of the API's store listing, read again while a pass finds stores the passes before
    it missed. The listing is read by page number: a store that leaves it while it is read (revoked,
    made forbidden: the contract's "stores that become forbidden") shifts every later store one place
    forward, and the store on the next page boundary is never served, though the token could read it
    all along; its orders would silently not be loaded (the window checks cover listed stores only).
    A listing of one page is one answer and cannot shift: it is read once. A store's records are
    those of the first pass that served it (duplicates within that pass included: the loader picks
    the newest), so a store appears in one pass's records only."""
    ids: set[Any] = set()
    for n in range(STORE_LISTING_PASSES):
        records = list(client.list_stores())
        new = [r for r in records if _store_key(r) not in ids]
        yield from new
        found = {_store_key(r) for r in new}
        ids |= found
        if len(records) < client.page_size or (n and not found):
            return
        if n:
            log.warning("stores: a listing pass found %d store(s) the passes before it missed", len(found))


def _store_key(record: Any) -> Any:
    sid = record.get("id") if isinstance(record, dict) else None
    # (a boolean id is no store's: True == 1 would take store 1 for it)
    return sid if isinstance(sid, (int, str)) and not isinstance(sid, bool) else repr(record)


@dataclass(frozen=True)
class StoreListing:
    """The API's store listing, read only: each valid store's time zone, the records that break
    the loader's rules (record key -> reason), which cost only their own store, and the stores
    another account owns (store id -> that account), which this account skips."""

    timezones: dict[int, str]
    invalid: dict[str, str]
    foreign: dict[int, str] = field(default_factory=dict)

    @property
    def store_ids(self) -> list[int]:
        return sorted(self.timezones)


def list_stores(client: TaptouchClient, conn: psycopg.Connection | None = None) -> StoreListing:
    """Which stores exist and their time zones, from the API (never written to the warehouse).
    Each record is checked with the rules the loader applies (the record boundary,
    :func:`pipelines.warehouse.records.parse_store`). With ``conn``, the stores another account
    owns are left out (``foreign``), with a warning naming both accounts."""
    timezones: dict[int, str] = {}
    invalid: dict[str, str] = {}
    for raw in _every_store(client):
        try:
            row = record_rules.parse_store(raw)
        except record_rules.InvalidRecord as exc:
            invalid[record_rules.record_key("store", raw) or "(no id)"] = exc.reason
            continue
        timezones[row["store_id"]] = row["timezone"]
    for key, reason in invalid.items():
        log.warning("store %s skipped: its store record is malformed (%s)", key, reason)
    foreign = ownership.foreign_stores(conn, sorted(timezones)) if conn is not None else {}
    if foreign and conn is not None:
        _warn_foreign(conn, foreign)
        timezones = {sid: tz for sid, tz in timezones.items() if sid not in foreign}
    return StoreListing(timezones, invalid, foreign)


# ------------------------------------------------------------------------------------------------
# orders: fetchers -> typed events -> one window load


@dataclass(frozen=True)
class PageFetched:
    store_id: int
    records: list


@dataclass(frozen=True)
class StoreDone:
    """A store's listing ended. ``complete``: it is known to hold every order that was in range for
    the whole listing; ``mark``: where the store's high-water mark may move (:func:`marks.mark_for`)."""

    store_id: int
    pages: int
    orders: int
    complete: bool = True
    mark: datetime | None = None
    listed_from: datetime | None = None
    started_at: datetime | None = None  # the API's clock, never after this machine's (OrderListing)


@dataclass(frozen=True)
class StoreFailed:
    store_id: int
    error: BaseException


FetchEvent = PageFetched | StoreDone | StoreFailed


class WindowCancelled(Exception):
    """The caller of :func:`sync_orders_windows` stopped (run termination): this window stopped
    before its merge, and rolled back; or an earlier window of the run failed and this one was
    never started (it fetched nothing)."""


_ABANDON_AFTER_S = 1.0  # a stopping window waits this long for fetch threads busy in a request
_CANCEL_POLL_S = 0.2  # how often a window waiting for its fetchers or its turn to merge checks ``cancel``


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise WindowCancelled("the run stopped before this window merged; it was rolled back")


def _wait_for(previous: threading.Event, cancel: threading.Event | None) -> None:
    """Wait until the previous window of the run has committed, rolled back or failed."""
    while not previous.wait(_CANCEL_POLL_S):
        _check(cancel)
    _check(cancel)


class _OrderFetchers:
    """Fetch threads for the stores of one window; :meth:`events` yields what they report, until
    every store is done or failed. Leaving the ``with`` block stops the threads still fetching: their
    waits (budget, 429, back-off) end at once (:func:`taptouch_resource.retry.stop_on`); a request
    already on the wire is not waited for when the block is left by an exception (a run being
    terminated, a window cancelled): the daemon thread is abandoned, and ends with that request."""

    def __init__(
        self,
        client: TaptouchClient,
        window: OrderWindow,
        starts: dict[int, datetime],
        workers: int,
        late: timedelta = timedelta(0),
    ):
        self.client, self.starts, self.end = client, starts, window.end
        self.late = late  # how late a record may reach the listing (the run's lookback)
        self.label = window.key  # the label of the threads' requests (budget.RequestMeter counts them apart)
        self.events_q: queue.Queue[FetchEvent] = queue.Queue(maxsize=max(4, 2 * workers))
        self.stop = threading.Event()
        self.workers = workers
        self._todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> _OrderFetchers:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.stop.set()
        give_up = None if exc_type is None else time.monotonic() + _ABANDON_AFTER_S
        for thread in self._threads:
            thread.join(None if give_up is None else max(0.0, give_up - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            log.warning("%d fetch thread(s) still waiting on a request were left to end on their own", len(stuck))

    def events(self, store_ids: list[int], cancel: threading.Event | None = None) -> Iterator[FetchEvent]:
        """The stores' events as they come; :class:`WindowCancelled` once ``cancel`` is set."""
        for store_id in store_ids:
            self._todo.put(store_id)
        for n in range(min(self.workers, len(store_ids))):
            thread = threading.Thread(target=self._work, name=f"taptouch-fetch-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        pending = set(store_ids)
        while pending:
            if cancel is None:
                event = self.events_q.get()
            else:
                try:
                    event = self.events_q.get(timeout=_CANCEL_POLL_S)
                except queue.Empty:
                    _check(cancel)
                    continue
                _check(cancel)
            if not isinstance(event, PageFetched):
                pending.discard(event.store_id)
            yield event

    def _work(self) -> None:
        while not self.stop.is_set():
            try:
                store_id = self._todo.get_nowait()
            except queue.Empty:
                return
            self._fetch(store_id)

    def _put(self, event: FetchEvent) -> None:
        while not self.stop.is_set():
            try:
                self.events_q.put(event, timeout=0.2)
                return
            except queue.Full:
                continue

    def _fetch(self, store_id: int) -> None:
        # leaving stop_on (a run stopping) ends this thread's waits at once; requests_of: the
        # window's requests are counted apart (budget.RequestMeter)
        with stop_on(self.stop), requests_of(self.label):
            self._fetch_store(store_id)

    def _fetch_store(self, store_id: int) -> None:
        pages = orders = 0
        try:
            # the last page is asked for twice: an empty or cut-short 200 answer looks like the
            # listing's end, and a complete listing proves the window (taptouch.listing_proofs)
            listing = self.client.iter_order_record_pages(
                store_id, updated_from=self.starts[store_id], updated_to=self.end, confirm_end=True, late=self.late
            )
            for page in listing:
                if self.stop.is_set():
                    return
                pages += 1
                orders += len(page)
                self._put(PageFetched(store_id, page))
            self._put(
                StoreDone(
                    store_id,
                    pages,
                    orders,
                    complete=listing.complete,
                    mark=marks.mark_for(listing),
                    listed_from=self.starts[store_id],
                    started_at=listing.started_at,
                )
            )
        except BaseException as exc:  # reported per store, never silently
            self._put(StoreFailed(store_id, exc))


def _apply_event(
    event: FetchEvent, load: OrderWindowLoad, result: SyncResult, window: OrderWindow, progress: Callable[[str], None]
) -> None:
    """Apply one fetch event to the window's load and to the result."""
    if isinstance(event, PageFetched):
        load.add_page(event.store_id, event.records)
    elif isinstance(event, StoreDone):
        complete = None  # (listed from, to, started at) of a complete listing
        if event.complete and event.started_at is not None and event.listed_from is not None:
            complete = (event.listed_from, window.end, event.started_at)
        load.store_listed(event.store_id, event.mark, complete)
        if not event.complete:
            result.incomplete.append(event.store_id)
            log.warning(
                "orders %s: store %s: the listing may have missed a record (one moved while it was read, "
                "or its last page answered differently when asked again); what it read is loaded, the "
                "window is not proven, and the store's high-water mark stays so the next run asks again",
                window.key,
                event.store_id,
            )
        result.pages += event.pages
        result.records += event.orders
        result.stores_ok.append(event.store_id)
        result.per_store[event.store_id] = {"pages": event.pages, "orders": event.orders}
        progress(f"store {event.store_id}: {event.pages} pages, {event.orders} orders ({window.key})")
    else:
        load.discard_store(event.store_id, describe(event.error))
        failure = StoreFailure(event.store_id, describe(event.error), is_transient(event.error))
        result.failures.append(failure)
        log.error("orders %s: %s", window.key, failure)


def _known_stores(store_ids: list[int], timezones: dict[int, str], result: SyncResult) -> list[int]:
    """The stores whose time zone is known; the others become named, permanent failures."""
    for sid in store_ids:
        if sid not in timezones:
            result.failures.append(
                StoreFailure(
                    sid,
                    f"store {sid} is not in the API's store listing, so its time zone and the orders' "
                    f"business dates are unknown",
                    transient=False,
                )
            )
    return [sid for sid in store_ids if sid in timezones]


def _fetch_starts(
    conn: psycopg.Connection,
    client: TaptouchClient,
    window: OrderWindow,
    store_ids: list[int],
    mode: SyncMode,
    result: SyncResult,
    progress: Callable[[str], None],
) -> dict[int, datetime]:
    """Where each store's fetch starts: the window's start, or (incremental) its mark - lookback;
    counts the pages that are not requested again (orders already loaded before that point)."""
    if not isinstance(mode, Incremental):
        return {sid: window.start for sid in store_ids}
    stored_marks = marks.read(conn, window.key, store_ids)
    starts = {sid: marks.fetch_from(window.start, stored_marks.get(sid), mode.lookback) for sid in store_ids}
    from_mark = {sid: at for sid, at in starts.items() if at > window.start}
    if from_mark:
        with conn.cursor() as cur:
            cur.execute(
                "select s.store_id, count(o.order_id)"
                " from unnest(%s::bigint[], %s::timestamptz[]) as s(store_id, f)"
                " left join taptouch.orders o on o.store_id = s.store_id and o.updated_at >= %s"
                " and o.updated_at < s.f group by s.store_id",
                (list(from_mark), list(from_mark.values()), window.start),
            )
            before: dict[int, int] = dict(cur.fetchall())
        result.incremental_stores += len(from_mark)
        result.pages_skipped += sum(n // client.page_size for n in before.values())  # whole pages only
        progress(
            f"orders {window.key}: {len(from_mark)} of {len(store_ids)} stores from their high-water mark "
            f"(lookback {mode.lookback}); about {result.pages_skipped} pages not requested again"
        )
    return starts


def sync_orders_window(
    client: TaptouchClient,
    conn: psycopg.Connection,
    window: OrderWindow,
    run: OrdersRun,
    *,
    cancel: threading.Event | None = None,
    before_merge: Callable[[], None] | None = None,
) -> SyncResult:
    """Load the orders of ``window`` of every store of ``run`` as one transaction.

    :class:`Incremental`: each store is asked only from its high-water mark minus the lookback
    (:mod:`.warehouse.marks`); :class:`FullRefresh`: the whole window. Either way a store's mark
    moves with the data, but only from a complete listing, and never past the instant its listing
    started (the API's clock, never after this machine's; ``result.incomplete`` names the stores whose mark stayed).

    Stores that fail are discarded from the window and listed in ``result.failures``; everything
    else commits. An error on the database side rolls the whole window back and propagates.

    ``cancel`` (set by :func:`sync_orders_windows` when its caller stops): the window stops fetching
    and rolls back (:class:`WindowCancelled`) unless its merge has begun. ``before_merge`` is called
    between the load's two steps, once everything is staged and before the merge takes its lock
    (e.g. to wait, outside any statement, for the run's previous window to commit).
    """
    t0 = time.monotonic()
    result = SyncResult()
    store_ids = _known_stores(sorted(run.timezones) if run.store_ids is None else run.store_ids, run.timezones, result)
    if not store_ids:
        run.progress(f"orders {window.key}: no stores to load")
        result.seconds = time.monotonic() - t0
        return result
    # a moved day start (TAPTOUCH_BUSINESS_DAY_START, a store's own) re-dates the stores' orders first
    derived.apply_day_starts(conn, run.settings.business_day_start)
    workers = max(1, min(run.settings.store_workers, len(store_ids)))
    starts = _fetch_starts(conn, client, window, store_ids, run.mode, result, run.progress)
    with (
        _OrderFetchers(client, window, starts, workers, late=run.settings.lookback) as fetchers,
        window_load(conn, window, run) as load,
    ):
        for event in fetchers.events(store_ids, cancel):
            _apply_event(event, load, result, window, run.progress)
        _check(cancel)
        load.close_staging()  # staged; no lock is held yet
        if before_merge is not None:
            before_merge()
        result.counts = load.finish()  # the merge, and the commit
    for sid, sc in load.per_store.items():
        if sid in result.per_store:
            result.per_store[sid].update(
                inserted=sc.inserted, updated=sc.updated, unchanged=sc.unchanged, quarantined=sc.quarantined
            )
    result.stores_ok.sort()
    result.seconds = time.monotonic() - t0
    return result


def window_load(conn: psycopg.Connection, window: OrderWindow, run: OrdersRun) -> OrderWindowLoad:
    """The load of one orders window as the run makes it: its stores' time zones, the sync mode,
    the run's batch size, history retention and lookback (how long its proofs let records settle)."""
    return OrderWindowLoad(
        conn,
        window=window.key,
        run_id=run.run_id,
        timezones=run.timezones,
        full=isinstance(run.mode, FullRefresh),
        batch_size=run.settings.batch_size,
        decode_processes=run.settings.decode_processes,
        retention=Retention(run.settings.history_days),
        settle=run.settings.lookback,
    )


def sync_orders_windows(
    client: TaptouchClient,
    connect: Callable[[], psycopg.Connection],
    windows: list[OrderWindow],
    run: OrdersRun,
    *,
    in_flight: int = WINDOWS_IN_FLIGHT,
) -> Generator[tuple[OrderWindow, SyncResult], None, None]:
    """:func:`sync_orders_window` for each of ``windows``, up to ``in_flight`` fetching and staging
    at once (and one more waiting for its turn to merge, or merging), each on its own connection
    from ``connect()`` (autocommit, as the caller would pass to :func:`sync_orders_window`); yields
    ``(window, result)`` in the windows' order.

    Each window is its own transaction, exactly as when loaded one after the other; overlapping
    them only lets one window's merge (PostgreSQL's work) run while the next windows are fetched and
    staged (the client's, and the API's): a window that has staged everything gives its place to
    the next one while it waits for its turn. The merges themselves commit in the windows' order (a window ready
    first waits, outside any statement, for the one before it), so the warehouse ends as after a
    serial run even when an order edited between two windows' fetches is in both (which version's
    quarantine row is resolved), and no window spends a statement (under statement_timeout) waiting
    for a whole merge of its own run. The windows share ``client`` (its token and request budget).

    If a window raises, the windows already fetching or staged finish (each commits or rolls back
    on its own, and is safe to load again), no further window starts fetching, and the error
    propagates once they have. If the
    caller stops instead (run termination raises in the calling thread, or the generator is
    closed), the windows in flight stop fetching and roll back (those already merging commit), as
    a window loaded alone would; then the caller's exception propagates.
    """
    if in_flight <= 1 or len(windows) <= 1:
        for window in windows:
            with connect() as conn:
                result = sync_orders_window(client, conn, window, run)
            yield window, result
        return
    yield from _WindowsInFlight(client, connect, windows, run, in_flight).results()


class _Places:
    """The places of the windows fetching and staging at once: taken in window order (window ``i``
    waits for the windows before it to have taken theirs), given back once the window has staged
    everything or ended. Once a window of the run has failed (``failed``) or the caller stopped
    (``cancel``), no window takes a place: it raises :class:`WindowCancelled` before fetching."""

    def __init__(self, places: int, cancel: threading.Event):
        self.free, self.next, self.cancel = places, 0, cancel
        self.failed = threading.Event()
        self.changed = threading.Condition()

    def take(self, i: int) -> None:
        with self.changed:
            while True:
                if self.failed.is_set():
                    raise WindowCancelled("an earlier window of the run failed; this one was not started")
                _check(self.cancel)
                if self.next == i and self.free > 0:
                    break
                self.changed.wait(_CANCEL_POLL_S)
            self.free -= 1
            self.next += 1
            self.changed.notify_all()  # the next window may take a place now

    def give_back(self) -> None:
        with self.changed:
            self.free += 1
            self.changed.notify_all()


class _WindowsInFlight:
    """Windows of one run loaded ``in_flight`` at a time on a thread pool, their merges in order
    (:func:`sync_orders_windows`)."""

    def __init__(
        self,
        client: TaptouchClient,
        connect: Callable[[], psycopg.Connection],
        windows: list[OrderWindow],
        run: OrdersRun,
        in_flight: int,
    ):
        self.client, self.connect, self.windows, self.run, self.in_flight = client, connect, windows, run, in_flight
        self.cancel = threading.Event()
        self.ended = [threading.Event() for _ in windows]  # window i committed, rolled back or failed
        self.places = _Places(in_flight, self.cancel)  # windows fetching and staging at once

    def _load(self, i: int) -> SyncResult:
        previous = self.ended[i - 1] if i else None
        self.places.take(i)
        held = [True]

        def give_back() -> None:  # once: when staged, or when the window ends before that
            if held[0]:
                held[0] = False
                self.places.give_back()

        def before_merge() -> None:
            give_back()  # staged: the next window fetches while this one waits for its turn and merges
            if previous is not None:
                _wait_for(previous, self.cancel)

        try:
            with self.connect() as conn:
                return sync_orders_window(
                    self.client, conn, self.windows[i], self.run, cancel=self.cancel, before_merge=before_merge
                )
        except WindowCancelled:
            raise
        except BaseException:
            self.places.failed.set()  # before its place is given back: no later window starts
            raise
        finally:
            give_back()
            self.ended[i].set()

    def results(self) -> Iterator[tuple[OrderWindow, SyncResult]]:
        # one window more than fetch at once: it fetches while the others wait for their turn or merge
        pool = ThreadPoolExecutor(max_workers=self.in_flight + 1, thread_name_prefix="orders-window")
        window_failed = False
        try:
            started = [(i, pool.submit(self._load, i)) for i in range(min(self.in_flight + 1, len(self.windows)))]
            following = len(started)
            while started:
                i, future = started.pop(0)
                try:
                    result = future.result()
                except BaseException as exc:
                    # the window's own error, or the calling thread interrupted while it waited
                    window_failed = future.done() and not future.cancelled() and future.exception() is exc
                    raise
                if following < len(self.windows):
                    started.append((following, pool.submit(self._load, following)))
                    following += 1
                yield self.windows[i], result
        finally:
            if not window_failed:  # the caller stopped: the windows in flight roll back
                self.cancel.set()
            try:
                pool.shutdown(wait=True)
            except BaseException:  # interrupted again while the windows finish: stop them now
                self.cancel.set()
                pool.shutdown(wait=True)
                raise


# ------------------------------------------------------------------------------------------------
# inventory


def _against_levels(conn: psycopg.Connection, store_id: int, listed: set[int | None]) -> tuple[int, int]:
    """(products the store's levels hold that ``listed`` lacks, listed products they do not hold)."""
    ids = sorted(p for p in listed if p is not None)
    row = conn.execute(
        "select (select count(*) from taptouch.inventory_levels where store_id = %s and product_id <> all(%s)),"
        " (select count(*) from unnest(%s::bigint[]) as l(product_id) where not exists (select 1 from"
        " taptouch.inventory_levels i where i.store_id = %s and i.product_id = l.product_id))",
        (store_id, ids, ids, store_id),
    ).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def _superseded_with_news(
    conn: psycopg.Connection, store_id: int, records: list[bytes], listed_since: datetime
) -> bool:
    """Whether a listing that an overlapping newer one superseded (it changed nothing) returned
    products the warehouse does not hold: the newer listing may have missed them (a page shifted
    under a deletion) or they may be gone since; a fresh listing of the store decides."""
    row = conn.execute(
        "select listed_since from taptouch.inventory_listings where store_id = %s", (store_id,)
    ).fetchone()
    if row is None or row[0] <= listed_since:
        return False
    _, news = _against_levels(conn, store_id, {_product_id(raw) for raw in records})
    if news:
        log.info(
            "inventory of store %s: superseded by a newer listing that lacks %d of its products; listed afresh",
            store_id,
            news,
        )
    return bool(news)


def _held_products(conn: psycopg.Connection, store_id: int) -> set[int]:
    """The products the store's levels hold now."""
    rows = conn.execute("select product_id from taptouch.inventory_levels where store_id = %s", (store_id,))
    return {r[0] for r in rows}


def _listed_again(
    client: TaptouchClient, conn: psycopg.Connection, store_id: int, records: list[bytes], held: set[int]
) -> list[bytes] | None:
    """When the listing misses products the warehouse holds, or returns products it does not hold,
    the store is listed once more and the records of products the first pass did not return are
    added: inventory pages are numbered, so a product deleted on a page already read shifts the next
    page's first product onto that page, unread by this listing, and it would be delisted although
    it is stocked (or, new, be left out; a deletion and an addition come together). A product missing from
    both passes is delisted (a second deletion during the second pass could shift again: the next
    sync lists it back). None when the store was not listed again."""
    listed = {_product_id(raw) for raw in records}
    missing, news = len(held - listed), len({p for p in listed if p is not None} - held)
    if not missing and not news:
        return None
    again = [raw for raw in client.iter_inventory_records(store_id) if _product_id(raw) not in listed]
    log.info(
        "inventory of store %s: %d held product(s) missing from the listing and %d new; listed again to "
        "confirm (%d record(s) only the second pass returned)",
        store_id,
        missing,
        news,
        len(again),
    )
    return again


INVENTORY_LISTING_TRIES = 3
"""Listings of one store's inventory tried while its last page answers differently when asked again."""


def _inventory_records(client: TaptouchClient, store_id: int) -> list[bytes]:
    """One store's inventory listing. Its last page is asked twice (an answer cut short looks like
    the end); two different short answers mean the data changed under the paginator (a product
    delisted or added meanwhile, an ordinary change): the store is listed afresh, and only a listing
    that keeps changing fails the store, as a transient failure."""
    for attempt in range(1, INVENTORY_LISTING_TRIES + 1):
        try:
            return list(client.iter_inventory_records(store_id))
        except EndUnknown:
            if attempt == INVENTORY_LISTING_TRIES:
                raise
            log.info("inventory of store %s: its last page changed while it was read; listed afresh", store_id)
    raise AssertionError("unreachable")


def _store_inventory(
    client: TaptouchClient,
    conn: psycopg.Connection,
    store_id: int,
    *,
    dated: Callable[[], tuple[datetime, date]],
    run_id: str | None,
    confirm_s: int | None,
) -> tuple[list[bytes], LoadCounts]:
    """One store's inventory listed (twice when the first misses held products) and loaded; listed
    afresh once when an overlapping newer listing superseded it and lacks some of its products.
    ``dated``: the clock and the snapshot date of a listing starting now (each listing is dated when
    it starts: one taken afresh may start after the store's midnight). Returns (the records, the
    load's counts)."""
    for attempt in (1, 2):
        now, snapshot_date = dated()
        # the database's clock before the listing: which listing is the store's newest
        listed_since = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
        records = _inventory_records(client, store_id)  # exact bytes: raw is what the API sent
        # what the listing is judged against: a product another listing commits after this check
        # (an older overlapping run) was never looked for twice by this one, so it delists only these
        held = _held_products(conn, store_id)
        again = _listed_again(client, conn, store_id, records, held)
        records += again or []
        counts = load_inventory(
            conn,
            store_id,
            records,
            snapshot_date=snapshot_date,
            run_id=run_id,
            now=now,
            # listed twice: what both passes miss is gone (an empty store, most products delisted:
            # two listings agree, no wait for a later one)
            confirm_s=0 if again is not None else confirm_s,
            listed_since=listed_since,
            delistable=held,
        )
        if attempt == 2 or not _superseded_with_news(conn, store_id, records, listed_since):
            break
    return records, counts


def _now() -> datetime:
    """This machine's clock (a test moves it)."""
    return datetime.now(UTC)


def sync_inventory(
    client: TaptouchClient,
    conn: psycopg.Connection,
    *,
    timezones: dict[int, str],
    store_ids: list[int] | None = None,
    run_id: str | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    confirm_s: int | None = None,
) -> SyncResult:
    """Replace each store's inventory levels and upsert today's snapshot (the store's business date).

    ``timezones``: store id -> IANA zone (:attr:`StoreListing.timezones`). The snapshot is dated as
    the store's orders are: by the zone the warehouse holds (the listing's only for a store the
    warehouse does not hold yet) and the day start their dates follow
    (:func:`.warehouse.derived.dated_starts`; a snapshot keeps its date when the start changes later).
    ``confirm_s``: the run's ``TAPTOUCH_RECONCILE_CONFIRM_S`` (:func:`load_inventory`). Each store
    commits on its own: one store failing costs the others nothing. ``now``: the clock of every
    store (default: this machine's when the store is listed, so that a run crossing a store's
    midnight files the stock it reads after it under the new day).
    """
    t0 = time.monotonic()
    progress = progress or log.info
    store_ids = sorted(timezones) if store_ids is None else store_ids
    result = SyncResult()
    for store_id in store_ids:

        def dated(store_id: int = store_id) -> tuple[datetime, date]:
            # a snapshot is dated as the orders beside it, by the zone the warehouse holds when the
            # store is listed (derived.follow_store_zones): the listing's may lag or lead the stores
            # asset, and a stores run may correct the zone while this run lists other stores
            at = now or _now()
            zone = store_timezones(conn, store_id).get(store_id) or timezones.get(store_id, "UTC")
            start = derived.dated_starts(conn, store_id).get(store_id, record_rules.NO_DAY_START)
            return at, record_rules.local_date(at, zone, start)

        try:
            records, counts = _store_inventory(client, conn, store_id, dated=dated, run_id=run_id, confirm_s=confirm_s)
        except TaptouchError as exc:
            failure = StoreFailure(store_id, describe(exc), is_transient(exc))
            result.failures.append(failure)
            log.error("inventory: %s", failure)
            continue
        result.counts += counts
        result.records += len(records)
        result.stores_ok.append(store_id)
        result.per_store[store_id] = {"products": len(records), **counts.as_dict()}
        progress(f"store {store_id}: {len(records)} inventory levels ({counts.deleted} delisted)")
    result.seconds = time.monotonic() - t0
    return result
