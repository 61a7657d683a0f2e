"""The exact, idempotent loader: API records -> ``taptouch.*`` tables.

How a load works (orders; stores and inventory follow the same pattern):

1. Records arrive page by page, as the exact bytes the API sent (or as parsed dicts, which are
   serialised exactly). Each passes the record boundary (:mod:`.records`); a record that breaks a
   rule goes to ``taptouch.quarantine`` with its reason and raw form, and costs no other record its
   load. A value the boundary let through and PostgreSQL still refuses in COPY costs only its own
   record too: the batch is retried record by record under savepoints and the refused one is
   quarantined with PostgreSQL's reason.
2. Valid rows are buffered and COPYed (psycopg 3 ``COPY``) in batches into temporary staging
   tables, so memory is bounded by the batch size, never by the window.
3. ``finish()`` reduces duplicates (newest ``updated_at`` at the precision the API sent it, kept
   exactly in ``updated_at_exact``, then last seen), merges with
   ``INSERT ... ON CONFLICT ... DO UPDATE ... WHERE`` the staged version is newer (or the same
   version with different content), and replaces the items, payments and refunds of exactly the
   orders whose version was accepted. Everything from the first staged row to the merge is one
   transaction: a window commits whole or not at all.
4. Merges of concurrent loads are serialised by a transaction-scoped advisory lock, and rows are
   written in key order, so two runs of the same window never deadlock or duplicate.

A record quarantined today is loaded normally once the source serves a valid version (usually
with a later ``updated_at``); its quarantine row is then stamped ``resolved_at`` and kept as history.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Sequence

import psycopg
from psycopg import sql

import msgspec

from taptouch_resource.api import InvalidRecord

from . import deletions, derived, marks, records

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
_LOCK_ORDERS = zlib.crc32(b"taptouch.orders.merge")
_LOCK_STORES = zlib.crc32(b"taptouch.stores.merge")
_LOCK_INVENTORY = zlib.crc32(b"taptouch.inventory.merge")

ORDER_COLS = records.ORDER_COLS
ITEM_COLS = records.ITEM_COLS
PAYMENT_COLS = records.PAYMENT_COLS
REFUND_COLS = records.REFUND_COLS
STORE_COLS = records.STORE_COLS
INVENTORY_COLS = records.INVENTORY_COLS
_STAGED_ORDER_COLS = ORDER_COLS + ("updated_at_exact", "raw", "raw_hash")
# an older row (loaded before migration 0005) has no exact version: its microsecond instant stands in
_EXACT = "coalesce(t.updated_at_exact, taptouch.exact_epoch(t.updated_at))"


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

    def __iadd__(self, other: "LoadCounts") -> "LoadCounts":
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)
        return self

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.unchanged

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------
# helpers


def _copy(cur: psycopg.Cursor, table: str, cols: Sequence[str], rows: Iterable[tuple]) -> None:
    stmt = sql.SQL("copy {} ({}) from stdin").format(sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)))
    with cur.copy(stmt) as cp:
        for r in rows:
            cp.write_row(r)


def _line(row: tuple) -> str:
    """One row as a line of COPY's text format, without the newline, for values that need no escaping:
    ``int``, ``Decimal`` (finite), ``date`` and text holding no backslash, tab, newline or carriage
    return (None is ``\\N``). What psycopg's text dumpers write for the same values."""
    return "\t".join(["\\N" if v is None else str(v) for v in row])


def _copy_parts(cur: psycopg.Cursor, table: str, cols: Sequence[str], parts: list) -> None:
    """COPY a mix of pre-formatted text lines (str) and lists of row tuples (psycopg formats them)."""
    stmt = sql.SQL("copy {} ({}) from stdin").format(sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)))
    with cur.copy(stmt) as cp:
        text: list[str] = []
        for part in parts:
            if part.__class__ is str:
                text.append(part)
                if len(text) >= 1000:
                    cp.write("".join(text))
                    text = []
            else:
                for r in part:
                    cp.write_row(r)
        if text:
            cp.write("".join(text))


def _is_data_error(exc: psycopg.Error) -> bool:
    """PostgreSQL refused a value (a record's fault), as opposed to a lost connection, a crash, a
    deadlock or a cancel (the infrastructure's fault, which must fail the load)."""
    state = exc.sqlstate or ""
    return bool(state) and not state.startswith(("08", "40", "53", "57", "58", "XX", "25"))


