"""The one staging and merge recipe of the loads: COPY or quarantine, then merge by a :class:`MergeSpec`.

Every load (stores, orders, inventory) stages its valid rows with :func:`copy_or_quarantine` (a
value PostgreSQL refuses costs only its own record, which is quarantined with the reason) and then
merges them with :meth:`MergeSpec.merge`: under the spec's advisory lock, in key order, a held row
replaced only where the spec's accept rule says the staged version wins. The SQL is in
``sql/merge/`` (``upsert.sql``, the accept rules ``newer_wins.sql`` and ``not_older.sql``,
``children.sql``, ``resolve_quarantine.sql``); the specs (:data:`STORES`, :data:`ORDERS`,
:data:`INVENTORY`) declare what differs per table. See docs/warehouse.md.
"""

from __future__ import annotations

import json
import logging
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg import sql

from taptouch_resource.errors import storable_text

from . import records
from .db import first_value, one_row
from .embedded import project_root

log = logging.getLogger(__name__)


def merge_dir() -> Path:
    """``sql/merge/``: the recipe's SQL files."""
    return project_root() / "sql" / "merge"


@cache
def merge_sql(name: str) -> str:
    """``sql/merge/<name>.sql`` without its comment lines."""
    text = (merge_dir() / f"{name}.sql").read_text(encoding="utf-8")
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--")).strip()


def _names(cols: Iterable[str], prefix: str | None = None) -> sql.Composable:
    if prefix is None:
        return sql.SQL(", ").join(map(sql.Identifier, cols))
    return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(prefix), sql.Identifier(c)) for c in cols)


def _table(name: str) -> sql.Composable:
    return sql.Identifier(*name.split("."))


# ------------------------------------------------------------------------------------------------
# staging: COPY, or quarantine what PostgreSQL refuses


def copy_rows(cur: psycopg.Cursor, table: str, cols: Sequence[str], rows: Iterable[tuple]) -> None:
    """COPY row tuples (psycopg formats them) into ``table``."""
    stmt = sql.SQL("copy {} ({}) from stdin").format(sql.Identifier(table), _names(cols))
    with cur.copy(stmt) as cp:
        for r in rows:
            cp.write_row(r)


def copy_parts(cur: psycopg.Cursor, table: str, cols: Sequence[str], parts: list) -> None:
    """COPY a mix of pre-formatted text lines (str) and lists of row tuples (psycopg formats them)."""
    stmt = sql.SQL("copy {} ({}) from stdin").format(sql.Identifier(table), _names(cols))
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


def is_data_error(exc: psycopg.Error) -> bool:
    """PostgreSQL refused a value (a record's fault), as opposed to a lost connection, a crash, a
    deadlock or a cancel (the infrastructure's fault, which must fail the load)."""
    state = exc.sqlstate or ""
    return bool(state) and not state.startswith(("08", "40", "53", "57", "58", "XX", "25"))


