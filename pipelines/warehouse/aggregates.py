"""Sales aggregates per store and business date, kept current by the loads (migration 0018).

The analysts' views ``daily_store_sales``, ``hourly_sales``, ``channel_mix``, ``payment_mix`` and
``product_sales`` read five tables of schema ``taptouch`` (``sales_days``, ``sales_hours``,
``sales_channels``, ``sales_payments``, ``sales_products``) that hold, per (store_id,
business_date), exactly the rows of the view's grouping. A store-day's rows are recomputed whole,
set-based, from ``taptouch.orders`` and its children (:func:`recompute`), or, for orders new to the
warehouse, their sales are added to them from the load's staged rows (:func:`add_staged`: every
column is a count or a sum over distinct orders), in the transaction that changed its orders and
under the orders merge lock:

- the orders merge (:meth:`.loader.OrderWindowLoad.finish`) recomputes the store-days of the
  orders it replaced, at their old and new business dates (:func:`note_held`, :func:`note_merged`),
  and adds the orders it inserted to the other store-days they are on (:func:`add_staged`);
- a deletion confirmed, or an order restored, by a listing (:mod:`.deletions`) recomputes its
  order's store-day (:func:`refresh_orders`);
- a re-derivation of business dates for whole stores (a corrected zone or day start, in
  :mod:`.derived`) recomputes every day of the stores concerned (:func:`refresh_store_days`);
- ``rebuild`` (:mod:`.rebuild`) recomputes the store-days of each batch of orders it re-derives
  from ``raw``, and of the quarantined orders it merges.

:func:`mismatches` compares the tables with a from-scratch recomputation (the orders asset's check
and the tests). docs/warehouse.md, "Sales aggregates".
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg
import psycopg
from psycopg import sql

from .db import first_value, index_joins

TABLES = ("sales_days", "sales_hours", "sales_channels", "sales_payments", "sales_products")
KEYS = "agg_keys"  # the temporary table of (store_id, business_date) keys to recompute

# The sales orders of the keys, one row each, with the order's refunds (as analytics.sales_orders).
_SALES = """
create temp table {into} on commit drop as
select
    orders.order_id, orders.store_id, orders.business_date, orders.account::text as account,
    extract(hour from orders.created_at at time zone taptouch.pg_zone(stores.timezone))::integer as local_hour,
    orders.source, orders.fulfillment_type, orders.subtotal, orders.discount, orders.total, orders.tax,
    coalesce((select sum(r.amount) from taptouch.order_refunds as r where r.order_id = orders.order_id), 0)
        as refunds
from (select distinct store_id, business_date from {keys}) as keys
join taptouch.orders as orders using (store_id, business_date)
left join taptouch.stores as stores on stores.store_id = orders.store_id
where orders.status in ('completed', 'partially_refunded', 'refunded') and orders.deleted_at is null
"""

# Each table's rows from the sales orders of {sales}: the views' groupings (same as migration 0018).
_ROWS = {
    "sales_days": """
select store_id, business_date, account, count(*), sum(subtotal), sum(discount), sum(refunds),
       sum(total - refunds), sum(tax), sum(total)
from {sales} group by store_id, business_date, account""",
    "sales_hours": """
select store_id, business_date, local_hour, account, count(*), sum(refunds), sum(total - refunds)
from {sales} group by store_id, business_date, local_hour, account""",
    "sales_channels": """
select store_id, business_date, source, fulfillment_type, account, count(*), sum(refunds), sum(total - refunds)
from {sales} group by store_id, business_date, source, fulfillment_type, account""",
    "sales_payments": """
select sales.store_id, sales.business_date, payments.method, sales.account, count(*), sum(payments.amount),
       sum(payments.surcharge), sum(payments.tip)
from {payments} as payments join {sales} as sales using ({link})
group by sales.store_id, sales.business_date, payments.method, sales.account""",
    "sales_products": """
select sales.store_id, sales.business_date, items.product_id, items.name, items.category, sales.account,
       count(distinct items.order_id), sum(items.quantity), sum(items.total), sum(items.discount),
       coalesce(sum(modifiers.revenue), 0)