class _Quarantine:
    def __init__(self, entity: str, window: str | None, run_id: str | None):
        self.entity = entity
        self.window = window
        self.run_id = run_id
        self.rows: list[tuple] = []

    def add(self, raw: Any, reason: str, store_id: int | None) -> None:
        candidate, text = records.quarantine_forms(raw)
        key = records.record_key(self.entity, raw)
        reason = reason[:2000].encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
        self.rows.append((self.entity, key, store_id, reason, candidate, text, self.window, self.run_id))
        log.warning("quarantined %s %s (store %s): %s", self.entity, key or "(no id)", store_id, reason)

    def flush(self, cur: psycopg.Cursor) -> None:
        # raw: the record as jsonb when PostgreSQL can hold it (a NUL shown as the text \u0000), else
        # null and the text in raw_text. try_jsonb never raises: a quarantine row always lands.
        if self.rows:
            cur.executemany(
                "insert into taptouch.quarantine (entity, record_key, store_id, reason, raw, raw_text, \"window\", run_id)"
                " select e, k, s, r, j, case when j is null then t end, w, u from (select %s::text e, %s::text k,"
                " %s::bigint s, %s::text r, taptouch.try_jsonb(%s::text) j, %s::text t, %s::text w, %s::text u) x",
                self.rows,
            )
            self.rows = []


def _sync_log(cur, entity: str, store_id: int | None, window: str | None, run_id: str | None,
              started_at: datetime, counts: LoadCounts) -> None:
    cur.execute(
        "insert into taptouch.sync_log (entity, store_id, \"window\", run_id, started_at, inserted, updated,"
        " unchanged, quarantined, deleted) values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (entity, store_id, window, run_id, started_at, counts.inserted, counts.updated, counts.unchanged,
         counts.quarantined, counts.deleted),
    )


def _set_list(cols: Sequence[str], skip: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in cols if c not in skip
    )


def _ids(cols: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(map(sql.Identifier, cols))


# ------------------------------------------------------------------------------------------------
# stores


@dataclass
class StoreLoadCounts(LoadCounts):
    """:class:`LoadCounts` of a stores load, plus ``business_dates_rederived``: orders whose
    ``business_date`` changed because their store's zone did (see :mod:`.derived`)."""

    business_dates_rederived: int = 0


def load_stores(conn: psycopg.Connection, records_: Iterable[Any], *, run_id: str | None = None,
                history: bool = True) -> StoreLoadCounts:
    """Upsert store records (newest ``updated_at`` wins, at full precision) in one transaction.

    A store accepted with another zone than the one the warehouse held (or not held before) has
    the ``business_date`` of its orders re-derived in the same transaction, under the orders merge
    lock (:func:`.derived.rederive_business_dates`), counted in ``business_dates_rederived``.
    ``history=False``: no ``sync_log`` row (``taptouch-sync rebuild`` retrying quarantined stores)."""
    started = datetime.now(timezone.utc)
    counts = StoreLoadCounts()
    quarantine = _Quarantine("store", None, run_id)
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
    cols = STORE_COLS + ("updated_at_exact", "raw")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("create temp table stage_stores (like taptouch.stores including defaults) on commit drop"))
        _copy_or_quarantine(cur, "stage_stores", cols, [rows[k] for k in sorted(rows)], quarantine, counts,
                            lambda r: (r[-1].encode("utf-8"), None))
        cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK_STORES,))
        cur.execute("create temp table zones_before on commit drop as select store_id, timezone from taptouch.stores"
                    " where store_id in (select store_id from stage_stores)")
        cur.execute(sql.SQL(
            "insert into taptouch.stores as t ({cols}) select {cols} from stage_stores order by store_id "
            "on conflict (store_id) do update set {sets}, loaded_at = now() "
            "where excluded.updated_at_exact > " + _EXACT + " "
            "or (excluded.updated_at_exact = " + _EXACT + " and excluded.raw is distinct from t.raw) "
            "returning (xmax = 0)"
        ).format(cols=_ids(cols), sets=_set_list(cols, ("store_id",))))
        flags = [r[0] for r in cur.fetchall()]
        counts.inserted = sum(flags)
        counts.updated = len(flags) - counts.inserted
        cur.execute("select count(*) from stage_stores")
        counts.unchanged = cur.fetchone()[0] - len(flags)
        # business dates follow the zone: stores accepted with a zone the warehouse did not hold
        cur.execute("select s.store_id, b.timezone, s.timezone from taptouch.stores s join stage_stores g using (store_id)"
                    " left join zones_before b using (store_id) where s.timezone is distinct from b.timezone"
                    " order by s.store_id")
        moved = cur.fetchall()
        if moved:
            cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK_ORDERS,))  # no orders merge between read and write
            counts.business_dates_rederived = derived.rederive_business_dates(cur, [m[0] for m in moved])
            for store_id, before, after in moved:
                if before is not None:
                    log.warning("store %s: time zone %s -> %s; business dates of its orders re-derived",
                                store_id, before, after)
            if counts.business_dates_rederived:
                log.warning("stores: %d order business date(s) re-derived after a time zone change",
                            counts.business_dates_rederived)
        quarantine.flush(cur)
        cur.execute(
            "update taptouch.quarantine q set resolved_at = now() from stage_stores s where q.entity = 'store'"
            " and q.resolved_at is null and q.record_key = s.store_id::text"
        )
        if history:
            _sync_log(cur, "stores", None, None, run_id, started, counts)
    return counts