class Quarantine:
    """The records of one load that break a rule, written to ``taptouch.quarantine`` by :meth:`flush`
    with their reason and raw form."""

    def __init__(self, entity: str, window: str | None, run_id: str | None):
        self.entity = entity
        self.window = window
        self.run_id = run_id
        self.rows: list[tuple] = []

    def add(self, raw: Any, reason: str, store_id: int | None) -> None:
        candidate, text = records.quarantine_forms(raw)
        key = records.record_key(self.entity, raw)
        reason = storable_text(reason[:2000])
        version = records.record_version(raw)  # only a valid version at least as new resolves the row
        self.rows.append((self.entity, key, store_id, reason, candidate, text, self.window, self.run_id, version))
        log.warning("quarantined %s %s (store %s): %s", self.entity, key or "(no id)", store_id, reason)

    def refused(self, raw: Any, store_id: int | None, exc: psycopg.Error) -> None:
        """Quarantine a record whose row PostgreSQL refused, with the precise reason when the record
        boundary can name one, else PostgreSQL's."""
        precise = records.deep_reason(records.as_bytes(raw), self.entity)
        diag = (exc.diag.message_primary or str(exc)).strip()
        self.add(raw, precise or f"PostgreSQL refused a value of the {self.entity} record: {diag}", store_id)

    _PARKED = "parked_quarantine"
    _PARKED_COLS = ("e", "k", "s", "r", "j", "t", "w", "u", "n")

    def park(self, cur: psycopg.Cursor) -> None:
        """Move the rows added so far out of memory into a temporary table of the transaction, for
        :meth:`flush` to write. A load that stages outside its table's merge lock parks them: writing
        ``taptouch.quarantine`` then (refreshing an open row) would hold a row that a writer holding
        the merge lock (another load's resolve, forget-customer) may wait for while this load waits
        for that lock, a deadlock."""
        if not self.rows:
            return
        cur.execute(
            f"create temp table if not exists {self._PARKED} (seq bigserial, e text, k text, s bigint, r text,"
            " j text, t text, w text, u text, n numeric) on commit drop"
        )
        copy_rows(cur, self._PARKED, self._PARKED_COLS, self.rows)
        self.rows = []

    def _unpark(self, cur: psycopg.Cursor, chunk: int = 500) -> Iterator[list[tuple]]:
        """The parked rows in the order they were added, ``chunk`` at a time (the table emptied)."""
        cur.execute(f"select to_regclass('pg_temp.{self._PARKED}') is not null")
        if not first_value(cur):
            return
        while True:
            cur.execute(
                f"delete from {self._PARKED} where seq in (select seq from {self._PARKED} order by seq limit %s)"
                f" returning seq, {', '.join(self._PARKED_COLS)}",
                (chunk,),
            )
            rows = [tuple(r[1:]) for r in sorted(cur.fetchall())]
            if not rows:
                return
            yield rows

    def flush(self, cur: psycopg.Cursor, *, resolved: bool = False) -> None:
        """Write the rows added (those parked first). ``resolved``: kept, but resolved at once (a
        newer load superseded them)."""
        rows = self.rows
        for parked in self._unpark(cur):
            self.rows = parked
            self._write(cur, resolved)
        self.rows = rows
        self._write(cur, resolved)

    def _write(self, cur: psycopg.Cursor, resolved: bool) -> None:
        # raw: the record as jsonb when PostgreSQL can hold it (a NUL shown as the text \u0000), else
        # null and the text in raw_text. try_jsonb never raises: a quarantine row always lands.
        # A record refused again exactly as an open row of its window holds it (every hourly
        # inventory run, on any day, a window's reload) is that row seen again: its run, reason,
        # quarantined_at and window become this load's, and no second open row is written.
        if self.rows:
            cur.executemany(
                "with x as (select %s::text e, %s::text k, %s::bigint s, %s::text r, taptouch.try_jsonb(%s::text) j,"
                " %s::text t, %s::text w, %s::text u, %s::numeric n, %s::boolean v, %s::text f, %s::bigint c),"
                " seen as (update taptouch.quarantine o set quarantined_at = now(), run_id = x.u, reason = x.r,"
                ' "window" = x.w from x where not x.v and o.resolved_at is null and o.entity = x.e'
                " and o.record_key is not distinct from x.k and o.store_id is not distinct from x.s"
                # an inventory load's window is its snapshot date: the same record refused the next
                # day is the same open row (its window becomes the latest day's)
                " and (o.\"window\" is not distinct from x.w or x.e = 'inventory')"
                " and (o.raw = x.j or (o.raw is null and x.j is null and (o.raw_text = x.t or (o.raw_text = x.f"
                " and exists (select 1 from taptouch.forgotten_customers fc where fc.customer_id = x.c))))"
                " or (o.entity = 'order' and " + FORGOTTEN_CUSTOMER.format(held="o.raw", new="x.j") + "))"
                " returning 1)"
                " insert into taptouch.quarantine"
                ' (entity, record_key, store_id, reason, raw, raw_text, "window", run_id, updated_at_exact,'
                " resolved_at)"
                " select e, k, s, r, j, case when j is null then t end, w, u, n, case when v then now() end from x"
                " where not exists (select 1 from seen)",
                [(*row, resolved, *_forgotten_text(row[0], row[5])) for row in self.rows],
            )
            self.rows = []


def _forgotten_text(entity: str, text: str | None) -> tuple[str | None, int | None]:
    """A record held as text (no jsonb) as forget-customer would have rewritten it, and its
    customer's id; (None, None) when it names no customer to forget."""
    if entity != "order" or not text:
        return None, None
    return forgotten_text(text)


