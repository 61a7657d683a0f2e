"""The money reconciliation: each store's sums per business date computed twice, once from the typed
tables and once from ``raw`` alone, compared to the cent, with the orders behind every difference.

What is compared (docs/operating.md, "The money reconciliation"), over the sales orders (status
completed, partially_refunded or refunded, not deleted: as ``analytics.sales_orders`` counts them)
of each store and business date:

- :data:`MEASURES`: orders, gross (subtotal), discounts, surcharges, rounding, tax, total, tips,
  item totals, refunds, and payments per method (``payments.visa``, ...);
- two rules on each side: a sales order's payments equal its total (the contract's "for completed
  orders Σ payments.amount = total"; a refunded order was completed and paid first, its refunds are
  separate records, and the sandbox keeps the rule for all three statuses), and its refunds never
  exceed its total.

The raw side is generated from the declarations (:mod:`.entities`: each measure names a declared
column, whose JSON path the SQL reads from ``taptouch.orders.raw``) and reads no typed money, status
or store column. Both sides are grouped by the order's ``business_date`` (derived, not in the
record) and each side's own store id. Which store-days are checked: those with an order whose
``updated_at`` lies in the checked windows (what a load of those windows can have changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

import dagster as dg
from psycopg import sql

from .entities import ITEM, ORDER, PAYMENT, REFUND, Entity, Field

CHECK_MONEY = "money_reconciliation"
SALE_STATUSES = ("completed", "partially_refunded", "refunded")  # analytics.sales_orders' sales
LISTED = 20  # differences and rule breaks listed in the check's metadata and description
ORDERS_LISTED = 10  # orders named per difference

# (measure, column of taptouch.orders): the order's own money fields
ORDER_MEASURES = (
    ("gross", "subtotal"),
    ("discounts", "discount"),
    ("surcharges", "surcharge"),
    ("rounding", "rounding"),
    ("tax", "tax"),
    ("total", "total"),
    ("tips", "tips"),
)
# (measure, the record's JSON list, its entity, the column summed per order)
LINE_MEASURES = (("items", "items", ITEM, "total"), ("refunds", "refunds", REFUND, "amount"))
PAYMENTS = ("payments", PAYMENT, "amount", "method")  # one measure per method: payments.<method>
MEASURES = ("orders", *(m for m, _ in ORDER_MEASURES), *(m for m, *_ in LINE_MEASURES), "payments.<method>")
"""Every measure the reconciliation compares per store and business date."""


def _field(entity: Entity, column: str) -> Field:
    """The declaration of ``entity``'s ``column`` (its JSON path, its default)."""
    return next(f for f in entity.fields if f.column == column)


def _rest(f: Field) -> tuple[str, list[str]]:
    """``f``'s JSON path split into its top-level field and the path below it."""
    assert f.path is not None, f.column
    head, *rest = f.path.split(".")
    return head, rest


def _value(doc: str, f: Field) -> sql.Composable:
    """The JSON value of the declared field ``f``: in the order's record (``doc`` "r": the record's
    top-level fields as columns of ``r``) or in a line's JSON object (``doc`` "l.doc")."""
    head, rest = _rest(f)
    base: sql.Composable
    if doc == "r":
        base, path = sql.SQL("r.{}").format(sql.Identifier(head)), rest
    else:
        base, path = sql.SQL(doc), [head, *rest]
    return sql.SQL("({} #> {})").format(base, sql.Literal("{" + ",".join(path) + "}"))


def _money(doc: str, f: Field) -> sql.Composable:
    """The money field ``f`` as numeric (0 when absent, null or not a JSON number: the typed side
    then shows a difference)."""
    v = _value(doc, f)
    return sql.SQL("coalesce(case when jsonb_typeof({v}) = 'number' then ({v} #>> '{{}}')::numeric end, 0)").format(v=v)


def _text(doc: str, f: Field) -> sql.Composable:
    return sql.SQL("({} #>> '{{}}')").format(_value(doc, f))


def _lines(name: str) -> sql.Composable:
    """The elements of the order's JSON list ``name`` (none when it is not a list)."""
    col = sql.SQL("r.{}").format(sql.Identifier(name))
    return sql.SQL("jsonb_array_elements(case when jsonb_typeof({c}) = 'array' then {c} else '[]' end)").format(c=col)


