"""The exact, idempotent loader: API records -> ``taptouch.*`` tables, in two steps.

**Stage**: each record passes the record boundary (:mod:`.records`; a bad one is quarantined) and
its rows are COPYed in batches into temporary tables. **Merge**: duplicates reduced, then
:mod:`.merge`'s recipe under the table's lock (newest version wins; an order's children follow).
Both steps are one transaction. An orders window's caller sequences them
(:meth:`OrderWindowLoad.close_staging`, then :meth:`OrderWindowLoad.finish`) and may wait between
them. The guarantees: docs/warehouse.md, "Loader guarantees".
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg import sql

from taptouch_resource.api import InvalidRecord

from ..settings import DEFAULT_BATCH_SIZE, DEFAULT_LOOKBACK  # the run's defaults
from . import aggregates, decode, deletions, derived, forget, history, marks, proofs, records
from .db import first_value, prefer_index_joins, redact_text
from .merge import INVENTORY, ORDERS, STORES, Quarantine, copy_or_quarantine, copy_parts, copy_rows

log = logging.getLogger(__name__)

# An orders window's transaction is open while its pages are fetched: between two statements it
# sits idle in transaction as long as the API makes it wait (the shared budget's pause or a
# Retry-After, up to 15 minutes (taptouch_resource.retry.MAX_RETRY_AFTER), then the client's retries within its retry budget, 10 minutes
# by default), and a ranged run's staged window waits there for the previous window's merge. A
# server's idle_in_transaction_session_timeout below that ends the session and fails the window again
# on every retry: the load raises it to an hour until its transaction ends (SET LOCAL).
IDLE_IN_TRANSACTION_FLOOR_MS = 3_600_000

_LOCK_ORDERS = ORDERS.lock_key
_LOCK_STORES = STORES.lock_key
_LOCK_INVENTORY = INVENTORY.lock_key

ORDER_COLS = records.ORDER_COLS
ITEM_COLS = records.ITEM_COLS
PAYMENT_COLS = records.PAYMENT_COLS
REFUND_COLS = records.REFUND_COLS
STORE_COLS = records.STORE_COLS
INVENTORY_COLS = records.INVENTORY_COLS


class UnknownStoreError(RuntimeError):
    """Orders arrived for a store that is not in ``taptouch.stores`` (its time zone is unknown)."""


@dataclass
class LoadCounts:
    """What a load did. ``unchanged``: same or older version than the warehouse already holds."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    deleted: int = 0
    duplicates: int = 0  # extra copies of a record within one load (reduced before the merge)

    def __iadd__(self, other: LoadCounts) -> LoadCounts:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)
        return self

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.unchanged

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _sync_log(
    cur,
    entity: str,
    store_id: int | None,
    window: str | None,
    run_id: str | None,
    started_at: datetime,
    counts: LoadCounts,
) -> None:
    cur.execute(
        'insert into taptouch.sync_log (entity, store_id, "window", run_id, started_at, inserted, updated,'
        " unchanged, quarantined, deleted) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            entity,
            store_id,
            window,
            run_id,
            started_at,
            counts.inserted,
            counts.updated,
            counts.unchanged,
            counts.quarantined,
            counts.deleted,
        ),
    )


def _raw_text(row: tuple) -> bytes:
    """The raw record of a staged store or inventory row (its last column)."""
    return row[-1].encode("utf-8")


# ------------------------------------------------------------------------------------------------
# stores


@dataclass
class StoreLoadCounts(LoadCounts):
    """:class:`LoadCounts` of a stores load, plus ``business_dates_rederived``: orders whose
    ``business_date`` changed because their store's zone did (see :mod:`.derived`)."""

    business_dates_rederived: int = 0


def load_stores(
    conn: psycopg.Connection, records_: Iterable[Any], *, run_id: str | None = None, history: bool = True
) -> StoreLoadCounts:
    """Upsert store records (newest ``updated_at`` wins, at full precision) in one transaction.

    A store accepted with another zone than the one the warehouse held (or not held before) has
    the ``business_date`` of its orders re-derived in the same transaction, under the orders merge
    lock (:func:`.derived.rederive_business_dates`), counted in ``business_dates_rederived``.
    ``history=False``: no ``sync_log`` row (``taptouch-sync rebuild`` retrying quarantined stores)."""
    started = datetime.now(UTC)
    counts = StoreLoadCounts()
    quarantine = Quarantine("store", None, run_id)
    rows = _newest_stores(records_, quarantine, counts)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("create temp table stage_stores (like taptouch.stores including defaults) on commit drop")
        refused = copy_or_quarantine(
            cur,
            rows,
            lambda rs: copy_rows(cur, "stage_stores", STORES.cols, rs),
            quarantine,
            lambda r: (_raw_text(r), None),
        )
        counts.quarantined += len(refused)
        STORES.take_lock(cur)
        cur.execute(
            "create temp table zones_before on commit drop as select store_id, timezone from taptouch.stores"
            " where store_id in (select store_id from stage_stores)"
        )
        cur.execute(
            "select exists (select 1 from stage_stores g left join zones_before b using (store_id)"
            " where b.store_id is null or g.timezone is distinct from b.timezone)"
        )
        if first_value(cur):
            # a new store or a zone that may change: the merge's triggers lock the store's business-day
            # coverage, and its orders are re-dated under the orders merge lock; an orders merge holds
            # that lock and then its proofs lock the coverage: the orders lock first (stores, orders:
            # the loads' order), or the two deadlock
            ORDERS.take_lock(cur)
        STORES.merge(cur, "stage_stores", into="merged_stores")
        counts.inserted, counts.updated, counts.unchanged = STORES.merged_counts(cur, "merged_stores", "stage_stores")
        counts.business_dates_rederived = _follow_zone_changes(cur)
        quarantine.flush(cur)
        STORES.resolve_quarantine(cur, "stage_stores")
        if history:
            _sync_log(cur, "stores", None, None, run_id, started, counts)
    return counts


