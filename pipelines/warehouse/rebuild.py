"""``taptouch-sync rebuild``: re-derive every typed table from ``raw``, without calling the API.

Each row's ``raw`` goes through the record boundary again and only what differs is written, in
batches under the loads' advisory locks (safe to interrupt, finished by running it again); then
unresolved quarantine rows are retried with the loads' newest-wins rules (a retried version that
passes joins ``taptouch.order_history``). It never writes the loads' history (``sync_log``, marks,
snapshots), ``raw``, ``deleted_at`` or a row's account, and deletes nothing. When to use it and what it reports:
docs/operating.md, "Derived columns and rebuild".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from taptouch_resource.api import InvalidRecord

from . import aggregates, derived, history, loader, records
from .db import first_value, one_row
from .merge import FORGOTTEN_CUSTOMER, INVENTORY, ORDERS, STORES, copy_rows

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 2000

TABLES = ("stores", "orders", "order_items", "order_payments", "order_refunds", "inventory_levels")
_CHILDREN = (
    ("order_items", "item_id", records.ITEM_COLS, "items"),
    ("order_payments", "payment_id", records.PAYMENT_COLS, "payments"),
    ("order_refunds", "refund_id", records.REFUND_COLS, "refunds"),
)


@dataclass
class TableCounts:
    examined: int = 0  # rows derived from raw (children: the rows the orders' raw gives)
    changed: int = 0  # rows written because a typed value differed (children: rows added, changed or removed)
    invalid: int = 0  # rows whose raw no longer passes the record boundary (kept as they are)


@dataclass
class QuarantineCounts:
    examined: int = 0  # unresolved quarantine rows tried
    loaded: int = 0  # records inserted or updated from them
    resolved: int = 0  # quarantine rows stamped resolved_at
    still_invalid: int = 0


@dataclass
class RebuildReport:
    tables: dict[str, TableCounts] = field(default_factory=lambda: {t: TableCounts() for t in TABLES})
    quarantine: dict[str, QuarantineCounts] = field(
        default_factory=lambda: {e: QuarantineCounts() for e in ("store", "order", "inventory")}
    )
    business_dates_rederived: int = 0
    day_start_dates_rederived: int = 0  # dates re-derived because a store's business day start moved
    batches: int = 0

    @property
    def changed(self) -> int:
        return sum(t.changed for t in self.tables.values()) + sum(q.loaded for q in self.quarantine.values())

    def lines(self) -> list[str]:
        out = [f"{'table':<28}{'examined':>10}{'changed':>10}{'invalid':>10}"]
        for name, t in self.tables.items():
            out.append(f"{'taptouch.' + name:<28}{t.examined:>10}{t.changed:>10}{t.invalid:>10}")
        out.append(f"{'quarantine (unresolved)':<28}{'examined':>10}{'loaded':>10}{'resolved':>10}{'invalid':>10}")
        for entity, q in self.quarantine.items():
            out.append(f"{'  ' + entity:<28}{q.examined:>10}{q.loaded:>10}{q.resolved:>10}{q.still_invalid:>10}")
        out.append(f"business dates re-derived after a zone change: {self.business_dates_rederived}")
        out.append(f"business dates re-derived after a day start change: {self.day_start_dates_rederived}")
        return out


def rebuild(
    conn: psycopg.Connection,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[str], None] | None = None,
    day_start: timedelta | None = None,
) -> RebuildReport:
    """Re-derive ``taptouch.stores``, ``orders`` (+ children) and ``inventory_levels`` from ``raw``,
    then retry unresolved quarantine rows. ``conn`` must be in autocommit mode (each batch is its
    own transaction). ``day_start``: TAPTOUCH_BUSINESS_DAY_START; stores whose business day start
    moved (it, or their row in ``taptouch.store_business_days``) get their business dates re-derived
    first (:func:`.derived.apply_day_starts`). Returns what was examined and changed."""
    if not conn.autocommit:
        raise ValueError("rebuild needs an autocommit connection: each batch commits on its own")
    report_progress = progress or log.info
    report = RebuildReport()
    if day_start is not None:
        report.day_start_dates_rederived = sum(derived.apply_day_starts(conn, day_start).values())
    _stores(conn, report, batch_size)
    report_progress(f"stores: {report.tables['stores'].examined} examined, {report.tables['stores'].changed} changed")
    _orders(conn, report, batch_size, report_progress)
    _inventory(conn, report, batch_size)
    report_progress(
        f"inventory levels: {report.tables['inventory_levels'].examined} examined, "
        f"{report.tables['inventory_levels'].changed} changed"
    )
    _retry_stores(conn, report)
    _retry_orders(conn, report, batch_size)
    _retry_inventory(conn, report, batch_size)
    return report


# ------------------------------------------------------------------------------------------------
# helpers


def _stage(cur: psycopg.Cursor, name: str, table: str, cols: tuple[str, ...]) -> None:
    """An empty temporary table ``name`` with ``cols`` of ``taptouch.<table>`` (types only: no
    constraints, no defaults), dropped at commit."""
    cur.execute(
        sql.SQL("create temp table {} on commit drop as select {} from taptouch.{} with no data").format(
            sql.Identifier(name), sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(table)
        )
    )


def _differs(cols: tuple[str, ...], a: str, b: str) -> sql.Composable:
    """``(a.c1, ...) is distinct from (b.c1, ...)``"""
    return sql.SQL("({}) is distinct from ({})").format(
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(a), sql.Identifier(c)) for c in cols),
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(b), sql.Identifier(c)) for c in cols),
    )


def _set(cols: tuple[str, ...], src: str) -> sql.Composable:
    return sql.SQL(", ").join(
        sql.SQL("{} = {}.{}").format(sql.Identifier(c), sql.Identifier(src), sql.Identifier(c)) for c in cols
    )


def _update_changed(cur: psycopg.Cursor, table: str, stage: str, keys: tuple[str, ...], cols: tuple[str, ...]) -> int:
    """Write the staged typed values where they differ from the table's; returns rows changed."""
    values = tuple(c for c in cols if c not in keys)
    cur.execute(
        sql.SQL("update taptouch.{t} t set {sets} from {s} s where {on} and {differs}").format(
            t=sql.Identifier(table),
            s=sql.Identifier(stage),
            sets=_set(values, "s"),
            on=sql.SQL(" and ").join(sql.SQL("t.{c} = s.{c}").format(c=sql.Identifier(k)) for k in keys),
            differs=_differs(values, "t", "s"),
        )
    )
    return cur.rowcount