def _record_columns() -> sql.Composable:
    """``r``'s columns: the top-level fields of the record the raw side reads, each as jsonb."""
    fields = [_field(ORDER, c) for c in ("store_id", "status", *(c for _, c in ORDER_MEASURES))]
    heads = dict.fromkeys([_rest(f)[0] for f in fields] + [name for _, name, *_ in LINE_MEASURES] + [PAYMENTS[0]])
    return sql.SQL(", ").join(sql.SQL("{} jsonb").format(sql.Identifier(h)) for h in heads)


def raw_side_sql() -> sql.Composable:
    """The per-order rows ``(order_id, store_id, business_date, measure, amount)`` of the sales
    orders in ``_money_scope``, from ``taptouch.orders.raw`` only (read once per order; its JSON
    paths from the declarations); ``business_date`` is the warehouse's (derived, not in the record).
    An order whose record has no integer ``store_id`` is left out (the typed side then shows it)."""
    sid = _value("r", _field(ORDER, "store_id"))
    lines = [
        sql.SQL("select {m}, coalesce(sum({e}), 0) from {lines} as l(doc)").format(
            m=sql.Literal(measure), e=_money("l.doc", _field(entity, column)), lines=_lines(name)
        )
        for measure, name, entity, column in LINE_MEASURES
    ]
    name, entity, column, by = PAYMENTS
    lines.append(
        sql.SQL("(select 'payments.' || coalesce({by}, '?'), sum({e}) from {lines} as l(doc) group by 1)").format(
            by=_text("l.doc", _field(entity, by)), e=_money("l.doc", _field(entity, column)), lines=_lines(name)
        )
    )
    values = [sql.SQL("({}, {})").format(sql.Literal(m), _money("r", _field(ORDER, c))) for m, c in ORDER_MEASURES]
    return sql.SQL(
        "select o.order_id, s.store_id, o.business_date, m.measure, m.amount from _money_scope o"
        " cross join lateral jsonb_to_record(case when jsonb_typeof(o.raw) = 'object' then o.raw else '{{}}' end)"
        " as r({columns})"
        " cross join lateral (select case when jsonb_typeof({sid}) = 'number' and ({sid} #>> '{{}}') ~ '^[0-9]{{1,18}}$'"
        " then ({sid} #>> '{{}}')::bigint end as store_id) s"
        " cross join lateral (values ('orders', 1::numeric), {values} union all {lines}) as m(measure, amount)"
        " where s.store_id is not null and {status} = any(%(sales)s)"
    ).format(
        columns=_record_columns(),
        sid=sid,
        values=sql.SQL(", ").join(values),
        lines=sql.SQL(" union all ").join(lines),
        status=_text("r", _field(ORDER, "status")),
    )


def typed_side_sql() -> sql.Composable:
    """The same rows as :func:`raw_side_sql`, from the typed columns (copied into ``_money_scope``)
    and the child tables (by their primary keys)."""
    lines = [
        sql.SQL("select {m}, coalesce(sum(l.{c}), 0) from {table} l where l.order_id = o.order_id").format(
            m=sql.Literal(measure), c=sql.Identifier(column), table=_table(entity)
        )
        for measure, _, entity, column in LINE_MEASURES
    ]
    _, entity, column, by = PAYMENTS
    lines.append(
        sql.SQL(
            "(select 'payments.' || l.{by}, sum(l.{c}) from {table} l where l.order_id = o.order_id group by 1)"
        ).format(by=sql.Identifier(by), c=sql.Identifier(column), table=_table(entity))
    )
    values = [sql.SQL("({}, o.{})").format(sql.Literal(m), sql.Identifier(c)) for m, c in ORDER_MEASURES]
    return sql.SQL(
        "select o.order_id, o.store_id, o.business_date, m.measure, m.amount from _money_scope o"
        " cross join lateral (values ('orders', 1::numeric), {values} union all {lines}) as m(measure, amount)"
        " where o.status = any(%(sales)s)"
    ).format(values=sql.SQL(", ").join(values), lines=sql.SQL(" union all ").join(lines))


def scope_sql() -> sql.Composable:
    """``_money_scope``: every order (not deleted, of the account) of each store-day with an order
    updated in the window, with its typed store, status and money columns and its ``raw``."""
    typed = sql.SQL(", ").join(
        sql.SQL("o.{}").format(sql.Identifier(c)) for c in ("store_id", "status", *(c for _, c in ORDER_MEASURES))
    )
    return sql.SQL(_SCOPE).format(typed=typed)


