"""The contract between an order's two validation paths (pipelines/warehouse/records.py), both
generated from the declarations of pipelines/warehouse/entities.py:

- the fast path (``_order_fast``) either builds exactly the rows the precise path
  (``_order_precise``, the reference) builds, or declines; it never accepts a record the precise
  path refuses;
- it does not decline the records an API sends every day (else the speed is gone unnoticed).

Records are random and hostile: a valid order with one to three declared fields (any depth: order,
customer, items, modifiers, payments, refunds) set to values at and beyond each kind's limits, drawn
per kind from the declarations, so a column added there is covered without touching this file.
"""

from __future__ import annotations

import copy
import tempfile
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(tempfile.mkdtemp(prefix="taptouch-hypothesis-"))  # nothing written into the checkout

from pipelines.warehouse import entities, records  # noqa: E402
from taptouch_resource import InvalidRecord  # noqa: E402
from tests.support import factories as f  # noqa: E402

D = Decimal
TZ = "Australia/Melbourne"
STORE = 7101


def _values(field: entities.Field) -> list:
    """Values at and beyond the limits of the field's kind (valid, invalid, and of the wrong type)."""
    common = [None, True, [], {}]
    if field.kind == entities.ID:
        return common + [0, 1, 2**63 - 1, 2**63, -1, D("1.0"), "12"]
    if field.kind == entities.MONEY:
        return common + [
            D("0.00"),
            D("-0.01"),
            D("1.5"),
            D("9999999999.99"),
            D("10000000000.00"),
            D("-9999999999.99"),
            D("0.001"),
            D("1E+2"),
            D("-0"),
            D("12.3400"),
            "1.00",
            3,
        ]
    if field.kind == entities.QUANTITY:
        return common + [
            0,
            1,
            -2,
            D("0.5"),
            D("1e15"),
            D("1000000000000001"),
            D("1E-16383"),
            D("1E-16384"),
            D("-0.000"),
            "1",
        ]
    if field.kind == entities.TEXT:
        return common + ["", " ", "\t", "a", "x" * field.limit, "x" * (field.limit + 1), "☕" * field.limit, 5, "a\x00"]
    if field.kind == entities.INSTANT:
        return common + [
            "2026-11-02T01:00:00Z",
            "2026-11-02T12:00:00.123456+11:00",
            "2026-11-02T12:00:00.1234567-05:30",
            "2026-11-02T12:00:00.999999999Z",
            "2026-11-02T12:00:00",
            "2026-11-02",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-11-02T12:00:00+16:00",
            1764300000,
        ]
    if field.kind == entities.LIST:
        return common + [
            [{"price": D("0.80")}],
            [{"price": D("0.80"), "quantity": D("0.5")}],
            [{"price": D("0.80"), "quantity": 0}],
            [{"price": "0.80"}],
            [{}],
            [1],
            "x",
            [{"price": D("0.001")}],
            [{"price": D("0.80"), "quantity": D("1e16")}],
        ]
    return common


def _sites(record: dict) -> list[tuple[tuple, entities.Field]]:
    """(where in the record, declared field) for every declared field of the order and its lines."""
    sites = [((), fd) for fd in entities.ORDER.fields if fd.path]
    for name, child in entities.ORDER.lines:
        for i in range(len(record[name])):
            sites += [((name, i), fd) for fd in child.fields if fd.path]
            for j in range(len(record[name][i].get("modifiers") or ())):
                sites += [((name, i, "modifiers", j), fd) for fd in entities.MODIFIER.fields]
    return sites


def _put(record: dict, at: tuple, path: str, value) -> None:
    """Set the field at ``path`` under ``at``; nothing when an earlier hostile value replaced the
    list or line that ``at`` leads through (``items`` sent as null, say): that site is gone."""
    obj: Any = record
    for step in at:
        if isinstance(step, int):
            if not isinstance(obj, list) or step >= len(obj):
                return
        elif not isinstance(obj, dict) or step not in obj:
            return
        obj = obj[step]
    if not isinstance(obj, dict):
        return
    *objects, last = path.split(".")
    for name in objects:
        if not isinstance(obj.get(name), dict):
            obj[name] = {}
        obj = obj[name]
    obj[last] = value


