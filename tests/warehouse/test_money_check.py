"""The money reconciliation (pipelines/warehouse/money_check.py) on a warehouse loaded from the sandbox:
both sides equal the sandbox's own sums; a corrupted typed value, child row or raw record, and an
order whose payments or refunds break the rules, are named with the cent difference."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import psycopg
import pytest

from pipelines.sync import sync_stores
from pipelines.warehouse import money_check
from pipelines.warehouse.money_check import Difference, reconcile
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support import truth
from tests.support.windows import load_window

END = date(2026, 11, 27)
START = datetime(2026, 11, 18, tzinfo=UTC)  # a window holding every order of the sandbox
STOP = datetime(2026, 12, 3, tzinfo=UTC)
CENT = Decimal("0.01")


def _client(sb: Sandbox) -> TaptouchClient:
    return TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
    )


@pytest.fixture
def loaded(migrated_db):
    """(sandbox, connection): three stores' four days loaded in one window, as the orders asset loads."""
    sb = Sandbox(SandboxConfig(seed=11, stores=3, days=4, end_date=END, orders_per_day=25))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        client = _client(sb)
        sync_stores(client, conn)
        result = load_window(client, conn, "all", START, STOP)
        assert result.counts.inserted > 0 and not result.failures and result.counts.quarantined == 0
        sb.client = client
        yield sb, conn


def money_truth(sb: Sandbox) -> dict[tuple[int, date, str], Decimal]:
    """The reconciliation's sums computed from the sandbox's records: per store, business date and
    measure, over the sales orders."""
    tz = {s["id"]: s["timezone"] for s in sb.stores()}
    sums: dict[tuple[int, date, str], Decimal] = defaultdict(Decimal)
    for sid in sb.store_ids():
        for o in sb.orders(sid):
            if o["status"] not in truth.SALES_STATUSES:
                continue
            day = truth.business_date(o, tz[sid])
            sums[(sid, day, "orders")] += 1
            for measure, fieldname in money_check.ORDER_MEASURES:
                sums[(sid, day, measure)] += Decimal(o[fieldname])
            sums[(sid, day, "items")] += sum((Decimal(i["total"]) for i in o["items"]), Decimal(0))
            sums[(sid, day, "refunds")] += sum((Decimal(r["amount"]) for r in o["refunds"]), Decimal(0))
            for p in o["payments"]:
                sums[(sid, day, f"payments.{p['method']}")] += Decimal(p["amount"])
    return dict(sums)


def _an_order(conn, where: str) -> tuple[int, int, date, str]:
    """(order id, store, business date, its partition) of the first sales order matching ``where``."""
    return conn.execute(
        "select o.order_id, o.store_id, o.business_date, to_char(o.updated_at at time zone 'UTC', 'YYYY-MM-DD')"
        f" from taptouch.orders o where o.status in ('completed', 'partially_refunded', 'refunded') and {where}"
        " order by o.order_id limit 1"
    ).fetchone()


def _a_one_payment_order(conn) -> tuple[int, int, date, str, Decimal]:
    """(order id, store, business date, its payment's method, its total) of the first completed
    order paid with exactly one payment."""
    oid, sid, day, _ = _an_order(
        conn,
        "o.status = 'completed' and (select count(*) from taptouch.order_payments p where p.order_id = o.order_id) = 1",
    )
    method, total = conn.execute(
        "select p.method, o.total from taptouch.order_payments p join taptouch.orders o using (order_id)"
        " where order_id = %s",
        (oid,),
    ).fetchone()
    return oid, sid, day, method, total


def _pay_one_less_on_both_sides(conn, oid: int) -> None:
    """The order's first payment 1.00 lower in raw and in its typed row alike (as the API sent it)."""
    first = conn.execute("select min(payment_id) from taptouch.order_payments where order_id = %s", (oid,)).fetchone()[
        0
    ]
    conn.execute(
        "update taptouch.orders set raw = jsonb_set(raw, '{payments,0,amount}',"
        " to_jsonb((raw #>> '{payments,0,amount}')::numeric - 1)) where order_id = %s",
        (oid,),
    )
    conn.execute(
        "update taptouch.order_payments set amount = amount - 1 where order_id = %s and payment_id = %s", (oid, first)
    )