from {items} as items
join {sales} as sales using ({link})
left join lateral (
    select sum(items.quantity * (modifier ->> 'price')::numeric * coalesce((modifier ->> 'quantity')::numeric, 1))
        as revenue
    from jsonb_array_elements(items.modifiers) as modifier
) as modifiers on true
group by sales.store_id, sales.business_date, items.product_id, items.name, items.category, sales.account""",
}


# Each table's columns in table order (what _ROWS select): the grouping, up to ``account``, then
# the counts and sums, every one of them additive over distinct orders (add_staged).
COLUMNS = {
    "sales_days": (
        "store_id", "business_date", "account",
        "order_count", "gross_sales", "discounts", "refunds", "net_sales", "tax", "total",
    ),
    "sales_hours": ("store_id", "business_date", "local_hour", "account", "order_count", "refunds", "net_sales"),
    "sales_channels": (
        "store_id", "business_date", "source", "fulfillment_type", "account", "order_count", "refunds", "net_sales",
    ),
    "sales_payments": (
        "store_id", "business_date", "method", "account", "payment_count", "amount", "surcharges", "tips",
    ),
    "sales_products": (
        "store_id", "business_date", "product_id", "product_name", "category", "account",
        "order_count", "units", "net_item_sales", "item_discounts", "modifier_revenue",
    ),
}  # fmt: skip


def _rows(table: str, sales: str, *, staged: bool = False) -> str:
    """The query of ``table``'s rows from the sales orders of temporary table ``sales``, their
    payments and items read from the warehouse (linked by ``order_id``), or (``staged``) from the
    orders load's staging tables (linked by the staging ``seq``)."""
    if staged:
        return _ROWS[table].format(sales=sales, payments="stage_payments", items="stage_items", link="seq")
    return _ROWS[table].format(
        sales=sales, payments="taptouch.order_payments", items="taptouch.order_items", link="order_id"
    )


def _keys(cur: psycopg.Cursor) -> None:
    cur.execute(f"create temp table if not exists {KEYS} (store_id bigint, business_date date) on commit drop")


def note_keys(cur: psycopg.Cursor, select: str, params: tuple | dict | None = None) -> None:
    """Add the (store_id, business_date) rows of query ``select`` to the keys to recompute."""
    _keys(cur)
    cur.execute(f"insert into {KEYS} (store_id, business_date) " + select, params)


# the orders' store-days by primary key lookups (a join would let the planner scan every order)
_OF_ORDERS = (
    "select store_id, business_date from taptouch.orders where order_id = any(array(select order_id from {ids}))"
)


def note_held(cur: psycopg.Cursor, staged: str) -> None:
    """Before a merge: the store-days the held versions of the orders of table ``staged`` (with
    ``order_id``) are on (an edit may move an order to another day)."""
    note_keys(cur, _OF_ORDERS.format(ids=staged))


def note_merged(cur: psycopg.Cursor, accepted: str, *, replaced_only: bool = False) -> None:
    """After a merge: the store-days the accepted orders of table ``accepted`` are on now; with
    ``replaced_only``, only those of the orders that replaced a held version (``not inserted``:
    the new ones are added by :func:`add_staged`)."""
    ids = f"(select order_id from {accepted} where not inserted) as replaced" if replaced_only else accepted
    note_keys(cur, _OF_ORDERS.format(ids=ids))


# The sales orders among the orders a merge inserted (temporary table {accepted}: seq, inserted),
# read from the staging tables (same columns as _SALES, plus seq), on a store-day not noted in the
# keys (those are recomputed whole). A staged order is never deleted (the load stages no deleted_at).
_STAGED_SALES = """
create temp table {into} on commit drop as
select
    s.order_id, s.store_id, s.business_date, s.account::text as account,
    extract(hour from s.created_at at time zone taptouch.pg_zone(stores.timezone))::integer as local_hour,
    s.source, s.fulfillment_type, s.subtotal, s.discount, s.total, s.tax,
    coalesce(r.refunds, 0) as refunds, s.seq
from {accepted} as a
join stage_orders as s on s.seq = a.seq
left join taptouch.stores as stores on stores.store_id = s.store_id
left join (select seq, sum(amount) as refunds from stage_refunds group by seq) as r on r.seq = s.seq
where a.inserted and s.status in ('completed', 'partially_refunded', 'refunded')
  and not exists (select from {keys} as k where k.store_id = s.store_id and k.business_date = s.business_date)
"""

