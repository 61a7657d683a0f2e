"""The money reconciliation: each store's sums per business date computed twice, once from the typed
tables and once from ``raw`` alone, compared to the cent, with the orders behind every difference.

What is compared (docs/operating.md, "The money reconciliation"), over the sales orders (status
completed, partially_refunded or refunded, not deleted: as ``analytics.sales_orders`` counts them)
of each store and business date:

- :data:`MEASURES`: orders, gross (subtotal), discounts, surcharges, rounding, tax, total, tips,
  item totals, refunds, and payments per method (``payments.visa``, ...);
- two rules on each side: a completed order's payments equal its total (the contract's "for
  completed orders Σ payments.amount = total", and no more: a refunded order's payments may have
  been adjusted by its refunds), and a sales order's refunds never exceed its total.

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

from .aggregates import TOUCHED
from .db import prefer_index_joins
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
WIDE = ("orders", *(m for m, _ in ORDER_MEASURES), *(m for m, *_ in LINE_MEASURES))
"""The measures each side holds as a column of its one row per order (payments: ``pay``, by method)."""
MEASURES = (*WIDE, "payments.<method>")
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
    return sql.SQL("coalesce(case when jsonb_typeof({v}) = 'number' then ({v})::numeric end, 0)").format(v=v)


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
    """One row per sales order in ``_money_scope``: ``(order_id, store_id, business_date, <each
    measure of WIDE>, pay)`` from ``taptouch.orders.raw`` only (read once per order; its JSON paths
    from the declarations), ``pay`` the payments summed per method as a JSON object; ``business_date``
    is the warehouse's (derived, not in the record). An order whose record has no integer
    ``store_id`` is left out (the typed side then shows it)."""
    sid = _value("r", _field(ORDER, "store_id"))
    values = [sql.SQL("{} as {}").format(_money("r", _field(ORDER, c)), sql.Identifier(m)) for m, c in ORDER_MEASURES]
    lines = [
        sql.SQL("(select coalesce(sum({e}), 0) from {lines} as l(doc)) as {m}").format(
            m=sql.Identifier(measure), e=_money("l.doc", _field(entity, column)), lines=_lines(name)
        )
        for measure, name, entity, column in LINE_MEASURES
    ]
    name, entity, column, by = PAYMENTS
    pay = sql.SQL(
        "(select jsonb_object_agg(method, amount) from (select coalesce({by}, '?') as method, sum({e}) as amount"
        " from {lines} as l(doc) group by 1) as p) as pay"
    ).format(by=_text("l.doc", _field(entity, by)), e=_money("l.doc", _field(entity, column)), lines=_lines(name))
    return sql.SQL(
        "select o.order_id, s.store_id, o.business_date, {status} as status, 1::numeric as orders, {values},"
        " {lines}, {pay} from _money_scope o join taptouch.orders t using (order_id)"
        " cross join lateral jsonb_to_record(case when jsonb_typeof(t.raw) = 'object' then t.raw else '{{}}' end)"
        " as r({columns})"
        " cross join lateral (select case when jsonb_typeof({sid}) = 'number' and ({sid} #>> '{{}}') ~ '^-?[0-9]{{1,19}}$'"
        " then case when ({sid} #>> '{{}}')::numeric between -9223372036854775808 and 9223372036854775807"
        " then ({sid} #>> '{{}}')::bigint end end as store_id) s"
        " where s.store_id is not null and {status} = any(%(sales)s)"
    ).format(
        columns=_record_columns(),
        sid=sid,
        values=sql.SQL(", ").join(values),
        lines=sql.SQL(", ").join(lines),
        pay=pay,
        status=_text("r", _field(ORDER, "status")),
    )


def typed_side_sql() -> sql.Composable:
    """The same rows as :func:`raw_side_sql`, from the typed columns (copied into ``_money_scope``)
    and the child tables (each order's lines by their primary keys: the cost follows the orders
    checked, never the size of the tables)."""
    lines = [
        sql.SQL("(select coalesce(sum(l.{c}), 0) from {table} l where l.order_id = o.order_id) as {m}").format(
            c=sql.Identifier(column), table=_table(entity), m=sql.Identifier(measure)
        )
        for measure, _, entity, column in LINE_MEASURES
    ]
    _, entity, column, by = PAYMENTS
    pay = sql.SQL(
        "(select jsonb_object_agg(method, amount) from (select coalesce(l.{by}, '?') as method, sum(l.{c}) as amount"
        " from {table} l where l.order_id = o.order_id group by 1) as m) as pay"
    ).format(by=sql.Identifier(by), c=sql.Identifier(column), table=_table(entity))
    values = [sql.SQL("o.{} as {}").format(sql.Identifier(c), sql.Identifier(m)) for m, c in ORDER_MEASURES]
    return sql.SQL(
        "select o.order_id, o.store_id, o.business_date, o.status, 1::numeric as orders, {values}, {lines}, {pay}"
        " from _money_scope o where o.status = any(%(sales)s)"
    ).format(values=sql.SQL(", ").join(values), lines=sql.SQL(", ").join(lines), pay=pay)


def scope_sql() -> sql.Composable:
    """``_money_scope``: every order (not deleted, of the account) of each store-day with an order
    updated in the window, with its typed store, status and money columns (the raw side reads
    ``raw`` from ``taptouch.orders`` by the order id)."""
    typed = sql.SQL(", ").join(
        sql.SQL("o.{}").format(sql.Identifier(c)) for c in ("store_id", "status", *(c for _, c in ORDER_MEASURES))
    )
    return sql.SQL(_SCOPE).format(typed=typed)


def _table(entity: Entity) -> sql.Identifier:
    assert entity.table is not None
    return sql.Identifier(*entity.table.split("."))


_SCOPE = (
    "create temp table _money_days on commit drop as "
    + TOUCHED
    + """;
