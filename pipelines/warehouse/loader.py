"""The exact, idempotent loader: API records -> ``taptouch.*`` tables.

How a load works (orders; stores and inventory follow the same pattern):

1. Records arrive page by page. Each is validated by :mod:`taptouch_resource.api`; a record that
   breaks a rule goes to ``taptouch.quarantine`` with its reason and raw form, and costs no other
   record its load.
2. Valid rows are buffered and COPYed (psycopg 3 ``COPY``) in batches into temporary staging
   tables, so memory is bounded by the batch size, never by the window.
3. ``finish()`` reduces duplicates (newest ``updated_at``, then last seen), merges with
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
import re
import zlib
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from typing import Any, Iterable, Sequence

import psycopg
from psycopg import sql

from taptouch_resource import api, jsonutil
from taptouch_resource.api import InvalidRecord

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
_LOCK_ORDERS = zlib.crc32(b"taptouch.orders.merge")
_LOCK_STORES = zlib.crc32(b"taptouch.stores.merge")
_LOCK_INVENTORY = zlib.crc32(b"taptouch.inventory.merge")

ORDER_COLS = (
    "order_id", "store_id", "number", "source", "fulfillment_type", "status", "created_at", "updated_at",
    "completed_at", "business_date", "currency", "subtotal", "discount", "surcharge", "rounding", "tax",
    "total", "tips", "redeem_points", "customer_id", "customer_name", "cashier_id", "cashier_name",
)
ITEM_COLS = ("order_id", "item_id", "product_id", "sku", "name", "category", "quantity", "unit_price",
             "discount", "tax", "total", "modifiers")
PAYMENT_COLS = ("order_id", "payment_id", "method", "amount", "tip", "surcharge", "paid_at")
REFUND_COLS = ("order_id", "refund_id", "amount", "reason", "refunded_at")
STORE_COLS = ("store_id", "name", "business_name", "status", "timezone", "currency", "phone", "email",
              "address", "created_at", "updated_at")
INVENTORY_COLS = ("store_id", "product_id", "sku", "name", "category", "unit", "on_hand", "reorder_level",
                  "cost_price", "sell_price", "updated_at")
_JSON_COLS = {"modifiers", "address"}


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


def _cell(col: str, value: Any) -> Any:
    if col in _JSON_COLS:
        if value is None:
            return None
        return "[]" if value == [] else jsonutil.dumps(value)
    return value


def _row(cols: Sequence[str], rec: dict) -> tuple:
    return tuple(_cell(c, rec[c]) for c in cols)


def _copy(cur: psycopg.Cursor, table: str, cols: Sequence[str], rows: Iterable[tuple]) -> None:
    stmt = sql.SQL("copy {} ({}) from stdin").format(sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, cols)))
    with cur.copy(stmt) as cp:
        for r in rows:
            cp.write_row(r)


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def quarantine_raw(raw: Any) -> tuple[str | None, str | None]:
    """(jsonb text, plain text) for a quarantined record. jsonb cannot hold NUL: it is shown as \\u0000."""
    try:
        text = jsonutil.dumps(raw)
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not valid Unicode, so neither jsonb nor text can hold it
        return None, text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")[:1_000_000]
    except (TypeError, ValueError):
        return None, repr(raw).replace("\x00", "\\x00")[:1_000_000]
    if "\\u0000" in text:
        text = _NUL_ESCAPE.sub(r"\1\\\\u0000", text)
    return text, None


class _Quarantine:
    def __init__(self, entity: str, window: str | None, run_id: str | None):
        self.entity = entity
        self.window = window
        self.run_id = run_id
        self.rows: list[tuple] = []

    def add(self, raw: Any, reason: str, store_id: int | None) -> None:
        raw_json, raw_text = quarantine_raw(raw)
        key = api.record_key(self.entity, raw)
        self.rows.append((self.entity, key, store_id, reason[:2000], raw_json, raw_text, self.window, self.run_id))
        log.warning("quarantined %s %s (store %s): %s", self.entity, key or "(no id)", store_id, reason)

    def flush(self, cur: psycopg.Cursor) -> None:
        if self.rows:
            cur.executemany(
                "insert into taptouch.quarantine (entity, record_key, store_id, reason, raw, raw_text, \"window\", run_id)"
                " values (%s, %s, %s, %s, %s::jsonb, %s, %s, %s)",
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


def load_stores(conn: psycopg.Connection, records: Iterable[Any], *, run_id: str | None = None) -> LoadCounts:
    """Upsert store records (newest ``updated_at`` wins) in one transaction."""
    started = datetime.now(timezone.utc)
    counts = LoadCounts()
    quarantine = _Quarantine("store", None, run_id)
    rows: dict[int, tuple] = {}
    seen = 0
    for raw in records:
        try:
            row = api.parse_store(raw)
        except InvalidRecord as exc:
            quarantine.add(raw, exc.reason, None)
            counts.quarantined += 1
            continue
        seen += 1
        prev = rows.get(row["store_id"])
        if prev is None or row["updated_at"] >= prev[len(STORE_COLS) - 1]:
            rows[row["store_id"]] = _row(STORE_COLS, row) + (jsonutil.dumps(raw),)
    counts.duplicates = seen - len(rows)
    cols = STORE_COLS + ("raw",)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("create temp table stage_stores (like taptouch.stores including defaults) on commit drop"))
        _copy(cur, "stage_stores", cols, [rows[k] for k in sorted(rows)])
        cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK_STORES,))
        cur.execute(sql.SQL(
            "insert into taptouch.stores as t ({cols}) select {cols} from stage_stores order by store_id "
            "on conflict (store_id) do update set {sets}, loaded_at = now() "
            "where excluded.updated_at > t.updated_at "
            "or (excluded.updated_at = t.updated_at and excluded.raw is distinct from t.raw) "
            "returning (xmax = 0)"
        ).format(cols=_ids(cols), sets=_set_list(cols, ("store_id",))))
        flags = [r[0] for r in cur.fetchall()]
        counts.inserted = sum(flags)
        counts.updated = len(flags) - counts.inserted
        counts.unchanged = len(rows) - len(flags)
        quarantine.flush(cur)
        cur.execute(
            "update taptouch.quarantine set resolved_at = now() where entity = 'store' and resolved_at is null"
            " and record_key = any(%s)", ([str(k) for k in rows],),
        )
        _sync_log(cur, "stores", None, None, run_id, started, counts)
    return counts


def store_timezones(conn: psycopg.Connection) -> dict[int, str]:
    with conn.cursor() as cur:
        cur.execute("select store_id, timezone from taptouch.stores")
        return dict(cur.fetchall())


# ------------------------------------------------------------------------------------------------
# orders


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
                 batch_size: int = DEFAULT_BATCH_SIZE, timezones: dict[int, str] | None = None):
        self.conn = conn
        self.window = window
        self.run_id = run_id
        self.batch_size = batch_size
        self.timezones = timezones
        self.quarantine = _Quarantine("order", window, run_id)
        self.counts = LoadCounts()
        self.per_store: dict[int, LoadCounts] = {}
        self._seq = 0
        self._buf: dict[str, list[tuple]] = {"o": [], "i": [], "p": [], "r": []}
        self._buffered = 0
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

    def add_page(self, store_id: int, records: Iterable[Any]) -> int:
        """Validate and stage one page of one store's orders. Returns how many rows were staged."""
        tz = self.timezones.get(store_id)
        if tz is None:
            raise UnknownStoreError(
                f"store {store_id} is not in taptouch.stores, so its time zone (and the orders' business dates) "
                f"is unknown. Materialize the 'stores' asset first."
            )
        staged = 0
        sc = self.store_counts(store_id)
        records = records if isinstance(records, list) else list(records)
        known = self._known_digests(records)
        for raw in records:
            try:
                raw_text = jsonutil.dumps(raw)
            except (TypeError, ValueError):
                raw_text = None  # e.g. a NaN: parse_order says why, or the dumps below raises as before
            digest = None
            if raw_text is not None:
                digest = hashlib.blake2b(raw_text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                oid = raw.get(api.ORDER_ID_FIELD) if isinstance(raw, dict) else None
                if known.get(oid) == digest:  # the warehouse holds exactly this version already
                    if oid in self._skipped:
                        self.counts.duplicates += 1
                    else:
                        self._skipped.add(oid)
                        sc.unchanged += 1
                    continue
            try:
                parsed = api.parse_order(raw, tz, raw_text=raw_text)
                if parsed["order"]["store_id"] != store_id:
                    raise InvalidRecord(
                        f"store_id {parsed['order']['store_id']} differs from the store it was listed under ({store_id})"
                    )
            except InvalidRecord as exc:
                self.quarantine.add(raw, exc.reason, store_id)
                self.counts.quarantined += 1
                sc.quarantined += 1
                continue
            self._seq += 1
            seq = self._seq
            if raw_text is None:
                raw_text = jsonutil.dumps(raw)
                digest = hashlib.blake2b(raw_text.encode(), digest_size=16).digest()
            self._buf["o"].append((seq,) + _row(ORDER_COLS, parsed["order"]) + (raw_text, digest))
            self._buf["i"].extend((seq,) + _row(ITEM_COLS, r) for r in parsed["items"])
            self._buf["p"].extend((seq,) + _row(PAYMENT_COLS, r) for r in parsed["payments"])
            self._buf["r"].extend((seq,) + _row(REFUND_COLS, r) for r in parsed["refunds"])
            staged += 1
        self._buffered += staged
        if self._buffered >= self.batch_size:
            self._flush()
        return staged

    def _known_digests(self, records: list) -> dict[int, bytes]:
        """order id -> raw_hash of the version the warehouse holds, for the ids on this page."""
        ids = [r.get(api.ORDER_ID_FIELD) for r in records if isinstance(r, dict)]
        ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**63]
        if not ids:
            return {}
        self._cur.execute("select order_id, raw_hash from taptouch.orders where order_id = any(%s)", (ids,))
        return {oid: bytes(h) for oid, h in self._cur.fetchall() if h is not None}

    def _flush(self) -> None:
        cur = self._cur
        for key, table, cols in (("o", "stage_orders", ORDER_COLS + ("raw", "raw_hash")), ("i", "stage_items", ITEM_COLS),
                                 ("p", "stage_payments", PAYMENT_COLS), ("r", "stage_refunds", REFUND_COLS)):
            if self._buf[key]:
                _copy(cur, table, ("seq",) + cols, self._buf[key])
        self._buf = {"o": [], "i": [], "p": [], "r": []}
        self._buffered = 0
        self.quarantine.flush(cur)

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
        cur.execute("analyze stage_orders")
        # 1. one version per order: newest updated_at, then the last seen
        cur.execute(
            "create temp table pick on commit drop as "
            "select distinct on (order_id) * from stage_orders order by order_id, updated_at desc, seq desc"
        )
        cur.execute("select (select count(*) from stage_orders) - (select count(*) from pick)")
        self.counts.duplicates += cur.fetchone()[0]
        cols = ORDER_COLS + ("raw", "raw_hash")
        # 2. merge under the advisory lock (concurrent loads of overlapping windows take turns)
        cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK_ORDERS,))
        cur.execute(sql.SQL(
            "create temp table accepted on commit drop as "
            "with up as ("
            " insert into taptouch.orders as t ({cols}) select {cols} from pick order by order_id"
            " on conflict (order_id) do update set {sets}, loaded_at = now()"
            " where excluded.updated_at > t.updated_at"
            " or (excluded.updated_at = t.updated_at and excluded.raw_hash is distinct from t.raw_hash)"
            " returning t.order_id, t.store_id, (xmax = 0) as inserted"
            ") select up.order_id, up.store_id, up.inserted, pick.seq from up join pick using (order_id)"
        ).format(cols=_ids(cols), sets=_set_list(cols, ("order_id",))))
        # 3. children of accepted orders: replaced, in the same transaction
        for table, stage, cols_ in (("order_items", "stage_items", ITEM_COLS),
                                    ("order_payments", "stage_payments", PAYMENT_COLS),
                                    ("order_refunds", "stage_refunds", REFUND_COLS)):
            cur.execute(sql.SQL(
                "delete from taptouch.{t} c using accepted a where c.order_id = a.order_id and not a.inserted"
            ).format(t=sql.Identifier(table)))
            cur.execute(sql.SQL(
                "insert into taptouch.{t} ({cols}) select {scols} from {s} s join accepted a on a.seq = s.seq "
                "order by s.order_id"
            ).format(t=sql.Identifier(table), s=sql.Identifier(stage), cols=_ids(cols_),
                     scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in cols_)))
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
        self._finished = True
        self._tx.__exit__(None, None, None)
        return self.counts