def _invalid(entity: str, key: Any, reason: str) -> None:
    log.warning(
        "rebuild: %s %s: its raw no longer passes the record boundary (%s); the row is kept as it is",
        entity,
        key,
        reason,
    )


# ------------------------------------------------------------------------------------------------
# stores


_STORE_STAGE_COLS = records.STORE_COLS + ("updated_at_exact",)


def _stores(conn: psycopg.Connection, report: RebuildReport, batch_size: int) -> None:
    counts = report.tables["stores"]
    last = -1
    while True:
        with conn.transaction(), conn.cursor() as cur:
            STORES.take_lock(cur)
            cur.execute(
                "select store_id, raw::text from taptouch.stores where store_id > %s order by store_id limit %s",
                (last, batch_size),
            )
            batch = cur.fetchall()
            if not batch:
                return
            report.batches += 1
            last = batch[-1][0]
            rows = []
            for store_id, raw in batch:
                try:
                    row, key, _ = records.store_row(raw.encode("utf-8"))
                except InvalidRecord as exc:
                    counts.invalid += 1
                    _invalid("store", store_id, exc.reason)
                    continue
                if row[0] != store_id:  # raw names another store: not this row's record
                    counts.invalid += 1
                    _invalid("store", store_id, f"raw has id {row[0]}")
                    continue
                rows.append(row + (key,))
            counts.examined += len(rows)
            _stage(cur, "rb_stores", "stores", _STORE_STAGE_COLS)
            copy_rows(cur, "rb_stores", _STORE_STAGE_COLS, rows)
            cur.execute(
                "select s.store_id from rb_stores s join taptouch.stores t using (store_id)"
                " where s.timezone is distinct from t.timezone"
            )
            moved = [r[0] for r in cur.fetchall()]
            if moved:
                # before the update: its trigger locks the stores' business-day coverage, which an
                # orders merge holding the orders lock waits for in its proofs (the loads' order)
                ORDERS.take_lock(cur)
            counts.changed += _update_changed(cur, "stores", "rb_stores", ("store_id",), _STORE_STAGE_COLS)
            if moved:
                report.business_dates_rederived += derived.rederive_business_dates(cur, moved, zone_changed=moved)