def forgotten_text(text: str) -> tuple[str | None, int | None]:
    """``text`` (a record held as text) as :func:`.forget._forget_in_raw_text` rewrites it, and the
    customer's id (a whole number, or a string of one); (None, None) when it names no such customer."""
    try:
        record = json.loads(text, parse_float=Decimal)
    except (ValueError, RecursionError):
        return None, None
    customer = record.get("customer") if isinstance(record, dict) else None
    if not isinstance(customer, dict) or "id" not in customer or set(customer) <= {"id"}:
        return None, None
    cid = customer["id"]
    text_id = cid.strip() if isinstance(cid, str) else None if isinstance(cid, bool) else cid
    try:
        number = int(text_id) if isinstance(text_id, (int, str)) and str(text_id).isascii() else None
    except ValueError:
        number = None
    if number is None or not 0 <= number < 2**63:
        return None, None
    record["customer"] = {"id": cid}
    return dump_record(record), number


_ENCODER = msgspec.json.Encoder(decimal_format="number")


def dump_record(record: dict) -> str:
    """The record as JSON text, numbers with their own digits; a text msgspec cannot encode (a lone
    surrogate) through ``json`` (every character escaped; numbers then as strings)."""
    try:
        return _ENCODER.encode(record).decode("utf-8")
    except (UnicodeError, msgspec.EncodeError):
        return json.dumps(record, default=str)


def copy_or_quarantine(
    cur: psycopg.Cursor,
    units: list,
    copy: Callable[[list], None],
    quarantine: Quarantine,
    raw_of: Callable[[Any], tuple[Any, int | None]],
) -> list:
    """Stage ``units`` (rows, or one record's rows each) with ``copy(units)`` under a savepoint. If
    PostgreSQL refuses a value, stage them one by one, each under its own savepoint, and quarantine
    exactly the refused ones (``raw_of(unit)`` -> (raw record, store id)). Returns the refused units.
    Any other database error (a lost connection, a cancel) propagates and fails the load."""
    if not units:
        return []
    try:
        with cur.connection.transaction():
            copy(units)
        return []
    except psycopg.Error as exc:
        if not is_data_error(exc):
            raise
    refused = []
    for unit in units:
        try:
            with cur.connection.transaction():
                copy([unit])
        except psycopg.Error as exc:
            if not is_data_error(exc):
                raise
            raw, store_id = raw_of(unit)
            quarantine.refused(raw, store_id, exc)
            refused.append(unit)
    return refused


# ------------------------------------------------------------------------------------------------
# foreign keys the merge proves itself

_MAY_SKIP: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def may_skip_reference_checks(cur: psycopg.Cursor) -> bool:
    """Whether this session may set ``session_replication_role`` (a superuser, or a role granted
    ``SET ON PARAMETER session_replication_role``, PostgreSQL 15+). Asked once per connection."""
    conn = cur.connection
    known = _MAY_SKIP.get(conn)
    if known is None:
        granted = (
            " or has_parameter_privilege('session_replication_role', 'SET')"
            if conn.info.server_version >= 150000
            else ""
        )
        cur.execute("select current_setting('is_superuser') = 'on'" + granted)
        known = _MAY_SKIP[conn] = bool(first_value(cur))
    return known


@contextmanager
def references_proven(cur: psycopg.Cursor) -> Iterator[None]:
    """Statements run inside write only rows whose foreign keys the transaction proves itself: each
    row's referenced row was written or locked by this same transaction and is joined in the
    statement that writes it (a merged order's children, a locked proof's set). Their per-row
    foreign-key checks (one index probe and row lock per row, a third of a child insert's cost) are
    skipped: the session's ``session_replication_role`` is ``replica`` inside, when it may set it
    (:func:`may_skip_reference_checks`), which skips every ordinary trigger of the tables written
    inside (the child tables have none but their foreign keys'; a trigger that must fire there too
    is created ``ENABLE ALWAYS``). Without the privilege the checks run as usual. The constraints
    stay declared and hold for every other writer. ``SET LOCAL``: an error inside reverts it with
    the transaction (or the savepoint)."""
    if not may_skip_reference_checks(cur):
        yield
        return
    cur.execute("set local session_replication_role = replica")
    yield
    cur.execute("set local session_replication_role = origin")


# ------------------------------------------------------------------------------------------------
# merging


@dataclass(frozen=True)
class Child:
    """A child table replaced with its parent's accepted version (``children.sql``)."""

    table: str  # taptouch.<table>
    stage: str  # its staging table (rows carry the parent's ``seq``)
    cols: tuple[str, ...]