@st.composite
def hostile_orders(draw) -> bytes:
    status = draw(st.sampled_from(["completed", "open"]))
    refunds = draw(st.sampled_from([(), ("1.00",), ("1.00", "2.00")]))
    # the first line's quantity and price at their limits, its total and the order's sums kept consistent
    quantity = draw(st.sampled_from([1, 0, -2, D("0.5"), D("0.001"), D("1e15"), D("1000000000000001")]))
    price = draw(st.sampled_from(["5.50", "0.00", "-5.50", "9999999999.99", "0.005"]))
    items = [
        f.item(1, quantity, price, [{"id": 77, "name": "Oat", "quantity": 1, "price": "0.80"}]),
        f.item(2, 1, "3.00"),
    ]
    record = f.order(
        draw(st.integers(1, 10**6)),
        status=status,
        refunds=refunds,
        items=items,
        customer=draw(st.sampled_from([None, {"id": 5, "name": "Sam", "email": "s@x"}])),
    )
    sites = _sites(record)
    for _ in range(draw(st.integers(0, 3))):
        at, fd = draw(st.sampled_from(sites))
        _put(record, at, fd.path, copy.deepcopy(draw(st.sampled_from(_values(fd)))))
    return records.as_bytes(record)


def _both_paths(raw: bytes):
    """(fast: rows or "declined", precise: rows or the reason), after the shared decode and screens;
    None when the record is refused before either path runs."""
    try:
        decoded = records._checked(raw, "order", records._DECODERS["order"])
    except InvalidRecord:
        return None
    try:
        fast = records._order_fast(decoded, raw, TZ, STORE)
    except records._Declined:
        fast = "declined"
    try:
        precise = records._order_precise(decoded, raw, TZ, STORE)
    except InvalidRecord as exc:
        precise = exc.reason
    return fast, precise


@settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_orders())
def test_fast_path_contract_same_rows_as_precise_path_or_declines(raw):
    both = _both_paths(raw)
    if both is None:
        return
    fast, precise = both
    if fast == "declined":
        return  # the precise path decides, whatever it decides
    assert not isinstance(precise, str), (
        f"the fast path accepted a record the precise path refuses ({precise}): {raw!r}"
    )
    assert fast == precise
    assert repr(fast) == repr(precise), "the same values, down to each Decimal's exponent and each text"


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.integers(1, 10**6),
    st.sampled_from(["completed", "open"]),
    st.sampled_from([(), ("1.00",)]),
    st.sampled_from([1, 2, D("0.5"), D("1.25")]),
    st.booleans(),
)
def test_fast_path_contract_accepts_everyday_orders(order_id, status, refunds, quantity, customer):
    record = f.order(
        order_id,
        status=status,
        refunds=refunds,
        items=[
            f.item(1, quantity, "5.50", [{"id": 77, "name": "Oat", "quantity": 1, "price": "0.80"}]),
            f.item(2, 1, "3.00"),
        ],
        customer={"id": 5, "name": "Sam"} if customer else None,
    )
    raw = records.as_bytes(record)
    fast, precise = _both_paths(raw)
    assert fast != "declined", "an everyday order took the slow path"
    assert fast == precise


@pytest.mark.parametrize(
    "mutate, reason",
    [
        (lambda r: r.update(total=D("1.00")), "total 1.00 != subtotal - discount + surcharge + rounding"),
        (lambda r: r["items"][0].update(quantity=0), "items[0].quantity must be positive, got 0"),
        (
            lambda r: r["items"][1].update(total=D("99.00")),
            "items[1].total 99.00 != quantity x (unit_price + modifiers)",
        ),
        (lambda r: r["payments"][0].update(amount=D("1.00")), "completed order: payments sum to 1.00"),
        (lambda r: r.update(store_id=7102), "store_id 7102 differs from the store it was listed under (7101)"),
        (  # each refund fits numeric(12,2); their sum does not fit the history row's numeric(14,2)
            lambda r: r.update(
                status="refunded",
                refunds=[
                    {"id": i, "amount": D("9999999999.99"), "reason": "x", "refunded_at": r["updated_at"]}
                    for i in range(101)
                ],
            ),
            "refunds sum to 1009999999998.99, beyond what the order's history row holds (numeric(14,2)",
        ),
        (lambda r: r.update(status=" "), "status is empty"),
        (lambda r: r.update(currency="x" * 11), "currency is 11 characters long (limit 10)"),
    ],
)
def test_fast_path_contract_declines_what_the_precise_path_refuses(mutate, reason):
    record = f.order(41)
    mutate(record)
    fast, precise = _both_paths(records.as_bytes(record))
    assert fast == "declined"
    assert precise.startswith(reason)