def _retry_stores(conn: psycopg.Connection, report: RebuildReport) -> None:
    """Unresolved store quarantine rows whose record now passes: loaded by :func:`loader.load_stores`
    itself (newest wins; it resolves their quarantine rows), per account, without a sync_log row."""
    q = report.quarantine["store"]
    with conn.cursor() as cur:
        cur.execute(
            "select account, coalesce(raw::text, raw_text) from taptouch.quarantine"
            " where entity = 'store' and resolved_at is null order by quarantine_id"
        )
        rows = cur.fetchall()
    q.examined = len(rows)
    valid: dict[str, list[bytes]] = {}
    for account, text in rows:
        raw = _exact_form(text)
        try:
            if raw is None:
                raise InvalidRecord("its stored form is not the exact record")
            records.store_row(raw)
        except InvalidRecord:
            q.still_invalid += 1
            continue
        valid.setdefault(account, []).append(raw)
    for account, raws in sorted(valid.items()):
        with _account(conn, account):
            with conn.cursor() as cur:
                cur.execute("select count(*) from taptouch.quarantine where entity = 'store' and resolved_at is null")
                before = first_value(cur)
            counts = loader.load_stores(conn, raws, history=False)
            with conn.cursor() as cur:
                cur.execute("select count(*) from taptouch.quarantine where entity = 'store' and resolved_at is null")
                q.resolved += before - first_value(cur)
        q.loaded += counts.inserted + counts.updated
        report.business_dates_rederived += counts.business_dates_rederived


class _account:
    """The session's ``taptouch.account`` (the column default of new rows) set for a block."""

    def __init__(self, conn: psycopg.Connection, account: str):
        self.conn, self.account = conn, account

    def __enter__(self) -> None:
        self.before = first_value(self.conn.execute("select current_setting('taptouch.account', true)"))
        self.conn.execute("select set_config('taptouch.account', %s, false)", (self.account,))

    def __exit__(self, *exc) -> None:
        self.conn.execute("select set_config('taptouch.account', %s, false)", (self.before or "",))


def _exact_form(text: str | None) -> bytes | None:
    """A quarantined record's bytes, when what the quarantine kept is the record itself. The jsonb
    form shows a NUL as the text ``\\u0000`` (an escaped backslash): loading it would load another
    value than the API sent, so such a row is not retried."""
    if text is None or "\\\\u0000" in text:
        return None
    return text.encode("utf-8")


# ------------------------------------------------------------------------------------------------
# orders


_ORDER_STAGE_COLS = records.ORDER_COLS + ("updated_at_exact",)


def _stage_orders(cur: psycopg.Cursor) -> None:
    _stage(cur, "rb_orders", "orders", _ORDER_STAGE_COLS)
    for table, _, cols, _ in _CHILDREN:
        _stage(cur, "rb_" + table, table, cols)


def _copy_orders(cur: psycopg.Cursor, derived_rows: list[records.OrderRows]) -> None:
    copy_rows(cur, "rb_orders", _ORDER_STAGE_COLS, [r.order + (r.updated_key,) for r in derived_rows])
    for table, _, cols, attr in _CHILDREN:
        copy_rows(cur, "rb_" + table, cols, [x for r in derived_rows for x in getattr(r, attr)])