analyze _money_days;
create temp table _money_scope on commit drop as
select o.order_id, o.business_date, {typed}
from _money_days d
join taptouch.orders o using (store_id, business_date)
where o.deleted_at is null and (%(account)s::text is null or o.account = %(account)s)
"""
)


def _measures(alias: str, *more: str) -> sql.Composable:
    """``(values ('orders', <alias>.orders, ...), ...)``: a wide row's measures as rows."""
    cols = (alias, *more)
    return sql.SQL("(values {})").format(
        sql.SQL(", ").join(
            sql.SQL("({}, {})").format(
                sql.Literal(m),
                sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(c), sql.Identifier(m)) for c in cols),
            )
            for m in WIDE
        )
    )


def sums_sql() -> sql.Composable:
    """``_money_sums``: per store, business date and measure, the typed sum and the raw sum (0 on
    the side without a sales order of that store-day or a payment of that method). ``pay``'s amounts
    are read as text (a typed NaN amount is a JSON string in ``pay``, no JSON number)."""
    wide = sql.SQL(", ").join(sql.SQL("sum({m}) as {m}").format(m=sql.Identifier(m)) for m in WIDE)
    sides = []
    for side in ("typed", "raw"):
        amounts = ("m.amount, 0", "p.value::numeric, 0") if side == "typed" else ("0, m.amount", "0, p.value::numeric")
        table = sql.Identifier(f"_money_{side}")
        sides.append(
            sql.SQL(
                "select x.store_id, x.business_date, m.measure, {a} from (select store_id, business_date, {wide}"
                " from {t} group by store_id, business_date) as x cross join lateral {values} as m(measure, amount)"
                " union all select x.store_id, x.business_date, 'payments.' || p.key, {b} from {t} as x"
                " cross join lateral jsonb_each_text(coalesce(x.pay, '{{}}')) as p"
            ).format(a=sql.SQL(amounts[0]), b=sql.SQL(amounts[1]), wide=wide, t=table, values=_measures("x"))
        )
    return sql.SQL(
        "create temp table _money_sums on commit drop as select store_id, business_date, measure,"
        " sum(typed) as typed, sum(raw) as raw from ({sides}) as s(store_id, business_date, measure, typed, raw)"
        " group by store_id, business_date, measure"
    ).format(sides=sql.SQL(" union all ").join(sides))