def test_a_clean_load_reconciles_and_both_sides_equal_the_sandboxs_sums(loaded):
    sb, conn = loaded
    want = money_truth(sb)
    statuses = {o["status"] for s in sb.store_ids() for o in sb.orders(s)}
    assert {"completed", "partially_refunded", "refunded", "open", "voided"} <= statuses  # every case is there
    assert {m for *_, m in want if m.startswith("payments.")} >= {"payments.cash", "payments.visa", "payments.points"}

    report = reconcile(conn, START, STOP)

    assert report.passed, money_check.describe_report(report)
    assert {k: typed for k, (typed, _) in report.sums.items()} == want
    assert {k: raw for k, (_, raw) in report.sums.items()} == want
    assert report.orders_checked == sum(v for (_, _, m), v in want.items() if m == "orders")
    assert {(s, d) for s, d, _ in report.store_days} == {(s, d) for s, d, _ in want}
    result = money_check.check_result(report, dg.AssetKey("orders"))
    assert result.passed and result.description is None and result.metadata["differences"].value == 0


def test_a_window_checks_only_the_store_days_its_orders_belong_to(loaded):
    _, conn = loaded
    day = datetime(2026, 11, 25, tzinfo=UTC)
    want = {
        (s, d)
        for s, d in conn.execute(
            "select distinct store_id, business_date from taptouch.orders"
            " where updated_at >= %s and updated_at < %s and status in ('completed', 'partially_refunded', 'refunded')",
            (day, day + timedelta(days=1)),
        )
    }
    report = reconcile(conn, day, day + timedelta(days=1))
    assert report.passed and want and {(s, d) for s, d, _ in report.store_days} == want
    assert reconcile(conn, STOP, STOP + timedelta(days=1)).store_days == []  # nothing updated then: nothing checked


def test_a_cent_more_tax_on_one_typed_order_is_named_with_its_store_day(loaded):
    sb, conn = loaded
    oid, sid, day, partition = _an_order(conn, "true")
    conn.execute("update taptouch.orders set tax = tax + 0.01 where order_id = %s", (oid,))

    report = reconcile(conn, START, STOP)

    tax = money_truth(sb)[(sid, day, "tax")]
    assert report.differences == [Difference(sid, day, "tax", tax + CENT, tax, 1, ((oid, CENT),))]
    assert report.rule_breaks == []  # tax is not in the payment rules
    result = money_check.check_result(report, dg.AssetKey("orders"))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert f"store {sid} {day} tax: typed {tax + CENT:.2f}, raw {tax:.2f}, difference +0.01" in result.description
    assert f"{oid} (+0.01)" in result.description and "taptouch-sync rebuild" in result.description
    assert result.metadata["orders_listed"].value == str(oid)
    assert result.metadata["partitions_to_rerun"].value == partition


def test_a_payment_short_by_five_cents_breaks_the_sum_of_its_method_and_the_payment_rule(loaded):
    sb, conn = loaded
    oid, sid, day, method, total = _a_one_payment_order(conn)
    conn.execute("update taptouch.order_payments set amount = amount - 0.05 where order_id = %s", (oid,))

    report = reconcile(conn, START, STOP)

    paid = money_truth(sb)[(sid, day, f"payments.{method}")]
    five = Decimal("0.05")
    assert report.differences == [Difference(sid, day, f"payments.{method}", paid - five, paid, 1, ((oid, -five),))]
    [broken] = report.rule_breaks
    assert (broken.side, broken.order_id, broken.total, broken.paid) == ("typed", oid, total, total - five)
    text = money_check.describe_report(report)
    assert f"{oid} (-0.05)" in text and f"order {oid} (store {sid} {day}, typed): payments {total - five:.2f}" in text


def test_a_refund_above_the_total_in_the_typed_rows_is_named(loaded):
    sb, conn = loaded
    oid, sid, day, _ = _an_order(conn, "o.status = 'partially_refunded'")
    conn.execute("update taptouch.order_refunds set amount = amount + 100 where order_id = %s", (oid,))

    report = reconcile(conn, START, STOP)

    refunds = money_truth(sb)[(sid, day, "refunds")]
    hundred = Decimal("100.00")
    assert report.differences == [Difference(sid, day, "refunds", refunds + hundred, refunds, 1, ((oid, hundred),))]
    [broken] = report.rule_breaks
    assert broken.side == "typed" and broken.order_id == oid and broken.refunded > broken.total
    assert f"refunds {broken.refunded:.2f} > total {broken.total:.2f}" in money_check.describe_report(report)