def _copy_or_quarantine(cur: psycopg.Cursor, table: str, cols: Sequence[str], rows: list[tuple],
                        quarantine: "_Quarantine", counts: LoadCounts, raw_of, ) -> None:
    """COPY rows; if PostgreSQL refuses a value, COPY them one by one under savepoints and
    quarantine exactly the refused ones (``raw_of(row)`` -> (raw, store_id))."""
    if not rows:
        return
    try:
        with cur.connection.transaction():
            _copy(cur, table, cols, rows)
        return
    except psycopg.Error as exc:
        if not _is_data_error(exc):
            raise
    for r in rows:
        try:
            with cur.connection.transaction():
                _copy(cur, table, cols, [r])
        except psycopg.Error as exc:
            if not _is_data_error(exc):
                raise
            raw, store_id = raw_of(r)
            quarantine.add(raw, _refused_reason(raw, quarantine.entity, exc), store_id)
            counts.quarantined += 1


def _refused_reason(raw: Any, entity: str, exc: psycopg.Error) -> str:
    precise = records.deep_reason(records.as_bytes(raw), entity)
    diag = (exc.diag.message_primary or str(exc)).strip()
    return precise or f"PostgreSQL refused a value of the {entity} record: {diag}"


def store_timezones(conn: psycopg.Connection) -> dict[int, str]:
    with conn.cursor() as cur:
        cur.execute("select store_id, timezone from taptouch.stores")
        return dict(cur.fetchall())


# ------------------------------------------------------------------------------------------------
# orders


class _Id(msgspec.Struct):
    id: Any = None


_ID_DECODER = msgspec.json.Decoder(_Id)


def _order_id(raw: bytes) -> int | None:
    """The record's id when it is a valid bigint (for the unchanged-digest lookup), else None.

    A record that starts ``{"id":<digits>,`` is read from its bytes. (Safe whatever the rest says: a
    record is skipped only when the warehouse's row of that id holds exactly these bytes.)"""
    if raw[:6] == b'{"id":':
        end = raw.find(b",", 6, 32)
        if end > 6:
            token = raw[6:end]
            if token.isdigit() and len(token) < 19:
                return int(token)
    try:
        oid = _ID_DECODER.decode(raw).id
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None
    return oid if oid.__class__ is int and 0 <= oid <= records.BIGINT_MAX else None


