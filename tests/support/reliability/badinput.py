"""The bad-input catalogue: each hostile input with the outcome it must have.

Two levels:

- envelope-level problems go through a real :class:`TaptouchClient` (a mock transport serving
  the bad body after a valid token) and must raise a clear, typed error;
- record-level problems go through the loader (``OrderWindowLoad``) alongside a valid order and
  must be quarantined with a reason, while the valid order loads (nothing else lost); inputs that
  are valid but unusual (unknown fields, SQL-injection strings, unicode) must load *literally*.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import psycopg

from pipelines.warehouse import records as boundary
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from taptouch_resource import TaptouchAPIError, TaptouchClient, TaptouchError, TaptouchProtocolError, api, jsonutil

D = Decimal
STORE_ID = 7101
TOKEN_BODY = (
    b'{"access_token":"tok-badinput","token_type":"Bearer","expires_in":3600,'
    b'"scope":"integration.store integration.order integration.inventory"}'
)
INJECTIONS = [
    "'; drop table taptouch.orders; --",
    "Robert'); DELETE FROM taptouch.order_items WHERE ('1'='1",
    '" or 1=1 --',
    "$$; truncate taptouch.stores; $$",
    "\\'; select pg_sleep(10); --",
    "\\x00 E'\\\\' ) ; copy x from program 'id' --",
]


def store_record() -> dict:
    return {
        "id": STORE_ID,
        "name": "Bad input store",
        "status": "active",
        "timezone": "Australia/Melbourne",
        "currency": "AUD",
        "updated_at": "2026-10-02T10:15:00+10:00",
    }


def good_order(
    order_id: int,
    *,
    name: str = "Latte",
    updated_at: str = "2026-11-02T12:40:00+11:00",
    qty: Any = 2,
    price: str = "5.50",
) -> dict:
    total = (D(qty) * D(price)).quantize(D("0.01"))
    return {
        "id": order_id,
        "number": f"A-{order_id}",
        "store_id": STORE_ID,
        "source": "pos",
        "fulfillment_type": "dine_in",
        "status": "completed",
        "cashier": {"id": 17, "name": "Jess"},
        "customer": {"id": 901, "name": "Sam Lee"},
        "created_at": "2026-11-02T12:31:05+11:00",
        "updated_at": updated_at,
        "completed_at": updated_at,
        "currency": "AUD",
        "subtotal": total,
        "discount": D("0.00"),
        "surcharge": D("0.00"),
        "rounding": D("0.00"),
        "tax": (total / 11).quantize(D("0.01")),
        "total": total,
        "tips": D("0.00"),
        "redeem_points": 0,
        "items": [
            {
                "id": 1,
                "product_id": 3301,
                "sku": "LAT",
                "name": name,
                "category": "Coffee",
                "quantity": qty,
                "unit_price": D(price),
                "discount": D("0.00"),
                "tax": (total / 11).quantize(D("0.01")),
                "total": total,
                "modifiers": [],
            }
        ],
        "payments": [
            {
                "id": order_id * 10,
                "method": "visa",
                "amount": total,
                "tip": D("0.00"),
                "surcharge": D("0.00"),
                "paid_at": updated_at,
            }
        ],
        "refunds": [],
    }


def _with(order_id: int, change: Callable[[dict], Any]) -> dict:
    rec = good_order(order_id)
    change(rec)
    return rec


# ---------------------------------------------------------------------------------------------
# record level: (name, raw record(s), expected: "quarantine" | "load", reason fragment)


def record_cases() -> list[tuple[str, list[Any], str, str]]:
    big = "x" * (10 * 1024 * 1024)
    return [
        ("missing id", [_with(1, lambda r: r.pop("id"))], "quarantine", "id is missing"),
        ("id of the wrong type (string)", [_with(2, lambda r: r.update(id="2"))], "quarantine", "integer id"),
        ("id a float", [_with(3, lambda r: r.update(id=D("3.5")))], "quarantine", "integer id"),
        ("total as a string", [_with(4, lambda r: r.update(total="11.00"))], "quarantine", "JSON number"),
        (
            "money with 3 decimals",
            [_with(5, lambda r: r.update(discount=D("0.005")))],
            "quarantine",
            "more than 2 decimals",
        ),
        ("NaN", [_with(6, lambda r: r.update(total=D("NaN")))], "quarantine", "not a finite number"),
        ("Infinity", [_with(7, lambda r: r.update(tax=D("Infinity")))], "quarantine", "not a finite number"),
        ("huge number", [_with(8, lambda r: r.update(total=D("1e400")))], "quarantine", "out of range for money"),
        ("huge integer id", [_with(9, lambda r: r.update(id=2**70))], "quarantine", "out of range"),
        (
            "timestamp without offset",
            [_with(10, lambda r: r.update(created_at="2026-11-02T12:31:05"))],
            "quarantine",
            "no UTC offset",
        ),
        # values Python or JSON parsers accept and PostgreSQL does not: each costs only its record
        (
            "NaN in an unknown field",
            [_with(40, lambda r: r.update(x_meta={"score": D("NaN")}))],
            "quarantine",
            "not a finite number",
        ),
        (
            "Infinity in an item modifier",
            [
                _with(
                    41,
                    lambda r: r["items"][0].update(
                        modifiers=[{"id": 1, "name": "m", "quantity": 1, "price": D("-Infinity")}]
                    ),
                )
            ],
            "quarantine",
            "not a finite",
        ),
        (
            "year 1 that leaves years 1-9999 in UTC",
            [_with(42, lambda r: r.update(created_at="0001-01-01T00:00:00+05:00"))],
            "quarantine",
            "outside years 1-9999",
        ),
        (
            "year 9999 that becomes year 10000 in UTC",
            [_with(43, lambda r: r.update(completed_at="9999-12-31T23:59:59-05:00"))],
            "quarantine",
            "outside years 1-9999",
        ),
        (
            "offset +23:59 (PostgreSQL refuses it)",
            [_with(44, lambda r: r.update(updated_at="2026-11-02T12:40:00+23:59"))],
            "quarantine",
            "offset",
        ),
        (
            "offset with fractional seconds",
            [_with(45, lambda r: r["payments"][0].update(paid_at="2026-11-02T12:40:00+00:00:30.5"))],
            "quarantine",
            "offset with seconds",
        ),
        (
            "quantity 1e-20000 (beyond numeric)",
            [_with(46, lambda r: r["items"][0].update(quantity=D("1e-20000")))],
            "quarantine",
            "PostgreSQL cannot store",
        ),
        (
            "1e-20000 in an unknown field",
            [_with(47, lambda r: r.update(x_tiny=D("1e-20000")))],
            "quarantine",
            "PostgreSQL cannot store",
        ),
        (
            "the old marker text \u0000D42\u0000E",
            [_with(48, lambda r: r.update(number="\x00D42\x00E"))],
            "quarantine",
            "NUL",
        ),
        (
            "the old marker text \u0000Dfoo\u0000E in an unknown field",
            [_with(49, lambda r: r.update(x_n="\x00Dfoo\x00E"))],
            "quarantine",
            "NUL",
        ),
        (
            "a lone surrogate in a field name",
            [_with(50, lambda r: r.update({"x_\udc80": 1}))],
            "quarantine",
            "surrogate",
        ),
        ("a NUL in a field name", [_with(51, lambda r: r.update({"x_\x00": 1}))], "quarantine", "NUL"),
        ("timestamp not ISO", [_with(11, lambda r: r.update(updated_at="yesterday"))], "quarantine", "ISO 8601"),
        ("NUL byte in text", [_with(12, lambda r: r.update(number="A-12\x00"))], "quarantine", "NUL"),
        ("NUL byte in an unknown field", [_with(13, lambda r: r.update(x_note="a\x00b"))], "quarantine", "NUL"),
        ("10 MB record (a 10 MB item name)", [good_order(14, name=big)], "quarantine", "characters long"),
        ("negative quantity", [good_order(15, qty=-2)], "quarantine", "quantity must be positive"),
        (
            "items not a list",
            [_with(16, lambda r: r.update(items={"1": r["items"][0]}))],
            "quarantine",
            "must be a list",
        ),
        ("record not an object", ["order 17"], "quarantine", "not a JSON object"),
        ("wrong store_id", [_with(18, lambda r: r.update(store_id=9999))], "quarantine", "differs from the store"),
        ("arithmetic broken", [_with(19, lambda r: r.update(total=D("1.00")))], "quarantine", "total"),
        (
            "unknown fields (kept in raw)",
            [_with(20, lambda r: r.update(x_new={"nested": [1, {"a": "☕"}]}))],
            "load",
            "",
        ),
        ("10 MB unknown field (kept in raw)", [_with(21, lambda r: r.update(x_blob=big))], "load", ""),
        (
            "same id twice, different content (newest wins)",
            [
                good_order(22, updated_at="2026-11-02T12:40:00+11:00"),
                good_order(22, updated_at="2026-11-02T13:40:00+11:00", qty=3),
            ],
            "load",
            "",
        ),
        (
            "same id twice, same version, different content (last seen wins)",
            [good_order(23, qty=2), good_order(23, qty=4)],
            "load",
            "",
        ),
        *[
            (f"SQL injection #{i} in every text field", [injected_order(30 + i, s)], "load", "")
            for i, s in enumerate(INJECTIONS)
        ],
    ]


TEXT_PATHS = (
    ("number",),
    ("source",),
    ("fulfillment_type",),
    ("cashier", "name"),
    ("customer", "name"),
    ("items", 0, "sku"),
    ("items", 0, "name"),
    ("items", 0, "category"),
    ("payments", 0, "method"),
    ("refunds", 0, "reason"),
)


def injected_order(order_id: int, text: str) -> dict:
    rec = good_order(order_id)
    rec["status"] = "partially_refunded"
    rec["refunds"] = [{"id": order_id * 10 + 5, "amount": D("1.00"), "reason": text, "refunded_at": rec["updated_at"]}]
    for path in TEXT_PATHS:
        obj = rec
        for p in path[:-1]:
            obj = obj[p]
        obj[path[-1]] = text
    rec["currency"] = text[:10]  # currency is limited to 10 characters: the injection's first 10
    return rec


@dataclass
class CaseResult:
    name: str
    expected: str
    ok: bool
    detail: str


def run_record_cases(conn: psycopg.Connection) -> list[CaseResult]:
    """Every record case in one window, next to a valid sentinel order that must load."""
    load_stores(conn, [store_record()])
    cases = record_cases()
    pages = [[good_order(999, name="sentinel")]] + [copy.deepcopy(records) for _, records, _, _ in cases]
    with OrderWindowLoad(conn, window="badinput") as load:
        for page in pages:
            # a record that cannot even be serialised for jsonb (NaN) must not cost the page
            load.add_page(STORE_ID, page)
        load.finish()
    cur = conn.cursor()
    cur.execute(
        "select record_key, reason, raw is not null or raw_text is not null from taptouch.quarantine"
        " where \"window\" = 'badinput'"
    )
    quarantine = cur.fetchall()
    cur.execute("select order_id, updated_at, total, raw from taptouch.orders")
    orders = {r[0]: r[1:] for r in cur.fetchall()}
    results = [CaseResult("a valid order next to the bad ones", "load", 999 in orders, "sentinel")]
    for name, records, expected, fragment in cases:
        first = records[0]
        oid = first.get("id") if isinstance(first, dict) else None
        key = boundary.record_key("order", first)
        if expected == "quarantine":
            hits = [q for q in quarantine if fragment in q[1] and q[0] == key]
            loaded = isinstance(oid, int) and oid in orders
            ok = bool(hits) and not loaded and all(h[2] for h in hits)
            detail = hits[0][1] if hits else f"not quarantined (loaded={loaded})"
        else:
            ok, detail = _check_loaded(cur, records, orders)
        results.append(CaseResult(name, expected, ok, detail[:160]))
    cur.close()
    return results


def _check_loaded(cur: psycopg.Cursor, records: list[dict], orders: dict) -> tuple[bool, str]:
    newest = max(records, key=lambda r: r["updated_at"])  # same version: the last one
    if sum(1 for r in records if r["updated_at"] == newest["updated_at"]) > 1:
        newest = records[-1]
    oid = newest["id"]
    if oid not in orders:
        return False, "not loaded"
    updated_at, total, _ = orders[oid]
    cur.execute("select raw = %s::jsonb from taptouch.orders where order_id = %s", (jsonutil.dumps(newest), oid))
    if total != newest["total"] or not cur.fetchone()[0]:
        return False, f"stored {total}, expected {newest['total']}, or raw is not the record as sent"
    if any(k.startswith("x_") for k in newest):
        return True, "loaded; unknown fields kept in raw"
    if newest["number"] in INJECTIONS:
        text = newest["number"]
        cur.execute(
            "select count(*) from taptouch.orders o join taptouch.order_items i using (order_id)"
            " join taptouch.order_payments p using (order_id) join taptouch.order_refunds r using (order_id)"
            " where o.order_id = %s and o.number = %s and o.source = %s and o.fulfillment_type = %s"
            " and o.currency = left(%s, 10) and o.cashier_name = %s and o.customer_name = %s and i.sku = %s"
            " and i.name = %s and i.category = %s and p.method = %s and r.reason = %s",
            (oid, *([text] * 11)),
        )
        if cur.fetchone()[0] != 1:
            return False, "a text field was not stored literally"
        return True, "stored literally in every text field"
    return True, f"loaded version {updated_at.isoformat()} total {total}"


# ---------------------------------------------------------------------------------------------
# envelope level: (name, HTTP status, headers, body, expected error type, message fragment)


def envelope_cases() -> list[tuple[str, int, dict, bytes, type, str]]:
    ok_page = b'{"status":{"timestamp":1,"ack":200,"errors":null},"data":[]}'
    return [
        (
            "non-JSON body (HTML) with HTTP 200",
            200,
            {"Content-Type": "text/html"},
            b"<html><body>maintenance</body></html>",
            TaptouchProtocolError,
            "not JSON",
        ),
        ("truncated JSON", 200, {}, ok_page[:30], TaptouchProtocolError, "not JSON"),
        ("missing envelope (bare list)", 200, {}, b'[{"id": 1}]', TaptouchProtocolError, "envelope"),
        ("missing envelope (no status)", 200, {}, b'{"data": []}', TaptouchProtocolError, "envelope"),
        (
            "data not a list",
            200,
            {},
            b'{"status":{"ack":200},"data":{"id":1}}',
            TaptouchProtocolError,
            "expected a list",
        ),
        ("data a string", 200, {}, b'{"status":{"ack":200},"data":"[]"}', TaptouchProtocolError, "expected a list"),
        (
            "ack 403 inside HTTP 200",
            200,
            {},
            b'{"status":{"ack":403,"errors":{"code":"store_forbidden","message":"no"}},"data":null}',
            TaptouchAPIError,
            "store_forbidden",
        ),
        (
            "ack 500 inside HTTP 200, every time",
            200,
            {},
            b'{"status":{"ack":500,"errors":"boom"},"data":null}',
            TaptouchAPIError,
            "ack 500",
        ),
        (
            "ack 200 inside HTTP 500 (HTML proxy page)",
            500,
            {"Content-Type": "text/html"},
            b"<html>500</html>",
            TaptouchAPIError,
            "HTTP 500",
        ),
        (
            "ack 200 inside HTTP 422",
            422,
            {},
            b'{"status":{"ack":200,"errors":null},"data":[]}',
            TaptouchAPIError,
            "HTTP 422",
        ),
        ("ack a string", 200, {}, b'{"status":{"ack":"OK"},"data":[]}', TaptouchAPIError, "ack"),
        ("server ignores index (same full page forever)", 200, {}, None, TaptouchProtocolError, "ignore"),
        (
            "429 forever with Retry-After garbage",
            429,
            {"Retry-After": "soon"},
            b'{"status":{"ack":429,"errors":"slow"},"data":null}',
            TaptouchAPIError,
            "429",
        ),
    ]


def _client(status: int, headers: dict, body: bytes | None) -> TaptouchClient:
    full_page = jsonutil.dumps({"status": {"ack": 200}, "data": [{"id": i} for i in range(5)]}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == api.TOKEN_PATH:
            return httpx.Response(200, content=TOKEN_BODY, headers={"Content-Type": "application/json"})
        return httpx.Response(status, headers=headers, content=full_page if body is None else body)

    return TaptouchClient(
        client_id="c",
        client_secret="s",
        transport=httpx.MockTransport(handler),
        page_size=5,
        requests_per_second=None,
        sleep=lambda s: None,
        max_retries=2,
    )


def run_envelope_cases() -> list[CaseResult]:
    results = []
    for name, status, headers, body, expected, fragment in envelope_cases():
        client = _client(status, headers, body)
        try:
            list(client.iter_orders(STORE_ID, updated_from=_T0, updated_to=_T1))
        except TaptouchError as exc:
            ok = isinstance(exc, expected) and fragment in str(exc)
            results.append(CaseResult(name, expected.__name__, ok, f"{type(exc).__name__}: {exc}"[:200]))
        except Exception as exc:  # an untyped error is a failure of the catalogue
            results.append(CaseResult(name, expected.__name__, False, f"untyped {type(exc).__name__}: {exc}"[:200]))
        else:
            results.append(CaseResult(name, expected.__name__, False, "no error raised"))
        finally:
            client.close()
    return results


from datetime import UTC, datetime  # noqa: E402

_T0 = datetime(2026, 11, 2, tzinfo=UTC)
_T1 = datetime(2026, 11, 3, tzinfo=UTC)
