"""``taptouch-sync forget-customer ID``: remove one customer's personal fields from the warehouse.

A Taptouch order names its customer as ``"customer": {"id": 901, "name": ..., "email": ...}``
(docs/api-model.md; a real API may add a phone or more). Forgetting customer 901
keeps only ``{"id": 901}`` of that object wherever the warehouse holds it: ``raw`` of
``taptouch.orders``, of every version in ``taptouch.order_history`` and of the quarantined order
records (``taptouch.quarantine``, ``raw`` or ``raw_text``), and nulls the typed columns filled from
the object (``customer_name``: every ``customer.*`` field of :data:`.entities.ORDER` but the id).
One transaction, under the orders merge lock (no load merges meanwhile). It reports how many rows
of each table changed, never a value. The id stays: it is Taptouch's key, not a personal field,
and an order's ``customer_id`` keeps joining to it.

``orders.raw_hash`` (a digest of the bytes the API sent) is kept, so a re-listing of the same
version is still recognised as unchanged and does not bring the fields back. A *new* version of
one of the customer's orders (an edit at the source) carries them again: erase the customer in
Taptouch too, or run the command again after such an edit.
"""

from __future__ import annotations

import json
from decimal import Decimal

import psycopg
from psycopg import sql

from .entities import ORDER
from .merge import ORDERS, dump_record

# the typed order columns filled from the customer object, besides the id
PERSONAL_COLUMNS = tuple(
    f.column for f in ORDER.fields if f.column and f.path and f.path.startswith("customer.") and f.path != "customer.id"
)

# the record names the customer and holds more of it than its id (a case: "-" on a non-object raises)
# The id as the API should send it (a number), or as a string: the loader quarantines a record
# whose customer.id is a string ("901"), and the quarantine is where such a record is kept.
_OF_CUSTOMER = (
    "case when jsonb_typeof(raw -> 'customer') = 'object' and (raw -> 'customer' -> 'id' = to_jsonb(%(id)s::bigint)"
    " or (jsonb_typeof(raw -> 'customer' -> 'id') = 'string' and btrim(raw -> 'customer' ->> 'id') = %(id)s::text))"
    " then (raw -> 'customer') - 'id' <> '{}'::jsonb else false end"
)
_KEEP_ID = "jsonb_set(raw, '{customer}', jsonb_build_object('id', raw -> 'customer' -> 'id'))"


def forget_customer(conn: psycopg.Connection, customer_id: int) -> dict[str, int]:
    """Remove customer ``customer_id``'s personal fields everywhere (module docstring), in one
    transaction. Returns the rows changed per table (``taptouch.orders``, ``taptouch.order_history``,
    ``taptouch.quarantine``); 0 everywhere when there was nothing (left) to remove."""
    with conn.transaction(), conn.cursor() as cur:
        ORDERS.take_lock(cur)
        changed = _forget(cur, customer_id)
        # what tells a re-listing of a forgotten version from an order the API sent with the id alone
        cur.execute(
            "insert into taptouch.forgotten_customers (customer_id) values (%s) on conflict do nothing", (customer_id,)
        )
    return changed


def forgotten(cur: psycopg.Cursor) -> frozenset[int]:
    """The customers forget-customer has forgotten (``taptouch.forgotten_customers``)."""
    return frozenset(r[0] for r in cur.execute("select customer_id from taptouch.forgotten_customers").fetchall())


def forget_again(cur: psycopg.Cursor, known: frozenset[int]) -> dict[int, dict[str, int]]:
    """A load's merge, holding the orders merge lock, before its commit: the customers forgotten
    since ``known`` was read (:func:`forgotten`, before the load listed) are forgotten again in what
    the load wrote (its orders, history versions and quarantine rows were listed before the command
    committed, and it could not see them): the orders it merged (temporary table ``accepted``), the
    versions it staged (``stage_orders``) and the quarantine rows this transaction wrote. What
    another load wrote since the forget (a new version, an edit at the source: docs/operating.md)
    keeps its fields. Returns customer id -> rows changed per table."""
    return {cid: _forget(cur, cid, scoped=True) for cid in sorted(forgotten(cur) - known)}