def _newest_stores(records_: Iterable[Any], quarantine: Quarantine, counts: LoadCounts) -> list[tuple]:
    """The staged rows of the valid store records, one per store (the newest, then the last seen), in
    store order; the others quarantined."""
    rows: dict[int, tuple] = {}
    seen = 0
    for raw in records_:
        try:
            row, key, text = records.store_row(raw)
        except InvalidRecord as exc:
            quarantine.add(raw, exc.reason, None)
            counts.quarantined += 1
            continue
        seen += 1
        prev = rows.get(row[0])
        if prev is None or key >= prev[len(STORE_COLS)]:
            rows[row[0]] = row + (key, text)
    counts.duplicates = seen - len(rows)
    return [rows[k] for k in sorted(rows)]


def _follow_zone_changes(cur: psycopg.Cursor) -> int:
    """Business dates follow the zone: the orders of the stores just accepted with a zone the
    warehouse did not hold (``zones_before``) are re-derived, under the orders merge lock. Returns
    how many dates changed."""
    cur.execute(
        "select s.store_id, b.timezone, s.timezone from taptouch.stores s join stage_stores g using (store_id)"
        " left join zones_before b using (store_id) where s.timezone is distinct from b.timezone"
        " order by s.store_id"
    )
    moved = cur.fetchall()
    if not moved:
        return 0
    ORDERS.take_lock(cur)  # no orders merge between read and write
    # every store: one new to the warehouse may hold orders already (the orders asset dates them by
    # the API's listing), whose aggregates took no local hour without the store's row
    ids = [m[0] for m in moved]
    changed = derived.rederive_business_dates(cur, ids, zone_changed=ids)
    for store_id, before, after in moved:
        if before is not None:
            log.warning(
                "store %s: time zone %s -> %s; business dates of its orders re-derived", store_id, before, after
            )
    if changed:
        log.warning("stores: %d order business date(s) re-derived after a time zone change", changed)
    return changed


def store_timezones(conn: psycopg.Connection, store_id: int | None = None) -> dict[int, str]:
    """store id -> the zone ``taptouch.stores`` holds (every store, or ``store_id``'s)."""
    with conn.cursor() as cur:
        if store_id is None:
            cur.execute("select store_id, timezone from taptouch.stores")
        else:
            cur.execute("select store_id, timezone from taptouch.stores where store_id = %s", (store_id,))
        return dict(cur.fetchall())


# ------------------------------------------------------------------------------------------------
# orders


class _Id(msgspec.Struct):
    id: Any = None


_ID_DECODER = msgspec.json.Decoder(_Id)


def _order_id(raw: bytes) -> int | None:
    """The record's id when it is a valid bigint (for the unchanged-digest lookup and the ids a
    listing names), else None: read as the boundary and ``jsonb`` read it, so a record that names
    ``"id"`` twice is the last one's (no shortcut over its first bytes)."""
    try:
        oid = _ID_DECODER.decode(raw).id
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None
    return oid if oid.__class__ is int and 0 <= oid <= records.BIGINT_MAX else None


_T = TypeVar("_T")