def _replace_children(cur: psycopg.Cursor, report: RebuildReport | None, of: str) -> None:
    """The children of the orders listed in temporary table ``of`` (``order_id``) whose rows differ
    from the staged ones are replaced by them (the load's recipe), each child with its order's
    account. With ``report``: counts rows examined and changed per child table."""
    for table, child_key, cols, _ in _CHILDREN:
        stage = sql.Identifier("rb_" + table)
        t = sql.Identifier(table)
        values = tuple(c for c in cols if c not in ("order_id", child_key))
        cur.execute(
            sql.SQL(
                "create temp table rb_diff on commit drop as"
                " select coalesce(s.order_id, c.order_id) as order_id from (select * from {stage} s"
                "   where s.order_id in (select order_id from {of})) s"
                " full join (select * from taptouch.{t} c where c.order_id in (select order_id from {of})) c"
                "   on c.order_id = s.order_id and c.{k} = s.{k}"
                " where s.order_id is null or c.order_id is null or {differs}"
            ).format(
                stage=stage, t=t, of=sql.Identifier(of), k=sql.Identifier(child_key), differs=_differs(values, "c", "s")
            )
        )
        if report is not None:
            cur.execute(
                sql.SQL("select (select count(*) from {stage}), (select count(*) from rb_diff)").format(stage=stage)
            )
            examined, changed = one_row(cur)
            report.tables[table].examined += examined
            report.tables[table].changed += changed
        cur.execute(
            sql.SQL("delete from taptouch.{t} c where c.order_id in (select order_id from rb_diff)").format(t=t)
        )
        cur.execute(
            sql.SQL(
                "insert into taptouch.{t} ({cols}, account) select {scols}, o.account from {stage} s"
                " join taptouch.orders o using (order_id) where s.order_id in (select order_id from rb_diff)"
                " order by s.order_id, s.{k}"
            ).format(
                t=t,
                stage=stage,
                k=sql.Identifier(child_key),
                cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
                scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in cols),
            )
        )
        cur.execute("drop table rb_diff")


def _orders(
    conn: psycopg.Connection, report: RebuildReport, batch_size: int, report_progress: Callable[[str], None]
) -> None:
    counts = report.tables["orders"]
    last = -1
    while True:
        with conn.transaction(), conn.cursor() as cur:
            # the merge lock: no load writes an order between this batch's read and its write
            ORDERS.take_lock(cur)
            zones = loader.store_timezones(conn)
            starts = derived.dated_starts(cur)
            cur.execute(
                "select order_id, store_id, raw::text from taptouch.orders where order_id > %s"
                " order by order_id limit %s",
                (last, batch_size),
            )
            batch = cur.fetchall()
            if not batch:
                return
            report.batches += 1
            last = batch[-1][0]
            rows = []
            for order_id, store_id, raw in batch:
                tz = zones.get(store_id)
                try:
                    if tz is None:
                        raise InvalidRecord(f"store {store_id} is not in taptouch.stores (its time zone is unknown)")
                    r = records.order_rows(
                        raw.encode("utf-8"), tz, store_id, starts.get(store_id, records.NO_DAY_START)
                    )
                    if r.order_id != order_id:
                        raise InvalidRecord(f"raw has id {r.order_id}")
                except InvalidRecord as exc:
                    counts.invalid += 1
                    _invalid("order", order_id, exc.reason)
                    continue
                rows.append(r)
            counts.examined += len(rows)
            _stage_orders(cur)
            _copy_orders(cur, rows)
            aggregates.note_held(cur, "rb_orders")  # the batch's store-days, before and after: recomputed
            counts.changed += _update_changed(cur, "orders", "rb_orders", ("order_id",), _ORDER_STAGE_COLS)
            _replace_children(cur, report, "rb_orders")
            aggregates.note_merged(cur, "rb_orders")
            aggregates.recompute(cur)
        if report.batches % 50 == 0:
            report_progress(f"orders: {counts.examined} examined, {counts.changed} changed so far")
    report_progress(f"orders: {counts.examined} examined, {counts.changed} changed")


def _retry_orders(conn: psycopg.Connection, report: RebuildReport, batch_size: int) -> None:
    """Unresolved order quarantine rows whose record now passes (dated by the zone the warehouse
    holds for the store it was listed under) are merged as a load merges: the newest version wins
    (``updated_at`` at full precision; the same version only when its JSON differs), and the
    children of an accepted order are replaced. Every unresolved quarantine row of an order that
    now has a valid version is resolved, as a load resolves them."""
    q = report.quarantine["order"]
    with conn.cursor() as cur:  # a record without a readable id cannot pass the boundary
        cur.execute(
            "select count(*) from taptouch.quarantine where entity = 'order' and resolved_at is null"
            " and record_key is null"
        )
        q.examined = q.still_invalid = first_value(cur)
    last = ""
    while True:
        with conn.transaction(), conn.cursor() as cur:
            ORDERS.take_lock(cur)
            # batches of records (every unresolved row of each), so a record's newest version decides
            cur.execute(
                "select record_key from taptouch.quarantine where entity = 'order' and resolved_at is null"
                " and record_key > %s group by record_key order by record_key limit %s",
                (last, batch_size),
            )
            keys = [r[0] for r in cur.fetchall()]
            if not keys:
                return
            last = keys[-1]
            best = _newest_valid_orders(cur, keys, q)
            if best:
                _merge_retried_orders(cur, best, q)