def _table(entity: Entity) -> sql.Identifier:
    assert entity.table is not None
    return sql.Identifier(*entity.table.split("."))


_SCOPE = """
create temp table _money_scope on commit drop as
select o.order_id, o.business_date, {typed}, o.raw
from (select distinct store_id, business_date from taptouch.orders
      where updated_at >= %(start)s and updated_at < %(end)s
        and (%(account)s::text is null or account = %(account)s)) d
join taptouch.orders o using (store_id, business_date)
where o.deleted_at is null and (%(account)s::text is null or o.account = %(account)s)
"""

_DIFFERENCES = """
with d as (
    select store_id, business_date, measure, order_id,
           coalesce(t.amount, 0) as typed, coalesce(r.amount, 0) as raw
    from _money_typed t full join _money_raw r using (order_id, store_id, business_date, measure)
    where coalesce(t.amount, 0) <> coalesce(r.amount, 0)
),
g as (
    select store_id, business_date, measure, count(*) as n,
           (array_agg(order_id order by order_id))[1:%(listed)s] as ids,
           (array_agg(typed - raw order by order_id))[1:%(listed)s] as deltas
    from d group by store_id, business_date, measure
),
s as (
    select store_id, business_date, measure, sum(typed) as typed, sum(raw) as raw
    from (select store_id, business_date, measure, amount as typed, 0 as raw from _money_typed
          union all
          select store_id, business_date, measure, 0, amount from _money_raw) x
    join g using (store_id, business_date, measure)
    group by store_id, business_date, measure
)
select g.store_id, g.business_date, g.measure, s.typed, s.raw, g.n, g.ids, g.deltas
from g join s using (store_id, business_date, measure)
order by g.store_id, g.business_date, g.measure
"""

_RULES = """
select side, order_id, store_id, business_date, total, paid, refunded from (
    select {side} as side, order_id, store_id, business_date,
           coalesce(sum(amount) filter (where measure = 'total'), 0) as total,
           coalesce(sum(amount) filter (where measure like %(payments)s), 0) as paid,
           coalesce(sum(amount) filter (where measure = 'refunds'), 0) as refunded
    from {rows} group by order_id, store_id, business_date
) x
where paid <> total or refunded > total
order by order_id
"""

_SUMS = """
select store_id, business_date, measure, sum(typed), sum(raw)
from (select store_id, business_date, measure, amount as typed, 0 as raw from _money_typed
      union all
      select store_id, business_date, measure, 0, amount from _money_raw) x
group by store_id, business_date, measure
"""

_STORE_DAYS = """
select store_id, business_date, count(*) filter (where side = 'typed')
from (select 'typed' as side, store_id, business_date from _money_typed where measure = 'orders'
      union all
      select 'raw', store_id, business_date from _money_raw where measure = 'orders') x
group by store_id, business_date
order by store_id, business_date
"""


def _cents(amount: Decimal, measure: str = "") -> str:
    """A difference to the cent with its sign (``+0.01``), a count for the measure ``orders``."""
    return f"{amount:+d}" if measure == "orders" else f"{amount:+.2f}"


def _shown(amount: Decimal, measure: str) -> str:
    return f"{amount:d}" if measure == "orders" else f"{amount:.2f}"


@dataclass(frozen=True)
class Difference:
    """One store-day's measure whose typed sum and raw sum differ, or whose orders do."""

    store_id: int
    business_date: date
    measure: str
    typed: Decimal  # the store-day's sum from the typed tables
    raw: Decimal  # the same sum from raw
    orders: int  # orders whose own figure differs
    examples: tuple[tuple[int, Decimal], ...]  # (order id, its typed − raw), the first by id

    def line(self) -> str:
        m = self.measure
        named = ", ".join(f"{oid} ({_cents(d, m)})" for oid, d in self.examples)
        more = f" and {self.orders - len(self.examples)} more" if self.orders > len(self.examples) else ""
        return (
            f"store {self.store_id} {self.business_date} {m}: typed {_shown(self.typed, m)}, raw "
            f"{_shown(self.raw, m)}, difference {_cents(self.typed - self.raw, m)}; "
            f"{self.orders} order(s): {named}{more}"
        )