class _CopyBehind:
    """At most one COPY in flight on a thread of its own (:meth:`OrderWindowLoad._copy_buffered`):
    the load's connection is PostgreSQL's while the client decodes the next batch. psycopg's
    connections may be shared by threads (each statement holds the connection's lock); the caller
    uses the connection again only after :meth:`wait`."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    @property
    def busy(self) -> bool:
        return self._pending is not None

    def submit(self, fn: Any, *args: Any) -> None:
        if self._pending is not None:
            raise RuntimeError("a COPY is already in flight")
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taptouch-copy")
        self._pending = self._pool.submit(fn, *args)

    def wait(self) -> Any:
        """The COPY's result (None when none was in flight); its exception is raised here."""
        pending, self._pending = self._pending, None
        return None if pending is None else pending.result()

    def close(self) -> None:
        """Let a COPY in flight end (its error is the load's to report, already or never), then stop the thread."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.exception()  # waits; the error, if any, was raised by wait() or the load failed first
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _entered(value: _T | None) -> _T:
    """What ``OrderWindowLoad.__enter__`` sets: a load used outside its ``with`` block is an error."""
    if value is None:
        raise RuntimeError("OrderWindowLoad is used outside its with block")
    return value


def _outlast_api_waits(cur: psycopg.Cursor) -> None:
    """Raise the server's ``idle_in_transaction_session_timeout`` to :data:`IDLE_IN_TRANSACTION_FLOOR_MS`
    until the transaction ends (the caller's enclosing one, when the load runs inside it), when it is
    set (not 0) below that; every other session and transaction keeps the server's, and 0 (no
    limit) or a larger one stays."""
    cur.execute(
        "select set_config('idle_in_transaction_session_timeout', %s, true) from pg_settings"
        " where name = 'idle_in_transaction_session_timeout' and setting::bigint between 1 and %s",
        (str(IDLE_IN_TRANSACTION_FLOOR_MS), IDLE_IN_TRANSACTION_FLOOR_MS - 1),
    )


class OrderWindowLoad:
    """One window of orders (e.g. a daily partition, all stores) loaded in one transaction, in two
    steps the caller sequences: staging, then the merge.

    Use as a context manager::

        with OrderWindowLoad(conn, window="2026-11-02", run_id=...) as load:
            for page in pages:
                load.add_page(store_id, page)   # stage
            load.discard_store(7103)            # a store whose fetch failed: none of its rows commit
            load.close_staging()                # the last rows staged, duplicates reduced
            ...                                 # e.g. wait for the run's previous window to commit
            counts = load.finish()              # merge + commit

    ``finish()`` closes the staging itself when the caller has not. Leaving the block without
    ``finish()`` (an exception) rolls everything back.
    """

    # immutable defaults, set per load as it goes
    versions_recorded = 0  # versions new to taptouch.order_history (finish)
    _seq = 0
    _tx: AbstractContextManager[psycopg.Transaction] | None = None  # both set by __enter__
    _cursor: psycopg.Cursor | None = None
    _staging_closed = False
    _finished = False
    _side: psycopg.Connection | None = None  # reads while a COPY holds self.conn (_lookup)
    _side_ok = False  # a second connection sees what this load's transaction does (__enter__)
    _side_args: tuple[str, str | None] = ("", None)  # (dsn, password) of the second connection

    def __init__(
        self,
        conn: psycopg.Connection,
        *,
        window: str,
        run_id: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        timezones: dict[int, str] | None = None,
        full: bool = False,
        retention: history.Retention | None = None,
        day_starts: dict[int, timedelta] | None = None,
        settle: timedelta = DEFAULT_LOOKBACK,
        decode_processes: int = 0,
        forgotten: frozenset[int] | None = None,
        listed_since: datetime | None = None,
    ):
        """``full``: a full refresh of the window (stamps the marks' ``full_loaded_at``); the marks
        of the stores passed to :meth:`store_listed` move in the same transaction as the data.
        ``day_starts``: store id -> its business day start (unset: the ones its stored dates
        follow, :func:`.derived.dated_starts`). ``settle``: the run's lookback, how long a record
        may take to reach the API's listings (the window's proofs hold for what settled before).
        ``decode_processes``: worker processes that decode the pages beside this thread
        (:mod:`.decode`; 0: this thread decodes them). ``forgotten``: the customers forgotten
        (:func:`.forget.forgotten`) before the records were listed (unset: read when the load
        begins); one forgotten since is forgotten again in what the merge writes. ``listed_since``:
        when the listings whose pages it loads began, if before the load (a reconciliation's repair):
        a deletion confirmed since is newer news, and stays (default: the load's own start)."""
        self.conn = conn
        self.forgotten = forgotten
        self.full = full
        self.retention = retention  # None: the load prunes no history (e.g. a reconciliation's repair)
        self._marks: dict[int, datetime | None] = {}  # store id -> where its mark may move (None: stays)
        self._judged: dict[int, tuple[datetime, datetime, datetime]] = {}  # complete listings (store_listed)
        self._listed: dict[int, set[int]] = {}  # store id -> every order id its pages held
        self._blind: set[int] = set()  # stores with a listed record whose id cannot be read
        self.window = window
        self.run_id = run_id
        self.batch_size = batch_size
        self.timezones = timezones
        self.day_starts = day_starts
        self.settle = settle
        self.quarantine = Quarantine("order", window, run_id)
        self.counts = LoadCounts()
        self.per_store: dict[int, LoadCounts] = {}
        self._buf: list[tuple] = []  # (seq, store_id, raw, order row, items, payments, refunds) per order
        self._decoders = decode.shared(decode_processes)
        self._decoding: deque[tuple[Future, tuple]] = deque()  # pages in the workers: (groups, args)
        self._started = datetime.now(UTC)
        self._listed_since = self._started if listed_since is None else listed_since  # (_judge_listings)
        self._discarded: set[int] = set()
        self._failed: dict[int, str] = {}  # store id -> why its listing proves nothing (.proofs)
        # orders recognised as unchanged by their raw_hash -> (store, the version held then: what the listing read)
        self._skipped: dict[int, tuple[int, Decimal]] = {}
        self._staged_ids: set[int] = set()  # orders with a record staged (a later read of the held bytes is staged too)
        self._behind = _CopyBehind()  # the batch being COPYed while the next one is decoded

    def __enter__(self) -> OrderWindowLoad:
        # the load's transaction is the connection's own (not a savepoint of the caller's)
        self._side_ok = self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        self._tx = self.conn.transaction()
        self._tx.__enter__()
        self._cursor = self.conn.cursor()
        _outlast_api_waits(self._cursor)
        if self.timezones is None:
            self.timezones = store_timezones(self.conn)
        if self.day_starts is None:
            self.day_starts = derived.dated_starts(self._cur)
        if self.forgotten is None:  # forget-customer may commit while the window lists (it waits only for merges)
            self.forgotten = forget.forgotten(self._cur)
        cur = self._cur
        if self._side_ok:  # ... and at read committed: the second connection reads what it would
            cur.execute("select current_setting('transaction_isolation')")
            self._side_ok = first_value(cur) == "read committed"
            self._side_args = (self.conn.info.dsn, self.conn.info.password)  # read here, never beside a COPY
        cur.execute("create temp table stage_orders (seq bigint, like taptouch.orders) on commit drop")
        cur.execute("alter table stage_orders alter column loaded_at drop not null")
        for child in ORDERS.children:
            cur.execute(
                sql.SQL("create temp table {} (seq bigint, like {}) on commit drop").format(
                    sql.Identifier(child.stage), sql.Identifier(*child.table.split("."))
                )
            )
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._behind.close()  # a COPY still running ends (or fails) before the rollback
            self._close_side()
            if not self._finished:  # an error, or a block left without finish(): roll back everything
                if exc_type is None:
                    log.warning("order window %s left without finish(): rolled back", self.window)
                    exc_type, exc = RuntimeError, RuntimeError("rolled back")
                _entered(self._tx).__exit__(exc_type, exc, tb)
        finally:
            if self._cursor is not None:
                self._cursor.close()

    @property
    def _cur(self) -> psycopg.Cursor:
        return _entered(self._cursor)

    def store_counts(self, store_id: int) -> LoadCounts:
        return self.per_store.setdefault(store_id, LoadCounts())

    # -------------------------------------------------------------------------------------- staging

    def add_page(self, store_id: int, page: Iterable[Any]) -> int:
        """Validate and stage one page of one store's orders (each record its exact JSON bytes, or a
        parsed dict). Returns how many orders it took to stage (not recognised as unchanged). A
        page given to a decode worker is taken by a later call (at the latest, by
        :meth:`discard_store` or :meth:`close_staging`); a record the boundary refuses is
        quarantined then."""
        if self._staging_closed:
            raise RuntimeError(f"order window {self.window}: a page arrived after close_staging()")
        tz = _entered(self.timezones).get(store_id)
        if tz is None:
            raise UnknownStoreError(
                f"store {store_id} is not in taptouch.stores, so its time zone (and the orders' business dates) "
                f"is unknown. Materialize the 'stores' asset first."
            )
        day_start = _entered(self.day_starts).get(store_id, records.NO_DAY_START)
        sc = self.store_counts(store_id)
        raws = [records.as_bytes(r) for r in page]
        ids = [_order_id(r) for r in raws]
        self._note_listed(store_id, raws, ids)
        known = self._known_digests(ids, store_id)
        blake = hashlib.blake2b
        todo: list[bytes] = []
        digests: list[bytes] = []
        for raw, oid in zip(raws, ids, strict=True):
            digest = blake(raw, digest_size=16).digest()
            held = known.get(oid) if oid is not None else None
            # the warehouse holds this version; unless another record of the order was staged before it:
            # then it is staged too, so that the last seen of one version wins (close_staging's pick)
            if oid is not None and held is not None and held[0] == digest and oid not in self._staged_ids:
                if oid in self._skipped:
                    self.counts.duplicates += 1
                else:
                    self._skipped[oid] = (store_id, held[1])
                    sc.unchanged += 1
                continue
            todo.append(raw)
            digests.append(digest)
            if oid is not None:
                self._staged_ids.add(oid)
        if todo:
            args = (store_id, tz, day_start, self._seq, todo, digests)
            self._seq += len(todo)
            pending = self._decoders.submit(args) if self._decoders and len(todo) >= decode.MIN_WORKER_PAGE else None
            if pending is None:
                self._take_decoded(args, decode.stage_page(*args))
            else:
                self._decoding.append((pending, args))
        self._collect_decoded(in_flight=2 * self._decoders.processes + 1 if self._decoders else 0)
        if len(self._buf) >= self.batch_size:
            self._copy_buffered()
        return len(todo)

    def _collect_decoded(self, in_flight: int = 0) -> None:
        """Take the pages the workers decoded, in order: every one done, and then wait until at most
        ``in_flight`` remain (0: all). A page whose worker ended is decoded here."""
        while self._decoding and (len(self._decoding) > in_flight or self._decoding[0][0].done()):
            pending, args = self._decoding.popleft()
            try:
                try:
                    groups = pending.result(timeout=decode.STALLED_S)
                except TimeoutError:  # a worker alive but silent: ended, its pages decoded here
                    if self._decoders is not None:
                        self._decoders.end_holder(pending)
                    groups = pending.result(timeout=decode.STALLED_S)
            except (decode.WorkerLost, TimeoutError):
                log.warning("order window %s: a decode worker ended; its page is decoded here", self.window)
                groups = decode.stage_page(*args)
            self._take_decoded(args, groups)

    def _take_decoded(self, args: tuple, groups: list) -> None:
        """A decoded page's orders buffered for COPY, its refused records quarantined."""
        store_id, raws = args[0], args[4]
        sc = self.store_counts(store_id)
        for raw, g in zip(raws, groups, strict=True):
            if g.__class__ is str:
                self.quarantine.add(raw, g, store_id)
                self.counts.quarantined += 1
                sc.quarantined += 1
            else:  # numbered when its page was handed over: the buffer need not be in seq order
                self._buf.append((g[0], store_id, raw, *g[3:]))

    def _note_listed(self, store_id: int, raws: list[bytes], ids: list[int | None]) -> None:
        """Every order id a page lists, a malformed record's too (for the deletion judgement)."""
        listed = self._listed.setdefault(store_id, set())
        for raw, oid in zip(raws, ids, strict=True):
            oid = oid if oid is not None else deletions.listed_id(raw)
            if oid is None:
                self._blind.add(store_id)
            else:
                listed.add(oid)

    def _known_digests(self, ids: list[int | None], store_id: int) -> dict[int, tuple[bytes, Decimal]]:
        """order id -> (raw_hash, exact version) of the version the warehouse holds, for the ids on this page, when that
        version belongs to the listed store (the same bytes listed under another store are checked,
        and quarantined for their store_id, never skipped as unchanged)."""
        ids = [i for i in ids if i is not None]
        if not ids:
            return {}
        rows = self._lookup(
            "select order_id, raw_hash, coalesce(updated_at_exact, taptouch.exact_epoch(updated_at))"
            " from taptouch.orders where order_id = any(%s) and store_id = %s",
            (ids, store_id),
        )
        return {oid: (bytes(h), v) for oid, h, v in rows if h is not None}

    def _lookup(self, query: str, params: tuple) -> list[tuple]:
        """A read of the warehouse during staging. While a batch's COPY holds the load's connection,
        on a second connection (opened once, autocommit), so that the client decodes the next batch
        as PostgreSQL parses the last: it reads what the load's own transaction would (read
        committed, and the transaction has written only its temporary tables so far). When the load
        runs inside a caller's transaction (a savepoint: that transaction's writes are its own) or
        at another isolation level than read committed (its snapshot is not the second connection's),
        or no second connection can be opened (or it fails), the COPY is waited for."""
        if self._behind.busy and self._side_ok and self._side is None:
            try:
                self._side = psycopg.connect(self._side_args[0], password=self._side_args[1], autocommit=True)
                # never wait for a lock: one the read must wait for (an ACCESS EXCLUSIVE, e.g. a
                # migration's ALTER TABLE, queued behind this load's own ACCESS SHARE on
                # taptouch.orders) waits for this load's commit, which waits for this read. The load's
                # own connection holds that lock already, and reads at once after the COPY.
                self._side.execute("set lock_timeout = '50ms'")
            except psycopg.Error as exc:
                log.info(
                    "order window %s: no second connection for reads during COPY (%s)", self.window, self._said(exc)
                )
                self._side_ok = False
        if self._behind.busy and self._side is not None:
            try:
                return self._side.execute(query, params).fetchall()
            except psycopg.Error as exc:  # e.g. ended while idle (idle_session_timeout): read here instead
                log.info(
                    "order window %s: the second connection failed (%s); reads wait for the COPY",
                    self.window,
                    self._said(exc),
                )
                self._close_side()
                self._side_ok = False
        self._copy_done()
        return self._cur.execute(query, params).fetchall()

    def _close_side(self) -> None:
        if self._side is not None:
            self._side.close()
            self._side = None

    def _said(self, exc: BaseException) -> str:
        """An error of the second connection as logged: no password of the load's connection in it."""
        return redact_text(str(exc), [self._side_args[1]] if self._side_args[1] else [])

    def _copy_buffered(self, *, wait: bool = False) -> None:
        """COPY the buffered orders into staging (an order PostgreSQL refuses is quarantined, alone),
        and write the quarantine rows so far. The COPY runs on a thread of its own while the caller
        decodes the next batch (one batch at a time; ``wait``: every page the workers hold taken,
        and done when this returns)."""
        if wait:
            self._collect_decoded()
        self._copy_done()
        groups, self._buf = self._buf, []
        self.quarantine.park(self._cur)  # written by finish(), under the merge lock
        if groups:
            self._behind.submit(self._copy_batch, groups)
        if wait:
            self._copy_done()

    def _copy_batch(self, groups: list[tuple]) -> tuple[list[tuple], list[tuple]]:
        """(the orders refused, their quarantine rows): on the COPY's thread, its own cursor."""
        refused_rows = Quarantine("order", self.window, self.run_id)
        with self.conn.cursor() as cur:
            refused = copy_or_quarantine(
                cur, groups, lambda gs: self._copy_groups(cur, gs), refused_rows, lambda g: (g[2], g[1])
            )
        return refused, refused_rows.rows

    def _copy_done(self) -> None:
        """Wait for the batch being COPYed (its error raised here); count and keep what it refused."""
        done = self._behind.wait()
        if done is None:
            return
        refused, quarantine_rows = done
        self.quarantine.rows.extend(quarantine_rows)
        for _, store_id, *_ in refused:
            self.counts.quarantined += 1
            self.store_counts(store_id).quarantined += 1

    def _copy_groups(self, cur: psycopg.Cursor, groups: list[tuple]) -> None:
        tables = (("stage_orders", ORDERS.cols),) + tuple((c.stage, c.cols) for c in ORDERS.children)
        for i, (table, cols) in enumerate(tables, start=3):
            parts = [g[i] for g in groups if g[i]]
            if parts:
                copy_parts(cur, table, ("seq",) + cols, parts)

    def store_listed(
        self, store_id: int, mark: datetime | None, complete: tuple[datetime, datetime, datetime] | None = None
    ) -> None:
        """A store's listing ended: its high-water mark may move to ``mark`` (None: it stays) when
        the window commits (:func:`.marks.mark_for` says how far a listing lets it move).

        ``complete`` = (listed from, listed to, started at: the API's clock, never after this machine's) of a listing known to
        be complete: it also counts as one of the two listings that must miss an order before it
        is marked deleted (:func:`.deletions.judge_listing`; a bounded listing records and clears
        candidates, it never confirms a deletion)."""
        self._marks[store_id] = mark
        if complete is not None:
            self._judged[store_id] = complete
            # a complete listing that returned nothing judges its range too: the orders the
            # warehouse holds there were missed (candidates; only the reconciliation confirms)
            self._listed.setdefault(store_id, set())
        else:
            self._failed[store_id] = (
                "the listing may have missed a record (one moved while it was read, or its last page "
                "answered differently when asked again)"
            )

    def discard_store(self, store_id: int, error: str | None = None) -> None:
        """Drop everything staged for a store whose fetch failed: none of its rows will commit.
        ``error``: why, recorded with the window's proofs (:mod:`.proofs`: no complete proof)."""
        if self._staging_closed:
            raise RuntimeError(f"order window {self.window}: store {store_id} discarded after close_staging()")
        self._copy_buffered(wait=True)
        self._discarded.add(store_id)
        self._judged.pop(store_id, None)
        self._failed[store_id] = error or "the listing failed"
        cur = self._cur
        cur.execute("delete from stage_orders where store_id = %s returning seq", (store_id,))
        seqs = [r[0] for r in cur.fetchall()]
        if seqs:
            for child in ORDERS.children:
                cur.execute(sql.SQL("delete from {} where seq = any(%s)").format(sql.Identifier(child.stage)), (seqs,))
        self.per_store.pop(store_id, None)

    def close_staging(self) -> None:
        """The staging step's end: the last rows COPYed, then one version per order picked (newest
        ``updated_at``, then the last seen; keys only, in temporary table ``pick``: the rows stay
        staged). Takes no lock: the caller may wait after it, outside any statement."""
        if self._staging_closed:
            return
        self._copy_buffered(wait=True)
        self._close_side()  # no more look-ups beside a COPY
        cur = self._cur
        # statistics of the key columns only (the planner needs sizes; sampling raw's jsonb costs more
        # than the merge gains), and no JIT: its compile time exceeds what it saves on a window
        cur.execute("analyze stage_orders (seq, order_id, store_id, status)")
        for child in ORDERS.children:  # (their sizes: without them, a join on seq may loop over every row)
            cur.execute(sql.SQL("analyze {} (seq)").format(sql.Identifier(child.stage)))
        cur.execute("set local jit = off")
        prefer_index_joins(cur)  # the merge joins the window's orders to the warehouse's by key
        cur.execute(
            "create temp table pick on commit drop as select distinct on (order_id) seq, order_id, store_id"
            " from stage_orders order by order_id, updated_at_exact desc, seq desc"
        )
        cur.execute("analyze pick")
        cur.execute("select (select count(*) from stage_orders) - (select count(*) from pick)")
        self.counts.duplicates += first_value(cur)
        self._staging_closed = True

    # ---------------------------------------------------------------------------------------- merge

    def finish(self) -> LoadCounts:
        """The merge step: merge the staged window into the warehouse under the orders merge lock
        (concurrent loads of overlapping windows take turns), replace the children of the accepted
        orders, record quarantine, history, the listings' deletion judgement and the marks, and
        commit. Returns the counts."""
        self.close_staging()
        cur = self._cur
        ORDERS.take_lock(cur)
        aggregates.note_held(cur, "pick")  # the store-days the held versions are on
        ORDERS.merge(
            cur,
            "stage_orders s join pick p on p.seq = s.seq",
            into="accepted",
            prefix="s",
            returned=("store_id",),
            carry=("pick", "seq"),
        )
        cur.execute("analyze accepted")
        ORDERS.replace_children(cur, "accepted")
        self.versions_recorded = history.record(cur, self.run_id, self.retention)  # taptouch.order_history
        # business dates by the zone the warehouse holds, where the listing's differs (see .derived)
        redated = derived.follow_store_zones(
            cur, _entered(self.timezones), self.per_store, only="accepted", used_starts=self.day_starts
        )
        # the store-days the replaced orders are on now: recomputed whole; the orders new to the
        # warehouse are added from their staged rows (unless a date moved after staging)
        aggregates.note_merged(cur, "accepted", replaced_only=not redated)
        if not redated:
            aggregates.add_staged(cur, "accepted")
        aggregates.recompute(cur)
        self._count_merged(cur)
        self.quarantine.flush(cur)
        ORDERS.resolve_quarantine(cur, "pick")
        self._resolve_skipped(cur)
        for store_id, sc in sorted(self.per_store.items()):
            _sync_log(cur, "orders", store_id, self.window, self.run_id, self._started, sc)
        self._judge_listings(cur)
        self._prove(cur)
        # a customer forgotten while this window listed and staged: what it wrote was listed before
        forget.forget_again(cur, _entered(self.forgotten))
        # stores whose listing ended (a failed store was discarded, and its mark stays); only a
        # complete listing stamps a full refresh's full_loaded_at
        ended = {sid: at for sid, at in sorted(self._marks.items()) if sid not in self._discarded}
        for complete in (True, False):
            part = {sid: at for sid, at in ended.items() if (sid in self._judged) is complete}
            if part:
                marks.advance(cur, self.window, part, full=self.full and complete)
        self._finished = True
        _entered(self._tx).__exit__(None, None, None)
        return self.counts

    def _prove(self, cur: psycopg.Cursor) -> None:
        """The window's proofs (:mod:`.proofs`): each complete listing's set of (order_id, version),
        from the versions it staged and those it recognised as unchanged (the warehouse's row holds
        exactly those bytes); each failed or doubtful listing's failure."""
        if proofs.window_bounds(self.window) is None:
            return
        judged = {sid: c for sid, c in self._judged.items() if sid not in self._discarded}
        for sid in sorted(self._blind & set(judged)):  # it judged no deletion: it proves nothing either
            del judged[sid]
            self._failed[sid] = "the listing held a record whose order id cannot be read (quarantined)"
        if judged:
            proofs.create_source(cur)
            cur.execute(
                f"insert into {proofs.SOURCE} select store_id, order_id, max(updated_at_exact) from stage_orders"
                " where store_id = any(%s) group by store_id, order_id",
                (sorted(judged),),
            )
            skipped = sorted((sid, oid, v) for oid, (sid, v) in self._skipped.items() if sid in judged)
            if skipped:  # the versions the listing read (not what the warehouse holds at commit: another
                # run may have merged a newer one since, which this listing never saw)
                cur.execute(
                    f"insert into {proofs.SOURCE} select * from unnest(%s::bigint[], %s::bigint[], %s::numeric[])",
                    [list(c) for c in zip(*skipped, strict=True)],
                )
            proofs.prove(cur, self.window, judged, listed_at=self._started, run_id=self.run_id, settle=self.settle)
        if self._failed:
            proofs.failed(cur, self.window, self._failed, run_id=self.run_id)

    def _resolve_skipped(self, cur: psycopg.Cursor) -> None:
        """The orders recognised as unchanged (never staged): :func:`resolve_held_orders`."""
        resolve_held_orders(cur, [oid for oid, (sid, _) in self._skipped.items() if sid not in self._discarded])

    def _count_merged(self, cur: psycopg.Cursor) -> None:
        """Inserted, updated and unchanged per store, from the picked versions and those accepted."""
        cur.execute(
            "select p.store_id, count(*), count(a.order_id) filter (where a.inserted),"
            " count(a.order_id) filter (where not a.inserted)"
            " from pick p left join accepted a using (order_id) group by p.store_id"
        )
        for store_id, n, ins, upd in cur.fetchall():
            sc = self.store_counts(store_id)
            sc.inserted, sc.updated = ins, upd
            sc.unchanged += n - ins - upd
            self.counts.inserted += ins
            self.counts.updated += upd
        if self._skipped:
            # an order recognised as unchanged on one page and staged from another page (a duplicate
            # across a page boundary) was counted twice: once here, once in the skip
            cur.execute(
                "select store_id, count(*) from pick where order_id = any(%s) group by store_id", (list(self._skipped),)
            )
            for store_id, n in cur.fetchall():
                self.store_counts(store_id).unchanged -= n
                self.counts.duplicates += n
        self.counts.unchanged = sum(sc.unchanged for sc in self.per_store.values())

    def _judge_listings(self, cur: psycopg.Cursor) -> None:
        """An order the API lists is not deleted at the source: restored, and no longer a deletion
        candidate; a complete listing also records the orders it missed as candidates (.deletions),
        timed by this machine's clock, as the reconciliation that may confirm them (never the API's)."""
        for store_id, ids in sorted(self._listed.items()):
            if store_id in self._discarded:
                continue
            judged = self._judged.get(store_id) if store_id not in self._blind else None
            if judged is None:
                deletions.note_listed(cur, ids, self._listed_since)
                continue
            listed_from, listed_to, started_at = judged
            deletions.judge_listing(
                cur,
                store_id,
                ids,
                listed_from=listed_from,
                listed_to=listed_to,
                started_at=started_at,
                now=deletions.clock(),
                confirm_s=0,
                seen_by=self.run_id,
                listed_since=self._listed_since,
            )


def resolve_held_orders(cur: psycopg.Cursor, order_ids: Iterable[int]) -> int:
    """Orders a listing served valid in exactly the bytes the warehouse holds (so never staged):
    their quarantine rows are resolved as a staged record's are (``resolve_quarantine.sql``: rows of
    a version no newer than the one held; a newer version refused, even by the same load, stays
    open). Runs in the caller's transaction. Returns how many rows were resolved."""
    ids = sorted(set(order_ids))
    if not ids:
        return 0
    cur.execute("create temp table held_orders on commit drop as select unnest(%s::bigint[]) as order_id", (ids,))
    resolved = ORDERS.resolve_quarantine(cur, "held_orders")
    cur.execute("drop table held_orders")  # a second call in the same transaction creates it again
    return resolved


# ------------------------------------------------------------------------------------------------
# inventory


def load_inventory(
    conn: psycopg.Connection,
    store_id: int,
    records_: Iterable[Any],
    *,
    snapshot_date: date,
    run_id: str | None = None,
    now: datetime | None = None,
    confirm_s: int | None = None,
    listed_since: datetime | None = None,
    delistable: Collection[int] | None = None,
) -> LoadCounts:
    """Merge one store's complete inventory listing into ``inventory_levels`` and upsert today's snapshot.

    ``records_`` must be the store's complete listing (the client raises rather than return a
    partial or malformed one). Per product, the newest ``updated_at`` wins (full precision): an older
    listing loaded later never moves a level backwards. A product the listing does not contain is
    delisted (deleted). ``listed_since``: the database's clock before the first request (default:
    its clock when this function starts, right for a lazy ``records_``); a listing that started
    before the store's latest committed one changes no level (:func:`_newest_listing`), so one that
    loads may delist anything it misses, whichever listing wrote it. A product whose record is malformed keeps
    its previous level (it is listed, just unreadable) and is quarantined. Everything (levels,
    deletions, snapshot, quarantine) commits in one transaction.

    A *suspicious* listing (empty while the store holds levels, or one that would delist more than
    half of the store's products) delists nothing at once: the products it no longer lists wait in
    ``taptouch.inventory_delist_candidates`` and are delisted only when a second listing at least
    ``confirm_s`` seconds later (``TAPTOUCH_RECONCILE_CONFIRM_S``, by ``now``) agrees. The levels it
    does list merge as usual. An ordinary listing delists at once and clears the store's waiting rows.
    ``confirm_s=0``: the records are already two listings that agree (what
    :func:`pipelines.sync.sync_inventory` loads when the first missed products): delisted at once.
    ``delistable``: the products the caller judged the listing against (the store's levels when it
    decided whether to list again); a product another listing loaded since is not delisted by this
    one, whose second pass never looked for it (the next sync decides). None: any product.
    """
    started = datetime.now(UTC)
    now = now or started
    if confirm_s is None:
        from ..settings import reconcile_confirm_s  # read at run time, like every TAPTOUCH_* tunable

        confirm_s = reconcile_confirm_s()
    counts = LoadCounts()
    quarantine = Quarantine("inventory", snapshot_date.isoformat(), run_id)
    if listed_since is None:
        listed_since = first_value(conn.execute("select clock_timestamp()"))
    listing = _InventoryListing.read(records_, store_id, quarantine, counts)
    with conn.transaction(), conn.cursor() as cur:
        _stage_inventory(cur, store_id, listing, quarantine, counts)
        INVENTORY.take_lock(cur, store_id)
        newest = _newest_listing(cur, store_id, listed_since, run_id)
        if newest:
            _merge_listing(
                cur, store_id, listing, counts, snapshot_date, now=now, confirm_s=confirm_s, delistable=delistable
            )
        quarantine.flush(cur, resolved=not newest)  # kept; a newer listing's quarantine stands
        if newest:
            INVENTORY.resolve_quarantine(cur, "stage_inventory", store_id)
        _sync_log(cur, "inventory", store_id, snapshot_date.isoformat(), run_id, started, counts)
    return counts


def _merge_listing(
    cur: psycopg.Cursor,
    store_id: int,
    listing: _InventoryListing,
    counts: LoadCounts,
    snapshot_date: date,
    *,
    now: datetime,
    confirm_s: int,
    delistable: Collection[int] | None = None,
) -> None:
    """The staged listing's delistings, levels and snapshot (:func:`load_inventory`), counted."""
    counts.deleted = _delist_unlisted(
        cur,
        store_id,
        listing,
        listed=listing.seen + counts.quarantined,
        now=now,
        confirm_s=confirm_s,
        delistable=delistable,
    )
    INVENTORY.merge(cur, "stage_inventory", into="merged_inventory")
    counts.inserted, counts.updated, counts.unchanged = INVENTORY.merged_counts(
        cur, "merged_inventory", "stage_inventory"
    )
    _write_snapshot(cur, store_id, snapshot_date)


def _newest_listing(cur: psycopg.Cursor, store_id: int, listed_since: datetime, run_id: str | None) -> bool:
    """Record this listing as the store's latest (``taptouch.inventory_listings``), unless one that
    started later has committed: then False, and this older listing changes nothing (it would bring
    back a product the newer one delisted, or delist one it listed unchanged). Under the store's
    inventory merge lock."""
    cur.execute(
        "insert into taptouch.inventory_listings as l (store_id, listed_since, run_id) values (%s, %s, %s)"
        " on conflict (store_id) do update set listed_since = excluded.listed_since, run_id = excluded.run_id,"
        " loaded_at = now() where l.listed_since <= excluded.listed_since returning 1",
        (store_id, listed_since, run_id),
    )
    if cur.fetchone() is not None:
        return True
    log.warning(
        "inventory of store %s: a listing that started after this one has committed meanwhile (overlapping "
        "runs); this older listing changes no level",
        store_id,
    )
    return False


def _stage_inventory(
    cur: psycopg.Cursor, store_id: int, listing: _InventoryListing, quarantine: Quarantine, counts: LoadCounts
) -> None:
    """Copy the listing's rows into a new ``stage_inventory``; a row the database refuses is
    quarantined, and its product (listed, just unloadable) keeps its previous level."""
    cur.execute("create temp table stage_inventory (like taptouch.inventory_levels including defaults) on commit drop")
    refused = copy_or_quarantine(
        cur,
        listing.rows,
        lambda rs: copy_rows(cur, "stage_inventory", INVENTORY.cols, rs),
        quarantine,
        lambda r: (_raw_text(r), store_id),
    )
    counts.quarantined += len(refused)
    listing.bad_ids += [r[1] for r in refused]


@dataclass
class _InventoryListing:
    """One store's inventory listing as read: the staged rows (one per product), the products
    listed by a malformed record, how many malformed records name no product, and the newest version."""

    rows: list[tuple] = field(default_factory=list)
    bad_ids: list[int] = field(default_factory=list)
    unidentified: int = 0
    seen: int = 0  # valid records, duplicates included

    @classmethod
    def read(
        cls, records_: Iterable[Any], store_id: int, quarantine: Quarantine, counts: LoadCounts
    ) -> _InventoryListing:
        listing = cls()
        rows: dict[int, tuple] = {}
        for raw in records_:
            try:
                row, key, text = records.inventory_row(raw, store_id)
            except InvalidRecord as exc:
                quarantine.add(raw, exc.reason, store_id)
                counts.quarantined += 1
                pid = _product_id(raw)
                if pid is not None:
                    listing.bad_ids.append(pid)
                else:  # which product it lists is unknown: the listing cannot say what is no longer stocked
                    listing.unidentified += 1
                continue
            listing.seen += 1
            prev = rows.get(row[1])
            if prev is None or key is None or prev[-2] is None or key >= prev[-2]:  # newest, then last seen
                rows[row[1]] = row + (key, text)
        counts.duplicates = listing.seen - len(rows)
        listing.rows = [rows[k] for k in sorted(rows)]
        return listing


def _delist_unlisted(
    cur: psycopg.Cursor,
    store_id: int,
    listing: _InventoryListing,
    *,
    listed: int,
    now: datetime,
    confirm_s: int,
    delistable: Collection[int] | None = None,
) -> int:
    """Delist what the listing no longer holds (:func:`_delist`), but only from a well-formed one: a
    record whose product cannot be identified might be any product, so then nothing is delisted."""
    if not listing.unidentified:
        return _delist(
            cur, store_id, listing.bad_ids, listed=listed, now=now, confirm_s=confirm_s, delistable=delistable
        )
    log.warning(
        "inventory of store %s: %d malformed record(s) without a readable product_id; "
        "no product is delisted from this listing",
        store_id,
        listing.unidentified,
    )
    _forget_delistings(cur, store_id, stage=True, listed=listing.bad_ids)
    return 0


def _write_snapshot(cur: psycopg.Cursor, store_id: int, snapshot_date: date) -> None:
    """Today's snapshot is the store's levels after the merge (the last sync of the day wins; a
    product delisted since an earlier sync today leaves it)."""
    cur.execute(
        "insert into taptouch.inventory_snapshots (snapshot_date, store_id, product_id, on_hand, cost_price, sell_price)"
        " select %s, store_id, product_id, on_hand, cost_price, sell_price from taptouch.inventory_levels"
        " where store_id = %s order by product_id"
        " on conflict (snapshot_date, store_id, product_id) do update set on_hand = excluded.on_hand,"
        " cost_price = excluded.cost_price, sell_price = excluded.sell_price, synced_at = now()",
        (snapshot_date, store_id),
    )
    cur.execute(
        "delete from taptouch.inventory_snapshots n where n.snapshot_date = %s and n.store_id = %s"
        " and not exists (select 1 from taptouch.inventory_levels l where l.store_id = n.store_id"
        " and l.product_id = n.product_id)",
        (snapshot_date, store_id),
    )


def _delist(
    cur: psycopg.Cursor,
    store_id: int,
    listed_bad: list[int],
    *,
    listed: int,
    now: datetime,
    confirm_s: int,
    delistable: Collection[int] | None = None,
) -> int:
    """Delist the store's products this listing (staged in ``stage_inventory``) no longer contains
    (no newer listing has committed: :func:`_newest_listing`); from a suspicious listing, only those
    a listing ``confirm_s`` seconds earlier also missed. Returns how many were delisted."""
    cur.execute(
        "select l.product_id from taptouch.inventory_levels l where l.store_id = %s"
        " and not exists (select 1 from stage_inventory s where s.product_id = l.product_id)"
        " and l.product_id <> all(%s) order by l.product_id",
        (store_id, listed_bad),
    )
    gone = [r[0] for r in cur.fetchall()]
    if delistable is not None:
        unjudged = [p for p in gone if p not in delistable]
        if unjudged:
            log.warning(
                "inventory of store %s: %d product(s) another listing loaded while this one was judged are "
                "not in it; kept for the next sync to decide",
                store_id,
                len(unjudged),
            )
            gone = [p for p in gone if p in delistable]
    cur.execute("select count(*) from taptouch.inventory_levels where store_id = %s", (store_id,))
    held = first_value(cur)
    # confirm_s 0: the second listing is this one's own (sync_inventory lists again at once)
    suspicious = bool(gone) and confirm_s > 0 and ((listed == 0 and held > 0) or 2 * len(gone) > held)
    if not suspicious:
        _forget_delistings(cur, store_id)
        delist = gone
    else:
        delist = _confirmed_delistings(cur, store_id, gone, held, listed=listed, now=now, confirm_s=confirm_s)
    if not delist:
        return 0
    cur.execute(
        "delete from taptouch.inventory_levels where store_id = %s and product_id = any(%s)", (store_id, delist)
    )
    return cur.rowcount


def _confirmed_delistings(
    cur: psycopg.Cursor, store_id: int, gone: list[int], held: int, *, listed: int, now: datetime, confirm_s: int
) -> list[int]:
    """From a suspicious listing: which of the products it misses (``gone``) a listing at least
    ``confirm_s`` seconds earlier missed too (to delist now); the rest wait as candidates."""
    cur.execute(
        "delete from taptouch.inventory_delist_candidates where store_id = %s and product_id <> all(%s)",
        (store_id, gone),
    )
    cur.execute(
        "select product_id from taptouch.inventory_delist_candidates where store_id = %s and first_missing_at <= %s",
        (store_id, now - timedelta(seconds=confirm_s)),
    )
    delist = sorted(r[0] for r in cur.fetchall())
    cur.executemany(
        "insert into taptouch.inventory_delist_candidates (store_id, product_id, first_missing_at)"
        " values (%s, %s, %s) on conflict (store_id, product_id) do nothing",
        [(store_id, pid, now) for pid in gone],
    )
    waiting = len(gone) - len(delist)
    if waiting:
        log.warning(
            "inventory of store %s: the listing %s; %d product(s) it no longer lists are kept until a "
            "second listing at least %d s later agrees",
            store_id,
            "is empty" if listed == 0 else f"would delist {len(gone)} of the store's {held} products",
            waiting,
            confirm_s,
        )
    if delist:
        cur.execute(
            "delete from taptouch.inventory_delist_candidates where store_id = %s and product_id = any(%s)",
            (store_id, delist),
        )
    return delist


def _forget_delistings(cur: psycopg.Cursor, store_id: int, *, stage: bool = False, listed: Iterable[int] = ()) -> None:
    """Remove a store's waiting delistings: all of them, or (``stage``) those of the products this
    listing contains (staged, or ``listed`` but unreadable)."""
    if stage:
        cur.execute(
            "delete from taptouch.inventory_delist_candidates c where c.store_id = %s and (c.product_id = "
            "any(%s) or exists (select 1 from stage_inventory s where s.product_id = c.product_id))",
            (store_id, list(listed)),
        )
    else:
        cur.execute("delete from taptouch.inventory_delist_candidates where store_id = %s", (store_id,))


class _ProductId(msgspec.Struct):
    product_id: Any = None


_PRODUCT_ID_DECODER = msgspec.json.Decoder(_ProductId)


def _product_id(raw: Any) -> int | None:
    try:
        pid = _PRODUCT_ID_DECODER.decode(records.as_bytes(raw)).product_id
    except (msgspec.DecodeError, RecursionError, ValueError):
        key = records.record_key("inventory", raw)
        pid = int(key) if key is not None and key.isdigit() else None
    return pid if pid.__class__ is int and 0 <= pid <= records.BIGINT_MAX else None