# forget_again's scope: what the load's own transaction wrote
_OF_LOAD_ORDERS = " and order_id in (select order_id from accepted)"
_OF_LOAD_HISTORY = " and (order_id, version) in (select order_id, updated_at_exact from stage_orders)"
_OF_LOAD_QUARANTINE = " and quarantined_at = now()"  # inserted or refreshed by this transaction


def _forget(cur: psycopg.Cursor, customer_id: int, *, scoped: bool = False) -> dict[str, int]:
    """The customer's personal fields removed, in the caller's transaction (under the orders merge
    lock). ``scoped``: only in what the caller's load wrote (:func:`forget_again`)."""
    changed: dict[str, int] = {}
    params = {"id": customer_id}
    cur.execute(_orders_statement(_OF_LOAD_ORDERS if scoped else ""), params)
    changed["taptouch.orders"] = cur.rowcount
    cur.execute(
        "update taptouch.order_history set raw = "
        + _KEEP_ID
        + " where "
        + _OF_CUSTOMER
        + (_OF_LOAD_HISTORY if scoped else ""),
        params,
    )
    changed["taptouch.order_history"] = cur.rowcount
    quarantine = _OF_LOAD_QUARANTINE if scoped else ""
    cur.execute(
        "update taptouch.quarantine set raw = " + _KEEP_ID + " where entity = 'order' and " + _OF_CUSTOMER + quarantine,
        params,
    )
    changed["taptouch.quarantine"] = cur.rowcount + _forget_in_raw_text(cur, customer_id, quarantine)
    return changed


def _orders_statement(scope: str = "") -> sql.Composed:
    """The update of ``taptouch.orders``: raw keeps only the customer's id, the typed personal
    columns are nulled, on the customer's orders that still hold one of them (``scope``: a further
    condition, forget_again's)."""
    typed = [sql.Identifier(c) for c in PERSONAL_COLUMNS]
    return sql.Composed(
        [
            sql.SQL(
                "update taptouch.orders set raw = case when " + _OF_CUSTOMER + " then " + _KEEP_ID + " else raw end"
            ),
            *[sql.SQL(", {} = null").format(c) for c in typed],
            sql.SQL(
                " where (customer_id = %(id)s or raw -> 'customer' -> 'id' = to_jsonb(%(id)s::bigint)) and (("
                + _OF_CUSTOMER
                + ")"
            ),
            *[sql.SQL(" or {} is not null").format(c) for c in typed],
            sql.SQL(")" + scope),
        ]
    )


def _forget_in_raw_text(cur: psycopg.Cursor, customer_id: int, scope: str = "") -> int:
    """Quarantined order records PostgreSQL could not hold as jsonb (kept as text): those that parse
    as JSON and name the customer lose its fields too. Returns how many changed."""
    cur.execute(
        "select quarantine_id, raw_text from taptouch.quarantine where entity = 'order' and raw is null"
        " and raw_text like %s" + scope,
        (f"%{customer_id}%",),
    )
    changed = 0
    for quarantine_id, text in cur.fetchall():
        try:
            record = json.loads(text, parse_float=Decimal)
        except (ValueError, RecursionError):
            continue  # not JSON: nothing can be told apart in it
        customer = record.get("customer") if isinstance(record, dict) else None
        if not isinstance(customer, dict) or not _names(customer.get("id"), customer_id) or set(customer) <= {"id"}:
            continue
        record["customer"] = {"id": customer["id"]}
        cur.execute(
            "update taptouch.quarantine set raw_text = %s where quarantine_id = %s",
            (dump_record(record), quarantine_id),
        )
        changed += 1
    return changed


def _names(value: object, customer_id: int) -> bool:
    """Whether a record's ``customer.id`` names ``customer_id``: as a number, or as a string of it."""
    if isinstance(value, str):
        return value.strip() == str(customer_id)
    return not isinstance(value, bool) and value == customer_id