def _newest_valid_orders(
    cur: psycopg.Cursor, keys: list[str], q: QuarantineCounts
) -> dict[int, tuple[records.OrderRows, str]]:
    """order id -> (rows, account) of the newest version that now passes among the unresolved
    quarantine rows of ``keys`` (the same version: the later quarantine row)."""
    zones = loader.store_timezones(cur.connection)
    starts = derived.dated_starts(cur)
    cur.execute(
        "select quarantine_id, store_id, account, coalesce(raw::text, raw_text) from taptouch.quarantine"
        " where entity = 'order' and resolved_at is null and record_key = any(%s)"
        " order by quarantine_id",
        (keys,),
    )
    batch = cur.fetchall()
    q.examined += len(batch)
    best: dict[int, tuple[Decimal, int, records.OrderRows, str]] = {}
    for qid, store_id, account, text in batch:
        raw = _exact_form(text)
        tz = zones.get(store_id) if store_id is not None else None
        try:
            if raw is None or tz is None:
                raise InvalidRecord("not retried")
            r = records.order_rows(raw, tz, store_id, starts.get(store_id, records.NO_DAY_START))
        except InvalidRecord:
            q.still_invalid += 1
            continue
        prev = best.get(r.order_id)
        if prev is None or (r.updated_key, qid) > prev[:2]:
            best[r.order_id] = (r.updated_key, qid, r, account)
    return {oid: (r, account) for oid, (_, _, r, account) in best.items()}


_RETRIED_ORDER_COLS = _ORDER_STAGE_COLS + ("raw", "raw_hash", "account")


def _merge_retried_orders(
    cur: psycopg.Cursor, best: dict[int, tuple[records.OrderRows, str]], q: QuarantineCounts
) -> None:
    """Merge the retried versions with the orders' merge spec (their JSON compared without a
    digest, which a retried row does not carry: ``raw_hash`` null), each new row with the account
    of its quarantine row, replace the children of the accepted ones, and resolve the quarantine."""
    _stage_orders(cur)
    cur.execute("alter table rb_orders add column raw jsonb, add column raw_hash bytea, add column account text")
    copy_rows(
        cur,
        "rb_orders",
        _RETRIED_ORDER_COLS,
        [r.order + (r.updated_key, r.raw, None, account) for r, account in best.values()],
    )
    for table, _, ccols, attr in _CHILDREN:
        copy_rows(cur, "rb_" + table, ccols, [x for r, _ in best.values() for x in getattr(r, attr)])
    aggregates.note_held(cur, "rb_orders")
    ORDERS.merge(
        cur,
        "rb_orders",
        into="rb_accepted",
        cols=_RETRIED_ORDER_COLS,
        keep=("account",),
        differs="excluded.raw::text is distinct from t.raw::text and not "
        + FORGOTTEN_CUSTOMER.format(held="t.raw", new="excluded.raw"),
    )
    q.loaded += cur.rowcount
    _replace_children(cur, None, "rb_accepted")
    history.record_retried(cur)  # the retried versions join taptouch.order_history
    aggregates.note_merged(cur, "rb_accepted")  # new orders: their store-days' aggregates count them
    aggregates.recompute(cur)
    # the rows the warehouse's version now supersedes (a newer version still refused stays open)
    q.resolved += ORDERS.resolve_quarantine(cur, "rb_orders")


# ------------------------------------------------------------------------------------------------
# inventory


_INVENTORY_STAGE_COLS = records.INVENTORY_COLS + ("updated_at_exact",)