def differences_sql() -> sql.Composable:
    """``_money_diff``: each (order, measure) whose typed and raw figures differ, from the orders
    whose two rows differ at all (an order on one side only: the other side's figures are 0)."""
    either = sql.SQL("({}) is distinct from ({})").format(
        *(
            sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(side), sql.Identifier(m)) for m in WIDE)
            for side in "tr"
        )
    )
    return sql.SQL(
        "create temp table _money_diff on commit drop as"
        " select order_id, store_id, business_date, m.measure, coalesce(m.typed, 0) as typed, coalesce(m.raw, 0) as raw"
        " from _money_typed t full join _money_raw r using (order_id, store_id, business_date)"
        " cross join lateral {values} as m(measure, typed, raw)"
        " where ({either} or t.pay is distinct from r.pay) and coalesce(m.typed, 0) <> coalesce(m.raw, 0)"
        " union all"
        " select order_id, store_id, business_date, 'payments.' || k.key, coalesce((t.pay ->> k.key)::numeric, 0),"
        " coalesce((r.pay ->> k.key)::numeric, 0)"
        " from _money_typed t full join _money_raw r using (order_id, store_id, business_date)"
        " cross join lateral jsonb_object_keys(coalesce(t.pay, '{{}}') || coalesce(r.pay, '{{}}')) as k(key)"
        " where t.pay is distinct from r.pay"
        " and coalesce((t.pay ->> k.key)::numeric, 0) <> coalesce((r.pay ->> k.key)::numeric, 0)"
    ).format(values=_measures("t", "r"), either=either)


_DIFFERENCES = """
with g as (
    select store_id, business_date, measure, count(*) as n,
           (array_agg(order_id order by order_id))[1:%(listed)s] as ids,
           (array_agg(typed - raw order by order_id))[1:%(listed)s] as deltas
    from _money_diff group by store_id, business_date, measure
)
select g.store_id, g.business_date, g.measure, s.typed, s.raw, g.n, g.ids, g.deltas
from g join _money_sums s using (store_id, business_date, measure)
order by g.store_id, g.business_date, g.measure
"""

_RULES = """
select {side} as side, order_id, store_id, business_date, total, paid, refunded from (
    select order_id, store_id, business_date, status, coalesce(total, 0) as total,
           coalesce((select sum(p.value::numeric) from jsonb_each_text(pay) as p), 0) as paid,
           coalesce(refunds, 0) as refunded
    from {rows}
) x
where (paid <> total and status = 'completed') or refunded > total
order by order_id
"""

_STORE_DAYS = """
select store_id, business_date, count(*) filter (where side = 'typed')
from (select 'typed' as side, store_id, business_date from _money_typed
      union all
      select 'raw', store_id, business_date from _money_raw) x
group by store_id, business_date
order by store_id, business_date
"""


def _cents(amount: Decimal, measure: str = "") -> str:
    """A difference to the cent with its sign (``+0.01``), a count for the measure ``orders``."""
    return f"{int(amount):+d}" if measure == "orders" else f"{amount:+.2f}"


def _shown(amount: Decimal, measure: str) -> str:
    return f"{int(amount):d}" if measure == "orders" else f"{amount:.2f}"


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
    cur.execute("drop table if exists _money_days, _money_scope, _money_typed, _money_raw, _money_sums, _money_diff")
    cur.execute("set local jit = off")  # its compile time (about a second) exceeds what it saves here
    prefer_index_joins(cur)  # the store-days' orders and children by their keys
    cur.execute(scope_sql(), params)
    cur.execute("analyze _money_scope")
    cur.execute(sql.SQL("create temp table _money_typed on commit drop as {}").format(typed_side_sql()), params)
    cur.execute(sql.SQL("create temp table _money_raw on commit drop as {}").format(raw_side_sql()), params)
    cur.execute(sums_sql())
    cur.execute(differences_sql())


def _read_report(cur) -> MoneyReport:
    report = MoneyReport()
    cur.execute(_STORE_DAYS)
    report.store_days = [(s, d, n) for s, d, n in cur.fetchall()]
    cur.execute("select store_id, business_date, measure, typed, raw from _money_sums")
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
        cur.execute("drop table _money_days, _money_scope, _money_typed, _money_raw, _money_sums, _money_diff")
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
        "typed tables equal the same sums from raw, to the cent; each completed order's payments equal its total, "
        "each sales order's refunds do not exceed it (on both sides). Fails naming the orders and the cent difference.",
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