@dataclass(frozen=True)
class MergeSpec:
    """How one table merges staged rows: what is the table's own, the recipe being shared.

    ``keys`` identify a row; ``version`` orders versions (``updated_at_exact``); ``accept`` names the
    rule (a file of ``sql/merge/``) that decides whether a staged row replaces the held one, with
    ``differs`` its test that the staged content is not the held one; ``stamp`` is set to now()
    where a row is replaced; ``lock`` names the advisory lock merges of the table take (per store
    when ``lock_per_store``); ``children`` follow the accepted version; ``entity`` and ``record_key``
    name the quarantine rows a staged record resolves."""

    table: str
    keys: tuple[str, ...]
    cols: tuple[str, ...]
    accept: str
    differs: str
    stamp: str
    lock: str
    entity: str
    record_key: str
    version: str = "updated_at_exact"
    lock_per_store: bool = False
    children: tuple[Child, ...] = ()

    @property
    def lock_key(self) -> int:
        return zlib.crc32(self.lock.encode("ascii"))

    def take_lock(self, cur: psycopg.Cursor, store_id: int | None = None) -> None:
        """The transaction-scoped advisory lock of this table's merges (re-entrant in a transaction)."""
        if self.lock_per_store:
            if store_id is None:
                raise ValueError(f"{self.table}: its merge lock is per store, and no store was given")
            cur.execute("select pg_advisory_xact_lock(%s, %s)", (self.lock_key % 2**31, store_id % 2**31))
        else:
            cur.execute("select pg_advisory_xact_lock(%s)", (self.lock_key,))

    def accept_rule(self, differs: str | None = None) -> sql.Composable:
        held = sql.SQL("coalesce(t.{v}, taptouch.exact_epoch(t.updated_at))").format(v=sql.Identifier(self.version))
        return sql.SQL(merge_sql(self.accept)).format(
            version=sql.Identifier(self.version), held=held, differs=sql.SQL(differs or self.differs)
        )

    def merge(
        self,
        cur: psycopg.Cursor,
        source: str,
        *,
        into: str,
        cols: Sequence[str] | None = None,
        returned: Sequence[str] = (),
        carry: tuple[str, str] | None = None,
        prefix: str | None = None,
        keep: Sequence[str] = (),
        differs: str | None = None,
    ) -> None:
        """Merge the rows of ``source`` (a staging table, or a join of them) with ``upsert.sql``.
        The caller holds :meth:`take_lock`. Writes the temporary table ``into``: the keys written
        plus ``returned``, ``inserted`` (new row), and ``carry`` = (table, column) joined on the
        first key. ``cols`` (default the spec's) are the columns written, read from ``source``
        (as ``prefix.col`` when given); ``keep``: columns written only by an insert."""
        cols = tuple(cols or self.cols)
        carried: sql.Composable = sql.SQL("")
        carry_join: sql.Composable = sql.SQL("")
        if carry is not None:
            carried = sql.SQL(", {}.{}").format(sql.Identifier(carry[0]), sql.Identifier(carry[1]))
            carry_join = sql.SQL(" join {} using ({})").format(sql.Identifier(carry[0]), sql.Identifier(self.keys[0]))
        cur.execute(
            sql.SQL(merge_sql("upsert")).format(
                into=sql.Identifier(into),
                table=_table(self.table),
                cols=_names(cols),
                source=sql.SQL(source),
                source_cols=_names(cols, prefix),
                order=_names(self.keys, prefix),
                keys=_names(self.keys),
                sets=sql.SQL(", ").join(
                    sql.SQL("{c} = excluded.{c}").format(c=sql.Identifier(c))
                    for c in cols
                    if c not in self.keys and c not in keep
                ),
                stamp=sql.Identifier(self.stamp),
                accept=self.accept_rule(differs),
                returned=_names(tuple(self.keys) + tuple(returned), "t"),
                carried=carried,
                carry_join=carry_join,
            )
        )

    def merged_counts(self, cur: psycopg.Cursor, into: str, staged: str) -> tuple[int, int, int]:
        """(inserted, updated, unchanged) of a merge into ``into`` of the rows of table ``staged``."""
        cur.execute(
            sql.SQL(
                "select (select count(*) filter (where inserted) from {i}), (select count(*) from {i}),"
                " (select count(*) from {s})"
            ).format(i=sql.Identifier(into), s=sql.Identifier(staged))
        )
        inserted, written, staged_n = one_row(cur)
        return inserted, written - inserted, staged_n - written

    def replace_children(self, cur: psycopg.Cursor, accepted: str) -> None:
        """The children of the parents in ``accepted`` (with ``seq`` and ``inserted``) follow them:
        each row inserted joined to its parent, which this transaction just wrote, so the foreign
        keys are proven (:func:`references_proven`)."""
        with references_proven(cur):
            self._replace_children(cur, accepted)

    def _replace_children(self, cur: psycopg.Cursor, accepted: str) -> None:
        for child in self.children:
            cur.execute(
                sql.SQL(merge_sql("children")).format(
                    child=_table(child.table),
                    accepted=sql.Identifier(accepted),
                    parent=_table(self.table),
                    parent_key=sql.Identifier(self.keys[0]),
                    stage=sql.Identifier(child.stage),
                    cols=_names(child.cols),
                    source_cols=_names(child.cols, "s"),
                )
            )

    def resolve_quarantine(self, cur: psycopg.Cursor, staged: str, store_id: int | None = None) -> int:
        """Stamp ``resolved_at`` on the unresolved quarantine rows of the records in ``staged`` (a
        table holding the spec's keys) that the warehouse now holds in a valid version at least as
        new as the quarantined one (a row whose version cannot be read: written by an earlier
        transaction). Returns how many."""
        of_store = (
            sql.SQL("") if not self.lock_per_store else sql.SQL(" and q.store_id = {}").format(sql.Literal(store_id))
        )
        cur.execute(
            sql.SQL(merge_sql("resolve_quarantine")).format(
                staged=sql.Identifier(staged),
                table=_table(self.table),
                on_keys=sql.SQL(" and ").join(sql.SQL("t.{0} = s.{0}").format(sql.Identifier(k)) for k in self.keys),
                entity=sql.Literal(self.entity),
                record_key=sql.Identifier(self.record_key),
                of_store=of_store,
            )
        )
        return cur.rowcount