def _inventory(conn: psycopg.Connection, report: RebuildReport, batch_size: int) -> None:
    counts = report.tables["inventory_levels"]
    with conn.cursor() as cur:
        cur.execute("select distinct store_id from taptouch.inventory_levels order by store_id")
        stores = [r[0] for r in cur.fetchall()]
    for store_id in stores:
        last = -1
        while True:
            with conn.transaction(), conn.cursor() as cur:
                INVENTORY.take_lock(cur, store_id)  # the lock of that store's inventory loads
                cur.execute(
                    "select product_id, raw::text from taptouch.inventory_levels where store_id = %s"
                    " and product_id > %s order by product_id limit %s",
                    (store_id, last, batch_size),
                )
                batch = cur.fetchall()
                if not batch:
                    break
                report.batches += 1
                last = batch[-1][0]
                rows = []
                for product_id, raw in batch:
                    try:
                        row, key, _ = records.inventory_row(raw.encode("utf-8"), store_id)
                        if row[1] != product_id:
                            raise InvalidRecord(f"raw has product_id {row[1]}")
                    except InvalidRecord as exc:
                        counts.invalid += 1
                        _invalid("inventory level", f"{store_id}/{product_id}", exc.reason)
                        continue
                    rows.append(row + (key,))
                counts.examined += len(rows)
                _stage(cur, "rb_inventory", "inventory_levels", _INVENTORY_STAGE_COLS)
                copy_rows(cur, "rb_inventory", _INVENTORY_STAGE_COLS, rows)
                counts.changed += _update_changed(
                    cur, "inventory_levels", "rb_inventory", ("store_id", "product_id"), _INVENTORY_STAGE_COLS
                )


def _retry_inventory(conn: psycopg.Connection, report: RebuildReport, batch_size: int) -> None:
    """Unresolved inventory quarantine rows whose record now passes, per store: the newest row of
    each product is merged with :func:`loader.load_inventory`'s rule (a level is replaced unless
    the warehouse's is newer). A product the store no longer holds is inserted only when no later
    inventory load of that store committed since it was quarantined (else a later listing no longer
    had it: the quarantine row stays, counted as still invalid). No snapshot is written."""
    q = report.quarantine["inventory"]
    with conn.cursor() as cur:
        cur.execute(
            "select distinct store_id from taptouch.quarantine where entity = 'inventory'"
            " and resolved_at is null and store_id is not null order by store_id"
        )
        stores = [r[0] for r in cur.fetchall()]
    cols = _INVENTORY_STAGE_COLS + ("raw", "account")
    for store_id in stores:
        with conn.transaction(), conn.cursor() as cur:
            INVENTORY.take_lock(cur, store_id)
            cur.execute(
                "select q.quarantine_id, q.account, coalesce(q.raw::text, q.raw_text),"
                " exists (select 1 from taptouch.sync_log l where l.entity = 'inventory' and l.store_id = q.store_id"
                "         and l.finished_at > q.quarantined_at)"
                " from taptouch.quarantine q where q.entity = 'inventory' and q.resolved_at is null and q.store_id = %s"
                " order by q.quarantined_at, q.quarantine_id",
                (store_id,),
            )
            batch = cur.fetchall()
            q.examined += len(batch)
            newest: dict[int, tuple] = {}
            for _qid, account, text, superseded in batch:
                raw = _exact_form(text)
                try:
                    if raw is None:
                        raise InvalidRecord("not retried")
                    row, key, text_ = records.inventory_row(raw, store_id)
                except InvalidRecord:
                    q.still_invalid += 1
                    continue
                newest[row[1]] = (row + (key, text_, account), superseded)  # later quarantine rows win
            if not newest:
                continue
            cur.execute(
                "select product_id from taptouch.inventory_levels where store_id = %s and product_id = any(%s)",
                (store_id, list(newest)),
            )
            held = {r[0] for r in cur.fetchall()}
            load = [row for pid, (row, superseded) in newest.items() if pid in held or not superseded]
            q.still_invalid += len(newest) - len(load)
            _stage(cur, "rb_inventory", "inventory_levels", _INVENTORY_STAGE_COLS + ("raw",))
            cur.execute("alter table rb_inventory add column account text")
            copy_rows(cur, "rb_inventory", cols, load)
            INVENTORY.merge(cur, "rb_inventory", into="rb_merged", cols=cols, keep=("account",))
            q.loaded += cur.rowcount
            q.resolved += INVENTORY.resolve_quarantine(cur, "rb_inventory", store_id)