@dataclass(frozen=True)
class RuleBreak:
    """A sales order whose payments differ from its total, or whose refunds exceed it, on one side."""

    side: str  # 'typed' or 'raw'
    order_id: int
    store_id: int
    business_date: date
    total: Decimal
    paid: Decimal
    refunded: Decimal

    def line(self) -> str:
        broken = []
        if self.paid != self.total:
            broken.append(f"payments {self.paid:.2f} ≠ total {self.total:.2f} ({_cents(self.paid - self.total)})")
        if self.refunded > self.total:
            broken.append(
                f"refunds {self.refunded:.2f} > total {self.total:.2f} ({_cents(self.refunded - self.total)})"
            )
        return f"order {self.order_id} (store {self.store_id} {self.business_date}, {self.side}): " + "; ".join(broken)


@dataclass
class MoneyReport:
    """What :func:`reconcile` found."""

    store_days: list[tuple[int, date, int]] = field(default_factory=list)  # (store, date, sales orders)
    differences: list[Difference] = field(default_factory=list)
    rule_breaks: list[RuleBreak] = field(default_factory=list)
    partitions: dict[int, str] = field(default_factory=dict)  # listed order -> its updated_at's UTC day
    sums: dict[tuple[int, date, str], tuple[Decimal, Decimal]] = field(default_factory=dict)  # -> (typed, raw)

    @property
    def passed(self) -> bool:
        return not self.differences and not self.rule_breaks

    @property
    def orders_checked(self) -> int:
        return sum(n for _, _, n in self.store_days)

    def listed_orders(self) -> list[int]:
        """The orders the report names (the first of each difference, every listed rule break)."""
        ids = {oid for d in self.differences[:LISTED] for oid, _ in d.examples}
        return sorted(ids | {b.order_id for b in self.rule_breaks[:LISTED]})


def _execute_sides(cur, params: dict) -> None:
    """The scope (the store-days' orders) and each side's per-order rows, as temp tables."""
    cur.execute("drop table if exists _money_scope, _money_typed, _money_raw")
    cur.execute(scope_sql(), params)
    cur.execute(sql.SQL("create temp table _money_typed on commit drop as {}").format(typed_side_sql()), params)
    cur.execute(sql.SQL("create temp table _money_raw on commit drop as {}").format(raw_side_sql()), params)
    cur.execute("analyze _money_typed; analyze _money_raw")


def _read_report(cur) -> MoneyReport:
    report = MoneyReport()
    cur.execute(_STORE_DAYS)
    report.store_days = [(s, d, n) for s, d, n in cur.fetchall()]
    cur.execute(_SUMS)
    report.sums = {(s, d, m): (typed, raw) for s, d, m, typed, raw in cur.fetchall()}
    cur.execute(_DIFFERENCES, {"listed": ORDERS_LISTED})
    for store_id, day, measure, typed, raw, n, ids, deltas in cur.fetchall():
        examples = tuple(zip(ids, deltas, strict=True))
        report.differences.append(Difference(store_id, day, measure, typed, raw, n, examples))
    for side in ("typed", "raw"):
        rules = sql.SQL(_RULES).format(side=sql.Literal(side), rows=sql.Identifier(f"_money_{side}"))
        cur.execute(rules, {"payments": "payments.%"})
        report.rule_breaks += [RuleBreak(*row) for row in cur.fetchall()]
    report.rule_breaks.sort(key=lambda b: (b.store_id, b.business_date, b.order_id, b.side))
    cur.execute(
        "select order_id, to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD') from taptouch.orders"
        " where order_id = any(%s)",
        (report.listed_orders(),),
    )
    report.partitions = dict(cur.fetchall())
    return report


def reconcile(conn, start: datetime, end: datetime, account: str | None = None) -> MoneyReport:
    """Reconcile the store-days with an order updated in ``[start, end)`` (of ``account``, else of
    every account): their sums from the typed tables against the same sums from ``raw``, and both
    sides' payment rules. Reads only (its temp tables are dropped at the end)."""
    from psycopg import ClientCursor

    params = {"start": start, "end": end, "account": account, "sales": list(SALE_STATUSES)}
    with conn.transaction(), ClientCursor(conn) as cur:  # client-side binding: CREATE TABLE AS takes no $n
        _execute_sides(cur, params)
        report = _read_report(cur)
        cur.execute("drop table _money_scope, _money_typed, _money_raw")
    return report