STORES = MergeSpec(
    table="taptouch.stores",
    keys=("store_id",),
    cols=records.STORE_COLS + ("updated_at_exact", "raw"),
    accept="newer_wins",
    differs="excluded.raw is distinct from t.raw",
    stamp="loaded_at",
    lock="taptouch.stores.merge",
    entity="store",
    record_key="store_id",
)

# The held record is the staged one with a forgotten customer (taptouch-sync forget-customer kept
# only the customer's id, and recorded it in taptouch.forgotten_customers): the same content, so a
# re-listing of that version (in other bytes, or against a row without a digest) does not write
# the personal fields back. A customer never forgotten is not: the API sent its id alone first.
FORGOTTEN_CUSTOMER = (
    "(case when jsonb_typeof({held} -> 'customer') = 'object' and jsonb_typeof({new} -> 'customer') = 'object'"
    " and {held} -> 'customer' = jsonb_build_object('id', {held} -> 'customer' -> 'id')"
    " and btrim({held} -> 'customer' ->> 'id') ~ '^[0-9]{{1,18}}$'"
    " then jsonb_set({new}, array['customer'], jsonb_build_object('id', {new} -> 'customer' -> 'id')) = {held}"
    " and exists (select 1 from taptouch.forgotten_customers as fc"
    " where fc.customer_id = btrim({held} -> 'customer' ->> 'id')::bigint)"
    " else false end)"
)

ORDERS = MergeSpec(
    table="taptouch.orders",
    keys=("order_id",),
    cols=records.ORDER_COLS + ("updated_at_exact", "raw", "raw_hash"),
    accept="newer_wins",
    stamp="loaded_at",
    lock="taptouch.orders.merge",
    entity="order",
    record_key="order_id",
    # the same bytes (by digest), or the same JSON in another key order, is the same content
    differs="excluded.raw_hash is distinct from t.raw_hash and excluded.raw::text is distinct from t.raw::text"
    " and not " + FORGOTTEN_CUSTOMER.format(held="t.raw", new="excluded.raw::jsonb"),
    children=(
        Child("taptouch.order_items", "stage_items", records.ITEM_COLS),
        Child("taptouch.order_payments", "stage_payments", records.PAYMENT_COLS),
        Child("taptouch.order_refunds", "stage_refunds", records.REFUND_COLS),
    ),
)

INVENTORY = MergeSpec(
    table="taptouch.inventory_levels",
    keys=("store_id", "product_id"),
    cols=records.INVENTORY_COLS + ("updated_at_exact", "raw"),
    accept="not_older",
    differs="excluded.raw is distinct from t.raw",
    stamp="synced_at",
    lock="taptouch.inventory.merge",
    lock_per_store=True,
    entity="inventory",
    record_key="product_id",
)