def test_corrupted_raw_is_found_and_a_full_reload_of_the_order_repairs_it(loaded):
    sb, conn = loaded
    oid, sid, day, _ = _an_order(conn, "true")
    conn.execute(
        "update taptouch.orders set raw = jsonb_set(raw, '{tax}', to_jsonb((raw ->> 'tax')::numeric + 0.01))"
        " where order_id = %s",
        (oid,),
    )

    report = reconcile(conn, START, STOP)

    tax = money_truth(sb)[(sid, day, "tax")]
    assert report.differences == [Difference(sid, day, "tax", tax, tax + CENT, 1, ((oid, -CENT),))]
    # the documented repair: forget the raw record's hash, reload its window in full
    conn.execute("update taptouch.orders set raw_hash = null where order_id = %s", (oid,))
    assert load_window(sb.client, conn, "all", START, STOP).counts.updated == 1
    assert reconcile(conn, START, STOP).passed


def test_a_sales_order_paid_short_on_both_sides_is_listed_on_both(loaded):
    _, conn = loaded
    oid, *_ = _an_order(conn, "o.status = 'completed'")
    _pay_one_less_on_both_sides(conn, oid)  # the API sent it so: raw and the typed row agree

    report = reconcile(conn, START, STOP)

    assert report.differences == []
    assert [(b.side, b.order_id, b.paid - b.total) for b in report.rule_breaks] == [
        ("raw", oid, Decimal("-1.00")),
        ("typed", oid, Decimal("-1.00")),
    ]
    assert not money_check.check_result(report, dg.AssetKey("orders")).passed


def test_a_refund_above_the_total_sent_by_the_api_is_listed(loaded):
    sb, conn = loaded
    oid, *_ = _an_order(conn, "o.status = 'completed'")
    order = sb.order(oid)
    over = Decimal(order["total"]) + Decimal("2.50")
    edited = sb.edit_order(
        oid,
        status="partially_refunded",
        refunds=[{"id": oid * 10 + 5, "amount": over, "reason": "test", "refunded_at": order["updated_at"]}],
    )
    assert Decimal(edited["refunds"][0]["amount"]) == over  # the sandbox serves it as given
    assert load_window(sb.client, conn, "all", START, STOP).counts.updated == 1

    report = reconcile(conn, START, STOP)

    assert report.differences == []
    assert [(b.side, b.order_id, b.refunded - b.total) for b in report.rule_breaks] == [
        ("raw", oid, Decimal("2.50")),
        ("typed", oid, Decimal("2.50")),
    ]


def test_a_deleted_order_and_another_accounts_orders_are_left_out(loaded):
    _, conn = loaded
    oid, *_ = _an_order(conn, "true")
    conn.execute("update taptouch.orders set tax = tax + 0.01, deleted_at = now() where order_id = %s", (oid,))
    assert reconcile(conn, START, STOP).passed  # a deleted order is in no sum (as in analytics.sales_orders)
    other, *_ = _an_order(conn, "o.deleted_at is null")
    conn.execute("update taptouch.orders set tax = tax + 0.01, account = 'north' where order_id = %s", (other,))
    assert reconcile(conn, START, STOP, account="default").passed
    assert [d.examples for d in reconcile(conn, START, STOP, account="north").differences] == [((other, CENT),)]
    assert not reconcile(conn, START, STOP).passed  # the single account checks every row


def test_two_errors_that_cancel_in_the_days_sum_are_still_named(loaded):
    sb, conn = loaded
    oid, sid, day, _ = _an_order(conn, "true")
    other = conn.execute(
        "select min(order_id) from taptouch.orders where store_id = %s and business_date = %s and order_id > %s"
        " and status in ('completed', 'partially_refunded', 'refunded')",
        (sid, day, oid),
    ).fetchone()[0]
    conn.execute("update taptouch.orders set tax = tax + 0.01 where order_id = %s", (oid,))
    conn.execute("update taptouch.orders set tax = tax - 0.01 where order_id = %s", (other,))

    report = reconcile(conn, START, STOP)

    tax = money_truth(sb)[(sid, day, "tax")]
    assert report.differences == [Difference(sid, day, "tax", tax, tax, 2, ((oid, CENT), (other, -CENT)))]
    assert f"difference +0.00; 2 order(s): {oid} (+0.01), {other} (-0.01)" in money_check.describe_report(report)