# A table's rows of the store-days in {added}: the rows held, and the added ones, summed per group.
_ADD = """
with added as ({rows}),
held as (
    delete from taptouch.{table} as t using (select distinct store_id, business_date from added) as k
    where t.store_id = k.store_id and t.business_date = k.business_date
    returning {held}
)
insert into taptouch.{table} ({cols})
select {group}, {sums} from (select * from held union all select * from added) as u ({cols}) group by {group}
"""


def add_staged(cur: psycopg.Cursor, accepted: str) -> int:
    """Add the sales of the orders an orders merge just inserted (rows of temporary table
    ``accepted`` with ``inserted``, their rows still in the load's staging tables ``stage_orders``,
    ``stage_payments``, ``stage_items``, ``stage_refunds``, linked by ``seq``) to the aggregates of
    their store-days, except the store-days noted in the keys (:func:`recompute` recomputes those
    whole, from the warehouse). Exact: every aggregate column is a count or a sum over distinct
    orders (``sales_products.order_count`` counts distinct orders too), an inserted order was in no
    store-day's rows before, and its staged rows are the ones the merge wrote; so a store-day's rows
    held plus the new orders' rows, summed per group, are its rows recomputed whole. Call it in the
    merge's transaction, holding the orders merge lock, before :func:`recompute`, and only when the
    merge changed no business date after staging (``derived.follow_store_zones``). Returns the
    sales orders added."""
    _keys(cur)
    cur.execute("drop table if exists pg_temp.agg_staged")
    cur.execute(_STAGED_SALES.format(into="agg_staged", accepted=accepted, keys=KEYS))
    added = cur.rowcount
    if added:
        for table in TABLES:
            cols = COLUMNS[table]
            group = cols[: cols.index("account") + 1]
            cur.execute(
                _ADD.format(
                    rows=_rows(table, "agg_staged", staged=True),
                    table=table,
                    cols=", ".join(cols),
                    held=", ".join(f"t.{c}" for c in cols),
                    group=", ".join(group),
                    sums=", ".join(f"sum({c})" for c in cols[len(group) :]),
                )
            )
    return added


def recompute(cur: psycopg.Cursor) -> int:
    """Recompute the aggregates of every (store_id, business_date) noted in the keys table, from
    the orders and their children, and empty the keys. Set-based: one statement per table, plus
    the sales orders of the keys. Call inside the transaction that changed the orders, holding the
    orders merge lock (store-days are not recomputed concurrently). Returns the store-days."""
    _keys(cur)
    cur.execute(f"select count(*) from (select distinct store_id, business_date from {KEYS}) k")
    days = first_value(cur)
    if days:
        cur.execute(f"analyze {KEYS}")
        cur.execute("drop table if exists pg_temp.agg_sales")
        cur.execute(_SALES.format(into="agg_sales", keys=KEYS))
        cur.execute("analyze agg_sales")
        with index_joins(cur):
            for table in TABLES:
                cur.execute(
                    sql.SQL(
                        "delete from {} t using (select distinct store_id, business_date from {}) k"
                        " where t.store_id = k.store_id and t.business_date = k.business_date"
                    ).format(sql.Identifier("taptouch", table), sql.Identifier(KEYS))
                )
                cur.execute(f"insert into taptouch.{table} " + _rows(table, "agg_sales"))
    cur.execute(f"delete from {KEYS}")  # (a truncate would give the temp table a new file each time)
    return days


def refresh_orders(cur: psycopg.Cursor, order_ids: Iterable[int]) -> int:
    """Recompute the store-days of these orders (e.g. just marked deleted, or restored)."""
    ids = sorted(set(order_ids))
    if not ids:
        return 0
    note_keys(cur, "select store_id, business_date from taptouch.orders where order_id = any(%s)", (ids,))
    return recompute(cur)