class OrderWindowLoad:
    """One window of orders (e.g. a daily partition, all stores) loaded in one transaction.

    Use as a context manager::

        with OrderWindowLoad(conn, window="2026-11-02", run_id=...) as load:
            for page in pages:
                load.add_page(store_id, page)
            load.discard_store(7103)        # a store whose fetch failed: none of its rows commit
            counts = load.finish()          # merge + commit

    Leaving the block without ``finish()`` (an exception) rolls everything back.
    """

    def __init__(self, conn: psycopg.Connection, *, window: str | None, run_id: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, timezones: dict[int, str] | None = None,
                 full: bool = False, before_merge: Callable[[], None] | None = None):
        """``full``: a full refresh of the window (stamps the marks' ``full_loaded_at``); the marks
        of the stores passed to :meth:`store_listed` move in the same transaction as the data.
        ``before_merge``: called by :meth:`finish` once everything is staged, before the merge
        lock is taken (e.g. to wait, outside any statement, until the run's previous window has
        committed: windows loaded at once then commit in order); an exception from it rolls back."""
        self.conn = conn
        self.before_merge = before_merge
        self.full = full
        self._marks: dict[int, datetime | None] = {}  # store id -> where its mark may move (None: stays)
        self._judged: dict[int, tuple[datetime, datetime, datetime]] = {}  # complete listings (store_listed)
        self._listed: dict[int, set[int]] = {}  # store id -> every order id its pages held
        self._blind: set[int] = set()  # stores with a listed record whose id cannot be read
        self.window = window
        self.run_id = run_id
        self.batch_size = batch_size
        self.timezones = timezones
        self.quarantine = _Quarantine("order", window, run_id)
        self.counts = LoadCounts()
        self.per_store: dict[int, LoadCounts] = {}
        self._seq = 0
        self._buf: list[tuple] = []  # (seq, store_id, raw, order row, items, payments, refunds) per order
        self._tx: psycopg.Transaction | None = None
        self._cur: psycopg.Cursor | None = None
        self._started = datetime.now(timezone.utc)
        self._discarded: set[int] = set()
        self._skipped: set[int] = set()  # orders recognised as unchanged by their raw_hash
        self._finished = False

    def __enter__(self) -> "OrderWindowLoad":
        self._tx = self.conn.transaction()
        self._tx.__enter__()
        self._cur = self.conn.cursor()
        if self.timezones is None:
            self.timezones = store_timezones(self.conn)
        cur = self._cur
        cur.execute("create temp table stage_orders (seq bigint, like taptouch.orders) on commit drop")
        cur.execute("alter table stage_orders alter column loaded_at drop not null")
        cur.execute("create temp table stage_items (seq bigint, like taptouch.order_items) on commit drop")
        cur.execute("create temp table stage_payments (seq bigint, like taptouch.order_payments) on commit drop")
        cur.execute("create temp table stage_refunds (seq bigint, like taptouch.order_refunds) on commit drop")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if not self._finished:  # an error, or a block left without finish(): roll back everything
                if exc_type is None:
                    log.warning("order window %s left without finish(): rolled back", self.window)
                    exc_type, exc = RuntimeError, RuntimeError("rolled back")
                self._tx.__exit__(exc_type, exc, tb)
        finally:
            if self._cur is not None:
                self._cur.close()

    def store_counts(self, store_id: int) -> LoadCounts:
        return self.per_store.setdefault(store_id, LoadCounts())

    def add_page(self, store_id: int, page: Iterable[Any]) -> int:
        """Validate and stage one page of one store's orders (each record its exact JSON bytes, or a
        parsed dict). Returns how many orders were staged."""
        tz = self.timezones.get(store_id)
        if tz is None:
            raise UnknownStoreError(
                f"store {store_id} is not in taptouch.stores, so its time zone (and the orders' business dates) "
                f"is unknown. Materialize the 'stores' asset first."
            )
        staged = 0
        sc = self.store_counts(store_id)
        raws = [records.as_bytes(r) for r in page]
        ids = [_order_id(r) for r in raws]
        listed = self._listed.setdefault(store_id, set())
        for raw, oid in zip(raws, ids):
            oid = oid if oid is not None else deletions.listed_id(raw)  # a malformed record is listed too
            if oid is None:
                self._blind.add(store_id)
            else:
                listed.add(oid)
        known = self._known_digests(ids, store_id)
        buf = self._buf
        blake = hashlib.blake2b
        for raw, oid in zip(raws, ids):
            digest = blake(raw, digest_size=16).digest()
            if oid is not None and known.get(oid) == digest:  # the warehouse holds exactly this version already
                if oid in self._skipped:
                    self.counts.duplicates += 1
                else:
                    self._skipped.add(oid)
                    sc.unchanged += 1
                continue
            try:
                r = records.order_rows(raw, tz, store_id)
            except InvalidRecord as exc:
                self.quarantine.add(raw, exc.reason, store_id)
                self.counts.quarantined += 1
                sc.quarantined += 1
                continue
            self._seq += 1
            seq = self._seq
            if b"\\" in raw or b"\n" in raw or b"\r" in raw or b"\t" in raw:
                # a byte COPY's text format must escape: psycopg formats (and escapes) these rows
                buf.append((seq, store_id, raw, [(seq, *r.order, r.updated_key, r.raw, digest)],
                            [(seq, *x) for x in r.items], [(seq, *x) for x in r.payments],
                            [(seq, *x) for x in r.refunds]))
            else:
                # every text of the rows is a piece of raw (or a number, a date): none needs escaping
                p = f"{seq}\t"
                buf.append((seq, store_id, raw,
                            f"{p}{_line(r.order)}\t{r.updated_key}\t{r.raw}\t\\\\x{digest.hex()}\n",
                            "".join([f"{p}{_line(x)}\n" for x in r.items]),
                            "".join([f"{p}{_line(x)}\n" for x in r.payments]),
                            "".join([f"{p}{_line(x)}\n" for x in r.refunds])))
            staged += 1
        if len(buf) >= self.batch_size:
            self._flush()
        return staged

    def _known_digests(self, ids: list[int | None], store_id: int) -> dict[int, bytes]:
        """order id -> raw_hash of the version the warehouse holds, for the ids on this page, when that
        version belongs to the listed store (the same bytes listed under another store are checked,
        and quarantined for their store_id, never skipped as unchanged)."""
        ids = [i for i in ids if i is not None]
        if not ids:
            return {}
        self._cur.execute("select order_id, raw_hash from taptouch.orders where order_id = any(%s) and store_id = %s",
                          (ids, store_id))
        return {oid: bytes(h) for oid, h in self._cur.fetchall() if h is not None}

    def _flush(self) -> None:
        cur = self._cur
        groups, self._buf = self._buf, []
        if groups:
            try:
                with self.conn.transaction():  # a savepoint: a refused value costs only its record
                    self._copy_groups(groups)
            except psycopg.Error as exc:
                if not _is_data_error(exc):
                    raise
                for g in groups:
                    try:
                        with self.conn.transaction():
                            self._copy_groups([g])
                    except psycopg.Error as exc:
                        if not _is_data_error(exc):
                            raise
                        _, store_id, raw = g[:3]
                        self.quarantine.add(raw, _refused_reason(raw, "order", exc), store_id)
                        self.counts.quarantined += 1
                        self.store_counts(store_id).quarantined += 1
        self.quarantine.flush(cur)

    def _copy_groups(self, groups: list[tuple]) -> None:
        cur = self._cur
        for i, table, cols in ((3, "stage_orders", _STAGED_ORDER_COLS), (4, "stage_items", ITEM_COLS),
                               (5, "stage_payments", PAYMENT_COLS), (6, "stage_refunds", REFUND_COLS)):
            parts = [g[i] for g in groups if g[i]]
            if parts:
                _copy_parts(cur, table, ("seq",) + cols, parts)

    def store_listed(self, store_id: int, mark: datetime | None,
                     complete: tuple[datetime, datetime, datetime] | None = None) -> None:
        """A store's listing ended: its high-water mark may move to ``mark`` (None: it stays) when
        the window commits (:func:`.marks.mark_for` says how far a listing lets it move).

        ``complete`` = (listed from, listed to, started at on the API's clock) of a listing known to
        be complete: it also counts as one of the two listings that must miss an order before it
        is marked deleted (:func:`.deletions.judge_listing`; a bounded listing records and clears
        candidates, it never confirms a deletion)."""
        self._marks[store_id] = mark
        if complete is not None:
            self._judged[store_id] = complete

    def _judge_listings(self, cur: psycopg.Cursor) -> None:
        """An order the API lists is not deleted at the source: restored, and no longer a deletion
        candidate; a complete listing also records the orders it missed as candidates (.deletions),
        timed by this machine's clock, as the reconciliation that may confirm them (never the API's)."""
        for store_id, ids in sorted(self._listed.items()):
            if store_id in self._discarded:
                continue
            judged = self._judged.get(store_id) if store_id not in self._blind else None
            if judged is None:
                deletions.note_listed(cur, ids)
                continue
            listed_from, listed_to, started_at = judged
            deletions.judge_listing(cur, store_id, ids, listed_from=listed_from, listed_to=listed_to,
                                    started_at=started_at, now=datetime.now(timezone.utc), confirm_s=0,
                                    seen_by=self.run_id)

    def discard_store(self, store_id: int) -> None:
        """Drop everything staged for a store whose fetch failed: none of its rows will commit."""
        self._flush()
        self._discarded.add(store_id)
        cur = self._cur
        cur.execute("delete from stage_orders where store_id = %s returning seq", (store_id,))
        seqs = [r[0] for r in cur.fetchall()]
        if seqs:
            for t in ("stage_items", "stage_payments", "stage_refunds"):
                cur.execute(sql.SQL("delete from {} where seq = any(%s)").format(sql.Identifier(t)), (seqs,))
        self.per_store.pop(store_id, None)

    def finish(self) -> LoadCounts:
        """Merge the staged window into the warehouse and commit. Returns the counts."""
        self._flush()
        cur = self._cur
        # statistics of the key columns only (the planner needs sizes; sampling raw's jsonb costs more
        # than the merge gains), and no JIT: its compile time exceeds what it saves on a window
        cur.execute("analyze stage_orders (seq, order_id, store_id)")
        cur.execute("set local jit = off")
        # 1. one version per order: newest updated_at, then the last seen (keys only: the rows stay staged)
        cur.execute(
            "create temp table pick on commit drop as select distinct on (order_id) seq, order_id, store_id"
            " from stage_orders order by order_id, updated_at_exact desc, seq desc"
        )
        cur.execute("analyze pick")
        cur.execute("select (select count(*) from stage_orders) - (select count(*) from pick)")
        self.counts.duplicates += cur.fetchone()[0]
        cols = _STAGED_ORDER_COLS
        if self.before_merge is not None:
            self.before_merge()
        # 2. merge under the advisory lock (concurrent loads of overlapping windows take turns)
        cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK_ORDERS,))
        cur.execute(sql.SQL(
            "create temp table accepted on commit drop as "
            "with up as ("
            " insert into taptouch.orders as t ({cols}) select {scols} from stage_orders s join pick p on p.seq = s.seq"
            " order by s.order_id"
            " on conflict (order_id) do update set {sets}, loaded_at = now()"
            " where excluded.updated_at_exact > " + _EXACT +
            " or (excluded.updated_at_exact = " + _EXACT + " and excluded.raw_hash is distinct from t.raw_hash"
            "     and excluded.raw::text is distinct from t.raw::text)"  # not the same JSON in another key order
            " returning t.order_id, t.store_id, (xmax = 0) as inserted"
            ") select up.order_id, up.store_id, up.inserted, pick.seq from up join pick using (order_id)"
        ).format(cols=_ids(cols), sets=_set_list(cols, ("order_id",)),
                 scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in cols)))
        cur.execute("analyze accepted")
        # 3. children of accepted orders: replaced, in the same transaction
        for table, stage, cols_ in (("order_items", "stage_items", ITEM_COLS),
                                    ("order_payments", "stage_payments", PAYMENT_COLS),
                                    ("order_refunds", "stage_refunds", REFUND_COLS)):
            cur.execute(sql.SQL(
                "delete from taptouch.{t} c using accepted a where c.order_id = a.order_id and not a.inserted"
            ).format(t=sql.Identifier(table)))
            cur.execute(sql.SQL(
                # the children carry their order's account, whichever account's run replaced them
                "insert into taptouch.{t} ({cols}, account) select {scols}, o.account from {s} s"
                " join accepted a on a.seq = s.seq join taptouch.orders o on o.order_id = s.order_id "
                "order by s.order_id"
            ).format(t=sql.Identifier(table), s=sql.Identifier(stage), cols=_ids(cols_),
                     scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in cols_)))
        # business dates by the zone the warehouse holds, where the listing's differs (see .derived)
        derived.follow_store_zones(cur, self.timezones, self.per_store, only="accepted")
        # 4. counts per store
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
            cur.execute("select store_id, count(*) from pick where order_id = any(%s) group by store_id",
                        (list(self._skipped),))
            for store_id, n in cur.fetchall():
                self.store_counts(store_id).unchanged -= n
                self.counts.duplicates += n
        self.counts.unchanged = sum(sc.unchanged for sc in self.per_store.values())
        self.quarantine.flush(cur)
        cur.execute(
            "update taptouch.quarantine q set resolved_at = now() from pick p where q.entity = 'order'"
            " and q.resolved_at is null and q.record_key = p.order_id::text"
        )
        for store_id, sc in sorted(self.per_store.items()):
            _sync_log(cur, "orders", store_id, self.window, self.run_id, self._started, sc)
        self._judge_listings(cur)
        if self._marks:  # stores whose listing ended (a failed store was discarded, and its mark stays)
            marks.advance(cur, self.window, {sid: at for sid, at in sorted(self._marks.items())
                                             if sid not in self._discarded}, full=self.full)
        self._finished = True
        self._tx.__exit__(None, None, None)
        return self.counts


