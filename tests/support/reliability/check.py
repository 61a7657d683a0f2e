"""Warehouse == truth: compare ``taptouch.*`` with what the sandbox serves now.

``compare(conn, sb, start, end)`` looks at every store's orders with ``updated_at`` in
``[start, end)`` (the latest version of each, as the sandbox serves it) and reports, per kind, how
many rows are lost, duplicated, moved backwards or otherwise different. Malformed orders (the
sandbox's ``malformed_every`` fault) must be in ``taptouch.quarantine`` (unresolved), not lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import psycopg

from taptouch_sandbox import Sandbox

ORDER_FIELDS = ("store_id", "updated_at", "status", "subtotal", "discount", "total", "tax")
TABLES = (
    "stores",
    "orders",
    "order_items",
    "order_payments",
    "order_refunds",
    "inventory_levels",
    "inventory_snapshots",
    "quarantine",
    "sync_log",
)


@dataclass
class Diff:
    orders_expected: int = 0
    orders_found: int = 0
    quarantined_expected: int = 0
    lost: int = 0  # truth rows (orders, children, stores, stock) missing; malformed ids not quarantined
    duplicated: int = 0  # rows the truth does not have: extra ids, leftover children, repeated keys
    backwards: int = 0  # an order older than the truth's latest version
    mismatched: int = 0  # same key and version, different content
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.backwards or self.mismatched)

    def note(self, kind: str, text: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < 20:
            self.problems.append(f"{kind}: {text}")

    def __str__(self) -> str:
        head = (
            f"{self.orders_found}/{self.orders_expected} orders, lost {self.lost}, duplicated "
            f"{self.duplicated}, backwards {self.backwards}, mismatched {self.mismatched}"
        )
        return head + "".join(f"\n  {p}" for p in self.problems)


def _dt(value: str) -> datetime:
    return datetime.fromisoformat(value)


def truth_orders(sb: Sandbox, start: datetime, end: datetime) -> dict[int, dict]:
    return {o["id"]: o for sid in sb.store_ids() for o in sb.orders_in_window(sid, start, end)}


def compare(
    conn: psycopg.Connection,
    sb: Sandbox,
    start: datetime,
    end: datetime,
    *,
    stores: bool = True,
    inventory: bool = False,
) -> Diff:
    diff = Diff()
    truth = truth_orders(sb, start, end)
    malformed = sb.malformed_order_ids() & set(truth)
    valid = {k: v for k, v in truth.items() if k not in malformed}
    diff.orders_expected = len(valid)
    diff.quarantined_expected = len(malformed)
    cur = conn.cursor()

    cur.execute(
        "select order_id, count(*) over (partition by order_id), " + ", ".join(ORDER_FIELDS) + " from taptouch.orders"
    )
    found: dict[int, tuple] = {}
    for row in cur.fetchall():
        if row[1] > 1:
            diff.note("duplicated", f"order {row[0]} appears {row[1]} times")
        found[row[0]] = row[2:]
    diff.orders_found = len(found)
    for oid, o in valid.items():
        got = found.get(oid)
        if got is None:
            diff.note("lost", f"order {oid} (store {o['store_id']}) missing")
            continue
        want = (o["store_id"], _dt(o["updated_at"]), o["status"], o["subtotal"], o["discount"], o["total"], o["tax"])
        if got[1] < want[1]:
            diff.note("backwards", f"order {oid}: warehouse {got[1].isoformat()} < truth {want[1].isoformat()}")
        elif got[1] > want[1]:
            diff.note("mismatched", f"order {oid}: warehouse {got[1].isoformat()} newer than truth {o['updated_at']}")
        elif got != want:
            diff.note("mismatched", f"order {oid}: warehouse {got} != truth {want}")
    for oid in set(found) - set(valid):
        diff.note("duplicated", f"order {oid} is in the warehouse but not in the truth")

    # children: exact sets, by key and amount
    children = (
        ("order_items", "item_id", "total", "items"),
        ("order_payments", "payment_id", "amount", "payments"),
        ("order_refunds", "refund_id", "amount", "refunds"),
    )
    for table, key, amount, name in children:
        cur.execute(f"select order_id, {key}, {amount} from taptouch.{table}")  # noqa: S608 (constants)
        got_rows = cur.fetchall()
        got = {(r[0], r[1]): r[2] for r in got_rows}
        if len(got) != len(got_rows):
            diff.note("duplicated", f"{table}: {len(got_rows) - len(got)} repeated keys")
        want = {(oid, c["id"]): Decimal(c[amount]) for oid, o in valid.items() for c in o[name]}
        _compare_keyed(diff, table, want, got, extra="not in the truth's version")

    # malformed orders: quarantined with a reason, unresolved
    if malformed:
        cur.execute("select record_key, reason from taptouch.quarantine where entity = 'order' and resolved_at is null")
        quarantined = {r[0] for r in cur.fetchall() if r[1]}
        for oid in malformed:
            if str(oid) not in quarantined:
                diff.note("lost", f"malformed order {oid} neither loaded nor quarantined")

    if stores:
        cur.execute("select store_id, name, timezone, updated_at from taptouch.stores")
        got_s = {r[0]: r[1:] for r in cur.fetchall()}
        want_s = {s["id"]: (s["name"], s["timezone"], _dt(s["updated_at"])) for s in sb.stores()}
        _compare_keyed(diff, "store", want_s, got_s, extra="not in the truth")

    if inventory:
        cur.execute("select store_id, product_id, on_hand, sell_price from taptouch.inventory_levels")
        got_i = {(r[0], r[1]): (r[2], r[3]) for r in cur.fetchall()}
        want_i = {
            (sid, r["product_id"]): (Decimal(r["on_hand"]), Decimal(r["sell_price"]))
            for sid in sb.store_ids()
            for r in sb.inventory(sid)
        }
        _compare_keyed(diff, "inventory", want_i, got_i, extra="not listed by the API")
    cur.close()
    return diff


def _compare_keyed(diff: Diff, what: str, want: dict, got: dict, *, extra: str) -> None:
    """Rows keyed alike: a key only the truth has is lost, one only the warehouse has is
    duplicated (``extra`` says how), a shared key with other values is mismatched."""
    for key in sorted(want.keys() - got.keys()):
        diff.note("lost", f"{what} {key} missing")
    for key in sorted(got.keys() - want.keys()):
        diff.note("duplicated", f"{what} {key} {extra}")
    for key in sorted(want.keys() & got.keys()):
        if want[key] != got[key]:
            diff.note("mismatched", f"{what} {key}: {got[key]} != {want[key]}")


def reset(conn: psycopg.Connection) -> None:
    """Empty every ``taptouch`` table (between schedules sharing one database)."""
    conn.execute("truncate " + ", ".join(f"taptouch.{t}" for t in TABLES))