def refresh_store_days(cur: psycopg.Cursor, store_ids: Iterable[int]) -> int:
    """Recompute every business date of these stores: their aggregates are replaced by those of
    the days their orders are on now (for use after business dates were re-derived, under the
    orders merge lock). Inside a transaction. Returns the store-days recomputed."""
    ids = sorted(set(store_ids))
    if not ids:
        return 0
    for table in TABLES:  # the days they were on before the re-derivation go too
        cur.execute(
            sql.SQL("delete from {} where store_id = any(%s)").format(sql.Identifier("taptouch", table)), (ids,)
        )
    note_keys(cur, "select distinct store_id, business_date from taptouch.orders where store_id = any(%s)", (ids,))
    return recompute(cur)


def mismatches(
    cur: psycopg.Cursor, scope: str | None = None, params: dict | None = None, limit: int = 20
) -> dict[str, list[tuple]]:
    """The rows where an aggregate table and a from-scratch recomputation from the orders differ
    (``-``: held but not recomputed, ``+``: recomputed but not held), per table, at most ``limit``
    each; no entry for a table that agrees. ``scope``: a query of (store_id, business_date) keys
    to compare (with ``params``); default every store-day, held or with orders. Inside a
    transaction; changes nothing but temporary tables."""
    cur.execute("drop table if exists pg_temp.agg_check_keys")
    everything = scope is None
    if everything:
        scope = "select store_id, business_date from taptouch.orders union select store_id, business_date from taptouch.sales_days"
    cur.execute(f"create temp table agg_check_keys on commit drop as select distinct * from ({scope}) s", params)
    cur.execute("analyze agg_check_keys")
    cur.execute("drop table if exists pg_temp.agg_truth")
    cur.execute(_SALES.format(into="agg_truth", keys="agg_check_keys"))
    found: dict[str, list[tuple]] = {}
    with index_joins(cur):
        for table in TABLES:
            truth = _rows(table, "agg_truth")
            held = f"select t.* from taptouch.{table} t join agg_check_keys k using (store_id, business_date)"
            cur.execute(
                f"(select '-' as side, * from (({held}) except all ({truth})) held limit %(n)s)"
                f" union all (select '+', * from (({truth}) except all ({held})) fresh limit %(n)s)",
                {"n": limit},
            )
            rows = cur.fetchall()
            if rows:
                found[table] = rows
    return found


CHECK_NAME = "sales_aggregates_exact"
TOUCHED = """
with recursive stores (store_id) as (  -- every store id the orders hold, one index probe each
    select min(store_id) from taptouch.orders
    union all
    select (select min(o.store_id) from taptouch.orders o where o.store_id > s.store_id)
    from stores s where s.store_id is not null
)
select distinct o.store_id, o.business_date
from stores s
cross join lateral (select store_id, business_date, account from taptouch.orders
                    where store_id = s.store_id and updated_at >= %(start)s and updated_at < %(end)s) o
where (%(account)s::text is null or o.account = %(account)s)
"""
"""The (store_id, business_date) of every order (of ``%(account)s``, or of any when null) updated in
``[%(start)s, %(end)s)``: each store's range of its ``(store_id, updated_at)`` index, so the cost
follows the orders updated, not the orders held (a range over the whole index without the store
reads every entry)."""


def check_spec(asset_key, scope: str = "the run's windows") -> dg.AssetCheckSpec:
    """The check that the aggregates are exact (each run of the asset evaluates it), over the
    store-days with an order updated in ``scope``."""
    return dg.AssetCheckSpec(
        CHECK_NAME,
        asset=asset_key,
        description=f"Per store and business date with an order updated in {scope}: the sales "
        "aggregates the analytics views read (taptouch.sales_days, sales_hours, sales_channels, sales_payments, "
        "sales_products) equal a from-scratch recomputation from the orders, row for row.",
    )


def check_result(conn: psycopg.Connection, start, end, account: str | None, asset_key) -> dg.AssetCheckResult:
    """Evaluate :func:`check_spec` over the store-days with an order updated in ``[start, end)``
    (of ``account``, else of every account). Reads only."""
    outermost = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with conn.transaction(), psycopg.ClientCursor(conn) as cur:  # client-side binding: CREATE TABLE AS
        if outermost:  # one snapshot: a load committing between the recomputation and the comparison
            cur.execute("set transaction isolation level repeatable read")  # is neither half-seen
        found = mismatches(cur, TOUCHED, {"start": start, "end": end, "account": account})
        cur.execute("select count(*) from agg_check_keys")
        days = first_value(cur)
        cur.execute("drop table agg_check_keys, agg_truth")
    rows = [f"{table} {r[0]} {r[1:]}" for table, found_rows in found.items() for r in found_rows]
    return dg.AssetCheckResult(
        check_name=CHECK_NAME,
        asset_key=asset_key,
        passed=not found,
        metadata={
            "store_days_checked": days,
            "tables_differing": ", ".join(found) or "none",
            "rows": "\n".join(rows[:40]) or "none",
            "repair": "recompute the stores named: pipelines.warehouse.aggregates.refresh_store_days(cur, [store_id, ...]) "
            "in a transaction (docs/warehouse.md, 'Sales aggregates')",
        },
    )