# ------------------------------------------------------------------------------------------------
# inventory


def load_inventory(conn: psycopg.Connection, store_id: int, records_: Iterable[Any], *, snapshot_date: date,
                   run_id: str | None = None, now: datetime | None = None,
                   confirm_s: int | None = None) -> LoadCounts:
    """Merge one store's complete inventory listing into ``inventory_levels`` and upsert today's snapshot.

    ``records_`` must be the store's complete listing (the client raises rather than return a
    partial or malformed one). Per product, the newest ``updated_at`` wins (full precision): an older
    listing loaded later never moves a level backwards. A product the listing does not contain is
    delisted (deleted), unless its level is newer than every level of this listing (then this
    listing is older than the row and cannot speak for it). A product whose record is malformed keeps
    its previous level (it is listed, just unreadable) and is quarantined. Everything (levels,
    deletions, snapshot, quarantine) commits in one transaction.

    A *suspicious* listing (empty while the store holds levels, or one that would delist more than
    half of the store's products) delists nothing at once: the products it no longer lists wait in
    ``taptouch.inventory_delist_candidates`` and are delisted only when a second listing at least
    ``confirm_s`` seconds later (``TAPTOUCH_RECONCILE_CONFIRM_S``, by ``now``) agrees. The levels it
    does list merge as usual. An ordinary listing delists at once and clears the store's waiting rows.
    """
    started = datetime.now(timezone.utc)
    now = now or started
    if confirm_s is None:
        from ..settings import reconcile_confirm_s  # read at run time, like every TAPTOUCH_* tunable

        confirm_s = reconcile_confirm_s()
    counts = LoadCounts()
    quarantine = _Quarantine("inventory", snapshot_date.isoformat(), run_id)
    rows: dict[int, tuple] = {}
    bad_ids: list[int] = []
    unidentified = 0  # malformed records whose product id cannot be read
    seen = 0
    newest: Any = None
    for raw in records_:
        try:
            row, key, text = records.inventory_row(raw, store_id)
        except InvalidRecord as exc:
            quarantine.add(raw, exc.reason, store_id)
            counts.quarantined += 1
            pid = _product_id(raw)
            if pid is not None:
                bad_ids.append(pid)
            else:  # which product it lists is unknown: the listing cannot say what is no longer stocked
                unidentified += 1
            continue
        seen += 1
        prev = rows.get(row[1])
        if prev is None or key is None or prev[-2] is None or key >= prev[-2]:  # newest, then last seen
            rows[row[1]] = row + (key, text)
        if key is not None and (newest is None or key > newest):
            newest = key
    counts.duplicates = seen - len(rows)
    cols = INVENTORY_COLS + ("updated_at_exact", "raw")
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("create temp table stage_inventory (like taptouch.inventory_levels including defaults) on commit drop")
        def refused(r: tuple) -> tuple[bytes, int]:
            bad_ids.append(r[1])  # listed, just unloadable: keeps its previous level like any malformed record
            return r[-1].encode("utf-8"), store_id

        _copy_or_quarantine(cur, "stage_inventory", cols, [rows[k] for k in sorted(rows)], quarantine, counts,
                            refused)
        cur.execute("select pg_advisory_xact_lock(%s, %s)", (_LOCK_INVENTORY % 2**31, store_id % 2**31))
        if unidentified:
            # a destructive replace only from a well-formed listing: a record whose product cannot be
            # identified might be any product, so nothing is delisted this time
            log.warning("inventory of store %s: %d malformed record(s) without a readable product_id; "
                        "no product is delisted from this listing", store_id, unidentified)
            _forget_delistings(cur, store_id, stage=True, listed=bad_ids)
        else:
            counts.deleted = _delist(cur, store_id, bad_ids, newest, listed=seen + counts.quarantined, now=now,
                                     confirm_s=confirm_s)
        exact = "coalesce(t.updated_at_exact, taptouch.exact_epoch(t.updated_at))"
        cur.execute(sql.SQL(
            "insert into taptouch.inventory_levels as t ({cols}) select {cols} from stage_inventory order by product_id "
            "on conflict (store_id, product_id) do update set {sets}, synced_at = now() "
            "where excluded.raw is distinct from t.raw and (excluded.updated_at_exact is null or t.updated_at is null"
            " or excluded.updated_at_exact >= " + exact + ") "
            "returning (xmax = 0)"
        ).format(cols=_ids(cols), sets=_set_list(cols, ("store_id", "product_id"))))
        flags = [r[0] for r in cur.fetchall()]
        counts.inserted = sum(flags)
        counts.updated = len(flags) - counts.inserted
        cur.execute("select count(*) from stage_inventory")
        counts.unchanged = cur.fetchone()[0] - len(flags)
        # today's snapshot is the store's levels after the merge (the last sync of the day wins; a
        # product delisted since an earlier sync today leaves it)
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
        quarantine.flush(cur)
        cur.execute(
            "update taptouch.quarantine q set resolved_at = now() from stage_inventory s where q.entity = 'inventory'"
            " and q.resolved_at is null and q.store_id = %s and q.record_key = s.product_id::text", (store_id,),
        )
        _sync_log(cur, "inventory", store_id, snapshot_date.isoformat(), run_id, started, counts)
    return counts