REPAIR = (
    "A typed value that differs from raw while raw keeps the rules: `taptouch-sync rebuild` re-derives the typed "
    "tables from raw (no API call). Raw that breaks a rule or differs from the API: re-run the orders partition "
    "of each listed order (partitions_to_rerun) with full_refresh; if raw was edited in the warehouse, first "
    "`update taptouch.orders set raw_hash = null` for those orders (the load skips an unchanged hash). "
    "A rule still broken after that is in the API's own record. docs/operating.md, 'The money reconciliation'."
)


def check_spec(asset_key) -> dg.AssetCheckSpec:
    """The reconciliation's check on the ``orders`` asset (each run evaluates it)."""
    return dg.AssetCheckSpec(
        CHECK_MONEY,
        asset=asset_key,
        description="Per store and business date touched by the run's windows: orders, gross, discounts, "
        "surcharges, rounding, tax, total, tips, item totals, refunds and payments per method summed from the "
        "typed tables equal the same sums from raw, to the cent; each sales order's payments equal its total and "
        "its refunds do not exceed it (on both sides). Fails naming the orders and the cent difference.",
    )


def _md(rows: list[str], head: str) -> str:
    return head + "".join(f"| {r} |\n" for r in rows)


def _metadata(report: MoneyReport) -> dict:
    days = sorted({d for _, d, _ in report.store_days})
    metadata: dict = {
        "store_days_checked": len(report.store_days),
        "business_dates": f"{days[0]}..{days[-1]}" if days else "none",
        "orders_checked": report.orders_checked,
        "differences": len(report.differences),
        "rule_breaks": len(report.rule_breaks),
        "compared": ", ".join(MEASURES),
    }
    if report.differences:
        metadata["differences_listed"] = dg.MetadataValue.md(
            _md(
                [
                    f"{d.store_id} | {d.business_date} | {d.measure} | {_shown(d.typed, d.measure)} | "
                    f"{_shown(d.raw, d.measure)} | {_cents(d.typed - d.raw, d.measure)} | {d.orders} | "
                    + ", ".join(f"{oid} ({_cents(x, d.measure)})" for oid, x in d.examples)
                    for d in report.differences[:LISTED]
                ],
                "| store | business date | measure | typed | raw | typed − raw | orders | first orders (typed − raw) |\n"
                "|---|---|---|---|---|---|---|---|\n",
            )
        )
    if report.rule_breaks:
        metadata["rule_breaks_listed"] = dg.MetadataValue.md(
            _md(
                [
                    f"{b.order_id} | {b.store_id} | {b.business_date} | {b.side} | {b.total:.2f} | {b.paid:.2f} | "
                    f"{b.refunded:.2f}"
                    for b in report.rule_breaks[:LISTED]
                ],
                "| order | store | business date | side | total | payments | refunds |\n|---|---|---|---|---|---|---|\n",
            )
        )
    if not report.passed:
        metadata["orders_listed"] = ", ".join(map(str, report.listed_orders()))
        metadata["partitions_to_rerun"] = ", ".join(sorted(set(report.partitions.values()))) or "none"
        metadata["repair"] = REPAIR
    return metadata


def describe_report(report: MoneyReport) -> str | None:
    """The failure in words: every listed difference and rule break (at most :data:`LISTED` of
    each, with the counts), then how to repair."""
    if report.passed:
        return None
    lines = [
        f"{len(report.differences)} difference(s) between the typed tables and raw, "
        f"{len(report.rule_breaks)} broken payment rule(s), over {len(report.store_days)} store-day(s):"
    ]
    lines += [f"- {d.line()}" for d in report.differences[:LISTED]]
    if len(report.differences) > LISTED:
        lines.append(f"- and {len(report.differences) - LISTED} more difference(s)")
    lines += [f"- {b.line()}" for b in report.rule_breaks[:LISTED]]
    if len(report.rule_breaks) > LISTED:
        lines.append(f"- and {len(report.rule_breaks) - LISTED} more broken rule(s)")
    return "\n".join(lines) + "\n" + REPAIR


def check_result(report: MoneyReport, asset_key) -> dg.AssetCheckResult:
    """The check's evaluation: passed, or failed (severity ERROR) with the differences listed."""
    return dg.AssetCheckResult(
        check_name=CHECK_MONEY,
        asset_key=asset_key,
        passed=report.passed,
        metadata=_metadata(report),
        description=describe_report(report),
    )