@pytest.mark.parametrize("bad", ['"7101"', "7101.5", "null", "99999999999999999999"])
def test_a_raw_store_id_that_is_no_store_id_leaves_the_order_out_of_the_raw_side(loaded, bad):
    _, conn = loaded
    oid, sid, day, _ = _an_order(conn, "true")
    conn.execute(
        "update taptouch.orders set raw = jsonb_set(raw, '{store_id}', %s::jsonb) where order_id = %s", (bad, oid)
    )

    report = reconcile(conn, START, STOP)

    orders = next(d for d in report.differences if d.measure == "orders")
    assert (orders.store_id, orders.business_date, orders.typed - orders.raw, orders.examples) == (
        sid,
        day,
        1,
        ((oid, 1),),
    )
    assert {named for d in report.differences for named, _ in d.examples} == {oid}  # every other sum agrees


def test_a_typed_payment_amount_of_nan_is_a_difference_and_a_broken_rule_not_a_crash(loaded):
    # numeric(12,2) takes 'NaN'; in the per-order payments object it is the JSON string "NaN"
    sb, conn = loaded
    oid, sid, day, method, total = _a_one_payment_order(conn)
    conn.execute("update taptouch.order_payments set amount = 'NaN' where order_id = %s", (oid,))

    report = reconcile(conn, START, STOP)

    paid = money_truth(sb)[(sid, day, f"payments.{method}")]
    [diff] = report.differences
    assert (diff.store_id, diff.business_date, diff.measure, diff.raw, diff.orders) == (
        sid,
        day,
        f"payments.{method}",
        paid,
        1,
    )
    assert diff.typed.is_nan() and [(o, d.is_nan()) for o, d in diff.examples] == [(oid, True)]
    assert report.sums[(sid, day, f"payments.{method}")][1] == paid
    [broken] = report.rule_breaks
    assert (broken.side, broken.order_id, broken.total) == ("typed", oid, total) and broken.paid.is_nan()


def test_an_order_of_a_store_whose_id_has_19_digits_reconciles(loaded):
    # ids are integers (bigint in the warehouse): the raw side reads a store id up to bigint's maximum
    _, conn = loaded
    oid, sid, _, _ = _an_order(conn, "true")
    big = 9_223_372_036_854_775_807
    conn.execute("create temp table big_store as select * from taptouch.stores where store_id = %s", (sid,))
    conn.execute("update big_store set store_id = %s", (big,))
    conn.execute("insert into taptouch.stores select * from big_store")
    conn.execute(
        "update taptouch.orders set store_id = %s, raw = jsonb_set(raw, '{store_id}', %s::text::jsonb)"
        " where order_id = %s",
        (big, big, oid),
    )

    report = reconcile(conn, START, STOP)

    assert report.differences == []


def test_a_difference_in_the_count_of_orders_is_described_not_a_crash(loaded):
    _, conn = loaded
    oid, sid, day, _ = _an_order(conn, "true")
    conn.execute("update taptouch.orders set raw = jsonb_set(raw, '{store_id}', '\"x\"') where order_id = %s", (oid,))

    described = money_check.describe_report(reconcile(conn, START, STOP))

    assert f"store {sid}" in described and f"{oid} (+1)" in described, described


def test_a_refunded_order_whose_payments_the_api_adjusted_breaks_no_rule(loaded):
    # the contract says payments equal the total for completed orders only: an API may send a
    # refunded order's payments net of its refunds (both sides agree: nothing to report)
    _, conn = loaded
    oid, *_ = _an_order(conn, "o.status in ('refunded', 'partially_refunded')")
    _pay_one_less_on_both_sides(conn, oid)

    report = reconcile(conn, START, STOP)

    assert report.differences == [] and report.rule_breaks == []