def _delist(cur: psycopg.Cursor, store_id: int, listed_bad: list[int], newest: Any, *, listed: int,
            now: datetime, confirm_s: int) -> int:
    """Delist the store's products this listing (staged in ``stage_inventory``) no longer contains;
    from a suspicious listing, only those a listing ``confirm_s`` seconds earlier also missed.
    Returns how many were delisted."""
    cur.execute(
        "select l.product_id from taptouch.inventory_levels l where l.store_id = %s"
        " and not exists (select 1 from stage_inventory s where s.product_id = l.product_id)"
        " and l.product_id <> all(%s)"
        " and (%s::numeric is null or l.updated_at is null"
        "      or coalesce(l.updated_at_exact, taptouch.exact_epoch(l.updated_at)) <= %s::numeric)"
        " order by l.product_id",
        (store_id, listed_bad, newest, newest),
    )
    gone = [r[0] for r in cur.fetchall()]
    cur.execute("select count(*) from taptouch.inventory_levels where store_id = %s", (store_id,))
    held = cur.fetchone()[0]
    suspicious = bool(gone) and ((listed == 0 and held > 0) or 2 * len(gone) > held)
    if not suspicious:
        _forget_delistings(cur, store_id)
        delist = gone
    else:
        cur.execute("delete from taptouch.inventory_delist_candidates where store_id = %s and product_id <> all(%s)",
                    (store_id, gone))
        cur.execute("select product_id from taptouch.inventory_delist_candidates where store_id = %s"
                    " and first_missing_at <= %s", (store_id, now - timedelta(seconds=confirm_s)))
        delist = sorted(r[0] for r in cur.fetchall())
        cur.executemany(
            "insert into taptouch.inventory_delist_candidates (store_id, product_id, first_missing_at)"
            " values (%s, %s, %s) on conflict (store_id, product_id) do nothing",
            [(store_id, pid, now) for pid in gone])
        waiting = len(gone) - len(delist)
        if waiting:
            log.warning("inventory of store %s: the listing %s; %d product(s) it no longer lists are kept until a "
                        "second listing at least %d s later agrees", store_id,
                        "is empty" if listed == 0 else f"would delist {len(gone)} of the store's {held} products",
                        waiting, confirm_s)
        if delist:
            cur.execute("delete from taptouch.inventory_delist_candidates where store_id = %s and product_id = any(%s)",
                        (store_id, delist))
    if not delist:
        return 0
    cur.execute("delete from taptouch.inventory_levels where store_id = %s and product_id = any(%s)",
                (store_id, delist))
    return cur.rowcount


def _forget_delistings(cur: psycopg.Cursor, store_id: int, *, stage: bool = False, listed: list[int] = ()) -> None:
    """Remove a store's waiting delistings: all of them, or (``stage``) those of the products this
    listing contains (staged, or ``listed`` but unreadable)."""
    if stage:
        cur.execute("delete from taptouch.inventory_delist_candidates c where c.store_id = %s and (c.product_id = "
                    "any(%s) or exists (select 1 from stage_inventory s where s.product_id = c.product_id))",
                    (store_id, list(listed)))
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