# ------------------------------------------------------------------------------------------------
# inventory


def load_inventory(conn: psycopg.Connection, store_id: int, records: Iterable[Any], *, snapshot_date: date,
                   run_id: str | None = None) -> LoadCounts:
    """Replace one store's ``inventory_levels`` by exactly the listed products, and upsert today's snapshot.

    Everything (levels, deletions, snapshot, quarantine) commits in one transaction. A product whose
    record is malformed keeps its previous level (it is listed, just unreadable) and is quarantined.
    """
    started = datetime.now(timezone.utc)
    counts = LoadCounts()
    quarantine = _Quarantine("inventory", snapshot_date.isoformat(), run_id)
    rows: dict[int, tuple] = {}
    bad_ids: list[int] = []
    seen = 0
    for raw in records:
        try:
            row = api.parse_inventory(raw, store_id)
        except InvalidRecord as exc:
            quarantine.add(raw, exc.reason, store_id)
            counts.quarantined += 1
            pid = raw.get(api.INVENTORY_ID_FIELD) if isinstance(raw, dict) else None
            if isinstance(pid, int) and not isinstance(pid, bool):
                bad_ids.append(pid)
            continue
        seen += 1
        rows[row["product_id"]] = _row(INVENTORY_COLS, row) + (jsonutil.dumps(raw),)  # last seen wins
    counts.duplicates = seen - len(rows)
    cols = INVENTORY_COLS + ("raw",)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("create temp table stage_inventory (like taptouch.inventory_levels including defaults) on commit drop")
        _copy(cur, "stage_inventory", cols, [rows[k] for k in sorted(rows)])
        cur.execute("select pg_advisory_xact_lock(%s, %s)", (_LOCK_INVENTORY % 2**31, store_id % 2**31))
        cur.execute(
            "delete from taptouch.inventory_levels l where l.store_id = %s"
            " and not exists (select 1 from stage_inventory s where s.product_id = l.product_id)"
            " and l.product_id <> all(%s)",
            (store_id, bad_ids),
        )
        counts.deleted = cur.rowcount
        cur.execute(sql.SQL(
            "insert into taptouch.inventory_levels as t ({cols}) select {cols} from stage_inventory order by product_id "
            "on conflict (store_id, product_id) do update set {sets}, synced_at = now() "
            "where excluded.raw is distinct from t.raw "
            "returning (xmax = 0)"
        ).format(cols=_ids(cols), sets=_set_list(cols, ("store_id", "product_id"))))
        flags = [r[0] for r in cur.fetchall()]
        counts.inserted = sum(flags)
        counts.updated = len(flags) - counts.inserted
        counts.unchanged = len(rows) - len(flags)
        cur.execute(
            "insert into taptouch.inventory_snapshots (snapshot_date, store_id, product_id, on_hand, cost_price, sell_price)"
            " select %s, store_id, product_id, on_hand, cost_price, sell_price from stage_inventory order by product_id"
            " on conflict (snapshot_date, store_id, product_id) do update set on_hand = excluded.on_hand,"
            " cost_price = excluded.cost_price, sell_price = excluded.sell_price, synced_at = now()",
            (snapshot_date,),
        )
        # the last sync of the day wins: a product delisted since an earlier sync today leaves the snapshot
        cur.execute(
            "delete from taptouch.inventory_snapshots n where n.snapshot_date = %s and n.store_id = %s"
            " and not exists (select 1 from taptouch.inventory_levels l where l.store_id = n.store_id"
            " and l.product_id = n.product_id)",
            (snapshot_date, store_id),
        )
        quarantine.flush(cur)
        cur.execute(
            "update taptouch.quarantine set resolved_at = now() where entity = 'inventory' and resolved_at is null"
            " and store_id = %s and record_key = any(%s)", (store_id, [str(k) for k in rows]),
        )
        _sync_log(cur, "inventory", store_id, snapshot_date.isoformat(), run_id, started, counts)
    return counts