# ------------------------------------------------------------------------------------------------
# descriptions (pipelines/warehouse/catalog.py: COMMENT ON and the Dagster column schemas)

_ACCOUNT = "the Taptouch account of the orders: its TAPTOUCH_ACCOUNTS name, 'default' for a single account"
_KEY = {
    "store_id": "the store",
    "business_date": "the orders' business date (taptouch.orders.business_date)",
}
_SALES_TEXT = "sales orders: status completed, partially_refunded or refunded, not deleted"
_NOTE = (
    "; kept current by the orders loads (pipelines/warehouse/aggregates.py): recomputed whole per "
    "store and business date, or the sales of orders new to the warehouse added; read by the analytics views"
)
_MONEY = "in the store's currency"
_ORDER_SUMS = {
    "order_count": f"number of {_SALES_TEXT}",
    "refunds": f"Σ refund amounts of those orders, {_MONEY}",
    "net_sales": f"Σ total − refunds of those orders, {_MONEY}",
}
CATALOG: dict[str, tuple[str, dict[str, str]]] = {
    "taptouch.sales_days": (
        "Sales per store, business date and account (analytics.daily_store_sales)" + _NOTE,
        {
            **_KEY,
            "account": _ACCOUNT,
            **_ORDER_SUMS,
            "gross_sales": f"Σ subtotal of those orders, {_MONEY}",
            "discounts": f"Σ order-level discount, {_MONEY}",
            "tax": f"Σ GST included in total, {_MONEY}",
            "total": f"Σ total (what customers paid), {_MONEY}",
        },
    ),
    "taptouch.sales_hours": (
        "Sales per store, business date, local hour and account (analytics.hourly_sales)" + _NOTE,
        {
            **_KEY,
            "local_hour": "0-23, the hour of created_at in the store's time zone",
            "account": _ACCOUNT,
            **_ORDER_SUMS,
        },
    ),
    "taptouch.sales_channels": (
        "Sales per store, business date, source, fulfillment type and account (analytics.channel_mix)" + _NOTE,
        {
            **_KEY,
            "source": "pos | kiosk | online | ubereats | doordash (null if unsent)",
            "fulfillment_type": "dine_in | takeaway | delivery | pickup (null if unsent)",
            "account": _ACCOUNT,
            **_ORDER_SUMS,
        },
    ),
    "taptouch.sales_payments": (
        "Payments on sales orders per store, business date, method and account (analytics.payment_mix)" + _NOTE,
        {
            **_KEY,
            "method": "the payment method as the API sends it",
            "account": _ACCOUNT,
            "payment_count": "number of payments",
            "amount": f"Σ payment amount (card surcharges included, tips not), {_MONEY}",
            "surcharges": f"Σ card surcharge inside those amounts, {_MONEY}",
            "tips": f"Σ tips given with those payments, {_MONEY}",
        },
    ),
    "taptouch.sales_products": (
        "Order lines of sales orders per store, business date, product and account (analytics.product_sales)" + _NOTE,
        {
            **_KEY,
            "product_id": "the product (null for lines without one)",
            "product_name": "order_items.name",
            "category": "order_items.category",
            "account": _ACCOUNT,
            "order_count": "sales orders with at least one line of the product",
            "units": "Σ item quantity",
            "net_item_sales": f"Σ item total, {_MONEY}",
            "item_discounts": f"Σ item-level discount, {_MONEY}",
            "modifier_revenue": f"Σ item quantity × modifier price × modifier quantity, unrounded, {_MONEY}",
        },
    ),
}
