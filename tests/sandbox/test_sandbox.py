"""The sandbox is a faithful fake of the Taptouch API contract: these pin the behaviour clients rely on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from email.utils import parsedate_to_datetime
from zoneinfo import ZoneInfo

import httpx
import pytest

from taptouch_sandbox import Faults, Sandbox, SandboxConfig
from tests.support import truth

END = date(2026, 11, 27)
BASE = "https://api.taptouch.net"
CENT = Decimal("0.01")


def make(**overrides) -> Sandbox:
    cfg = dict(seed=1, stores=3, days=10, end_date=END, orders_per_day=40)
    faults = overrides.pop("faults", None)
    clock = overrides.pop("clock", time.time)
    cfg.update(overrides)
    return Sandbox(SandboxConfig(**cfg), faults=faults or Faults(), clock=clock)


def client(sb: Sandbox) -> httpx.Client:
    return httpx.Client(base_url=BASE, transport=sb.transport())


def token_request(c: httpx.Client, **fields) -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "sandbox-secret"}
    data.update(fields)
    return c.post("/auth/v2/token", data={k: v for k, v in data.items() if v is not None})


def parse(r: httpx.Response):
    return json.loads(r.content, parse_float=Decimal)


def auth(sb: Sandbox, scopes=None) -> dict:
    return {"Authorization": f"bearer {sb.issue_token(scopes)}"}


def fetch_all(c: httpx.Client, path: str, headers: dict, count: int = 100, **params) -> list[list[dict]]:
    pages = []
    for index in range(10_000):
        r = c.get(path, headers=headers, params={"index": index, "count": count, **params})
        assert r.status_code == 200, r.text
        page = parse(r)["data"]
        pages.append(page)
        if len(page) < count:
            return pages
    raise AssertionError("pagination never ended")


@pytest.fixture(scope="module")
def sb() -> Sandbox:
    return make()


def cents(value: Decimal) -> int:
    assert isinstance(value, Decimal) and value == value.quantize(CENT), value
    return int(value * 100)


def half_up(a: int, b: int) -> int:
    return int((Decimal(a) / b).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def check_arithmetic(o: dict) -> None:
    subtotal = 0
    item_ids = [i["id"] for i in o["items"]]
    assert len(item_ids) == len(set(item_ids))
    for item in o["items"]:
        mods = sum(cents(m["price"]) * m["quantity"] for m in item["modifiers"])
        line = item["quantity"] * (cents(item["unit_price"]) + mods) - cents(item["discount"])
        assert cents(item["total"]) == line, (o["id"], item)
        subtotal += line
    assert cents(o["subtotal"]) == subtotal
    total = cents(o["total"])
    assert total == subtotal - cents(o["discount"]) + cents(o["surcharge"]) + cents(o["rounding"])
    assert cents(o["surcharge"]) == sum(cents(p["surcharge"]) for p in o["payments"])
    assert cents(o["tips"]) == sum(cents(p["tip"]) for p in o["payments"])
    assert cents(o["tax"]) == half_up(total, 11)
    paid = sum(cents(p["amount"]) for p in o["payments"])
    methods = {p["method"] for p in o["payments"]}
    if "cash" in methods:
        assert total % 5 == 0
    else:
        assert cents(o["rounding"]) == 0
    refunded = sum(cents(r["amount"]) for r in o["refunds"])
    status = o["status"]
    created = datetime.fromisoformat(o["created_at"])
    updated = datetime.fromisoformat(o["updated_at"])
    assert created.tzinfo is not None and updated >= created
    if status in ("completed", "partially_refunded", "refunded"):
        assert paid == total and o["completed_at"] is not None
        assert created <= datetime.fromisoformat(o["completed_at"]) <= updated
    else:
        assert o["completed_at"] is None and paid < max(total, 1)
    if status == "refunded":
        assert refunded == total
    elif status == "partially_refunded":
        assert 0 < refunded < total
    else:
        assert o["refunds"] == []


# ---------------------------------------------------------------------------- OAuth
def test_token_grant_and_denials(sb):
    with client(sb) as c:
        r = token_request(c, scope="integration.order integration.store")
        assert r.status_code == 200
        body = r.json()
        assert body["token_type"] == "Bearer" and body["expires_in"] == 172800
        assert body["scope"].split() == ["integration.order", "integration.store"]
        assert "refresh_token" not in body and len(body["access_token"]) > 20
        assert set(token_request(c).json()["scope"].split()) == set(sb.config.granted_scopes)

        r = token_request(c, client_secret="wrong")
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"
        assert "wrong" not in r.text
        r = token_request(c, grant_type="password")
        assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"
        r = token_request(c, scope="integration.order admin.everything")
        assert r.status_code == 400 and r.json()["error"] == "invalid_scope"
        # the documented curl sends multipart; accepted too
        r = c.post(
            "/auth/v2/token",
            files={
                "grant_type": (None, "client_credentials"),
                "client_id": (None, "sandbox-client"),
                "client_secret": (None, "sandbox-secret"),
                "scope": (None, "integration.inventory"),
            },
        )
        assert r.status_code == 200 and r.json()["scope"] == "integration.inventory"


def test_granted_scope_narrower_than_requested():
    sb = make(granted_scopes=("integration.store",))
    with client(sb) as c:
        r = token_request(c, scope="integration.store integration.order")
        assert r.status_code == 200 and r.json()["scope"] == "integration.store"
        headers = {"Authorization": "Bearer " + r.json()["access_token"]}
        r = c.get("/integration/v1/stores/7101/orders", headers=headers)
        assert r.status_code == 403 and parse(r)["status"]["errors"]["code"] == "insufficient_scope"
        assert c.get("/integration/v1/stores", headers=headers).status_code == 200


def test_bearer_tokens_invalid_expired_revoked():
    now = [1_800_000_000.0]
    sb = make(clock=lambda: now[0], faults=Faults(token_lifetime=100))
    with client(sb) as c:
        tok = token_request(c).json()
        assert tok["expires_in"] == 100
        for scheme in ("bearer", "Bearer", "BEARER"):
            assert (
                c.get(
                    "/integration/v1/stores", headers={"Authorization": f"{scheme} {tok['access_token']}"}
                ).status_code
                == 200
            )
        for headers in ({}, {"Authorization": "bearer nope"}, {"Authorization": "Basic abc"}):
            r = c.get("/integration/v1/stores", headers=headers)
            assert r.status_code == 401 and parse(r)["status"]["errors"]["code"] == "invalid_token"
        now[0] += 100
        r = c.get("/integration/v1/stores", headers={"Authorization": f"bearer {tok['access_token']}"})
        assert r.status_code == 401 and "expired" in parse(r)["status"]["errors"]["message"]
        headers = auth(sb)
        assert c.get("/integration/v1/stores", headers=headers).status_code == 200
        sb.revoke_all_tokens()
        assert c.get("/integration/v1/stores", headers=headers).status_code == 401


# ---------------------------------------------------------------------------- envelope, pagination, windows
def test_envelope_and_store_pagination(sb):
    headers = auth(sb)
    with client(sb) as c:
        r = c.get("/integration/v1/stores", headers=headers, params={"count": 2})
        body = parse(r)
        assert r.status_code == 200 and body["status"]["ack"] == 200 and body["status"]["errors"] is None
        assert isinstance(body["status"]["timestamp"], int)
        pages = fetch_all(c, "/integration/v1/stores", headers, count=2)
        assert [len(p) for p in pages] == [2, 1]  # a short page is the last
        assert [s for p in pages for s in p] == sb.stores()
        assert {s["timezone"] for s in sb.stores()} == {"Australia/Sydney", "Australia/Perth", "Pacific/Auckland"}
        for params, name in (
            ({"count": 501}, "count"),
            ({"count": 0}, "count"),
            ({"count": "ten"}, "count"),
            ({"index": -1}, "index"),
            ({"updated_from": "2026-11-20T00:00:00"}, "updated_from"),
            ({"updated_to": "yesterday"}, "updated_to"),
            ({"status": "lost"}, "status"),
        ):
            r = c.get("/integration/v1/stores/7101/orders", headers=headers, params=params)
            assert r.status_code == 422, params
            body = parse(r)
            assert body["status"]["ack"] == 422 and body["status"]["errors"]["parameter"] == name
        assert c.get("/integration/v1/stores", headers=headers, params={"count": 500}).status_code == 200
        r = c.get("/integration/v1/stores/9999/orders", headers=headers)
        assert r.status_code == 404 and parse(r)["status"]["ack"] == 404


def test_orders_pages_equal_helpers_and_are_sorted(sb):
    headers = auth(sb)
    with client(sb) as c:
        pages = fetch_all(c, "/integration/v1/stores/7102/orders", headers, count=37)
    served = [o for p in pages for o in p]
    assert all(len(p) == 37 for p in pages[:-1]) and len(pages[-1]) < 37
    assert served == sb.orders_in_window(7102, None, None)
    keys = [(datetime.fromisoformat(o["updated_at"]), o["id"]) for o in served]
    assert keys == sorted(keys) and len({o["id"] for o in served}) == len(served)
    assert sorted(served, key=lambda o: o["id"]) == list(sb.orders(7102))


def test_window_is_half_open_on_updated_at(sb):
    orders = list(sb.orders(7101))
    target = orders[len(orders) // 2]
    u = datetime.fromisoformat(target["updated_at"])
    headers = auth(sb)
    with client(sb) as c:

        def ids(f, t):
            r = c.get(
                "/integration/v1/stores/7101/orders",
                headers=headers,
                params={"updated_from": f.isoformat(), "updated_to": t.isoformat(), "count": 500},
            )
            assert r.status_code == 200
            return {o["id"] for o in parse(r)["data"]}

        assert target["id"] in ids(u, u + timedelta(seconds=1))
        assert target["id"] not in ids(u - timedelta(hours=1), u)
        # the same instant written in another offset selects the same orders
        utc = u.astimezone(UTC)
        assert ids(utc, utc + timedelta(hours=3)) == ids(u, u + timedelta(hours=3))
        r = c.get("/integration/v1/stores/7101/orders", headers=headers, params={"status": "refunded", "count": 500})
        assert {o["status"] for o in parse(r)["data"]} == {"refunded"}
    # consecutive windows partition the orders: every order exactly once
    start = datetime.combine(END - timedelta(days=12), datetime.min.time(), UTC)
    seen = []
    for day in range(14):
        f = start + timedelta(days=day)
        seen += [o["id"] for o in sb.orders_in_window(7101, f, f + timedelta(days=1))]
    assert sorted(seen) == sorted(o["id"] for o in orders)


# ---------------------------------------------------------------------------- data
def test_every_order_satisfies_the_contract_arithmetic(sb):
    statuses = defaultdict(int)
    payment_ids, refund_ids, order_ids = [], [], []
    for sid in sb.store_ids():
        for o in sb.orders(sid):
            check_arithmetic(o)
            statuses[o["status"]] += 1
            order_ids.append(o["id"])
            payment_ids += [p["id"] for p in o["payments"]]
            refund_ids += [r["id"] for r in o["refunds"]]
    assert set(statuses) == {"completed", "open", "voided", "partially_refunded", "refunded"}
    assert len(order_ids) == len(set(order_ids)) > 1000
    assert len(payment_ids) == len(set(payment_ids)) and len(refund_ids) == len(set(refund_ids))


def test_money_is_emitted_with_exactly_two_decimals(sb):
    with client(sb) as c:
        text = c.get("/integration/v1/stores/7103/orders", headers=auth(sb), params={"count": 200}).text
    money = re.findall(
        r'"(?:subtotal|discount|surcharge|rounding|tax|total|tips|unit_price|price|amount|tip)":([-0-9.]+)', text
    )
    assert len(money) > 1000 and all(re.fullmatch(r"-?\d+\.\d\d", m) for m in money)


def test_determinism_and_seed_sensitivity(sb):
    again = make()
    assert again.stores() == sb.stores()
    assert list(again.orders(7103)) == list(sb.orders(7103))
    assert again.inventory(7101) == sb.inventory(7101)
    other = make(seed=2)
    assert list(other.orders(7103)) != list(sb.orders(7103))


def test_business_date_edge_cases_exist(sb):
    late = early = utc_date_differs = False
    for sid, store in zip(sb.store_ids(), sb.stores(), strict=False):
        tz = ZoneInfo(store["timezone"])
        for o in sb.orders(sid):
            created = datetime.fromisoformat(o["created_at"])
            local = created.astimezone(tz)
            assert created.utcoffset() == local.utcoffset()  # timestamps carry the store's own offset
            late |= local.hour == 23 and local.minute >= 50
            early |= local.hour == 0 and local.minute <= 15
            utc_date_differs |= created.astimezone(UTC).date() != local.date()
    assert late and early and utc_date_differs


def test_customer_nullable_and_variety(sb):
    orders = list(sb.orders(7101))
    assert any(o["customer"] is None for o in orders) and any(o["customer"] for o in orders)
    assert {o["source"] for o in orders} >= {"pos", "kiosk", "online", "ubereats", "doordash"}
    assert {o["fulfillment_type"] for o in orders} == {"dine_in", "takeaway", "delivery", "pickup"}
    assert any(o["tips"] > 0 for o in orders) and any(o["surcharge"] > 0 for o in orders)
    assert any(o["rounding"] != 0 for o in orders)
    assert any(
        datetime.fromisoformat(o["updated_at"]) - datetime.fromisoformat(o["completed_at"]) > timedelta(hours=1)
        for o in orders
        if o["completed_at"]
    )


def test_inventory_levels_and_filter(sb):
    rows = sb.inventory(7101)
    assert 30 <= len(rows) <= 60
    assert any(r["on_hand"] < 0 for sid in sb.store_ids() for r in sb.inventory(sid))
    assert any(r["unit"] in ("kg", "l") and r["on_hand"] != r["on_hand"].to_integral_value() for r in rows)
    headers = auth(sb)
    with client(sb) as c:
        served = [r for p in fetch_all(c, "/integration/v1/stores/7101/inventory", headers, count=25) for r in p]
        assert served == rows
        since = datetime(2026, 11, 20, tzinfo=UTC)
        recent = [
            r
            for p in fetch_all(c, "/integration/v1/stores/7101/inventory", headers, updated_from=since.isoformat())
            for r in p
        ]
    assert recent == [r for r in rows if datetime.fromisoformat(r["updated_at"]) >= since] and 0 < len(recent) < len(
        rows
    )


def test_edit_order_publishes_a_later_valid_version():
    sb = make(stores=1, days=3)
    original = next(o for o in sb.orders(7101) if o["status"] == "completed")
    edited = sb.edit_order(original["id"], status="partially_refunded")
    check_arithmetic(edited)
    assert datetime.fromisoformat(edited["updated_at"]) == datetime.fromisoformat(original["updated_at"]) + timedelta(
        hours=1
    )
    assert sb.order(original["id"]) == edited
    u = datetime.fromisoformat(edited["updated_at"])
    assert edited in sb.orders_in_window(7101, u, u + timedelta(seconds=1))
    voided = sb.edit_order(original["id"], status="voided", updated_at=u + timedelta(hours=2))
    check_arithmetic(voided)
    assert voided["payments"] == [] and voided["refunds"] == []
    assert datetime.fromisoformat(voided["updated_at"]) == u + timedelta(hours=2)
    old_u = datetime.fromisoformat(original["updated_at"])
    assert original["id"] not in {o["id"] for o in sb.orders_in_window(7101, old_u, old_u + timedelta(seconds=1))}


def test_truth_daily_store_sales_matches_a_recomputation_from_served_json(sb):
    tz = ZoneInfo("Australia/Perth")  # store 7102
    day = END - timedelta(days=3)
    headers = auth(sb)
    with client(sb) as c:
        raw = [o for p in fetch_all(c, "/integration/v1/stores/7102/orders", headers, count=500) for o in p]
    mine = [
        o
        for o in raw
        if o["status"] in ("completed", "partially_refunded", "refunded")
        and datetime.fromisoformat(o["created_at"]).astimezone(tz).date() == day
    ]
    total = sum(o["total"] for o in mine)
    refunds = sum(r["amount"] for o in mine for r in o["refunds"])
    expected = {
        "order_count": len(mine),
        "gross_sales": sum(o["subtotal"] for o in mine),
        "discounts": sum(o["discount"] for o in mine),
        "refunds": refunds,
        "net_sales": total - refunds,
        "tax": sum(o["tax"] for o in mine),
        "avg_order_value": (total / len(mine)).quantize(CENT, rounding=ROUND_HALF_UP),
    }
    sales = truth.daily_store_sales(sb)
    assert sales[(7102, day)] == expected and expected["order_count"] > 20 and refunds > 0
    assert len(sales) == 3 * 10
    assert set(truth.orders_by_id(sb)) == {o["id"] for sid in sb.store_ids() for o in sb.orders(sid)}


# ---------------------------------------------------------------------------- faults
def test_rate_limit_bursts_with_retry_after_forms():
    sb = make(stores=1, days=1)
    headers = auth(sb)
    with client(sb) as c:
        sb.faults.rate_limit_every, sb.faults.rate_limit_burst, sb.faults.retry_after = 3, 2, "0"
        codes = [c.get("/integration/v1/stores", headers=headers) for _ in range(7)]
        assert [r.status_code for r in codes] == [200, 200, 429, 429, 200, 429, 429]
        limited = codes[2]
        assert limited.headers["Retry-After"] == "0" and parse(limited)["status"]["ack"] == 429
        sb.faults.retry_after = "date"
        sb.faults.rate_limit_every = 1
        r = c.get("/integration/v1/stores", headers=headers)
        ahead = parsedate_to_datetime(r.headers["Retry-After"]) - datetime.now(UTC)
        assert r.status_code == 429 and timedelta(0) < ahead <= timedelta(seconds=3)
    assert sb.stats.responses_by_status[429] == 5 and sb.stats.api_requests == 8


def test_server_errors_are_html_and_token_endpoint_fails_too():
    sb = make(stores=1, days=1, faults=Faults(server_error_every=1))
    with client(sb) as c:
        rs = [c.get("/integration/v1/stores", headers=auth(sb)) for _ in range(3)]
        assert [r.status_code for r in rs] == [500, 502, 503]
        assert rs[1].text == "<html><body><h1>502 Bad Gateway</h1></body></html>"
        assert rs[1].headers["content-type"].startswith("text/html")
        sb.faults.server_error_every = 0
        sb.faults.token_errors_every = 2
        codes = [token_request(c).status_code for _ in range(4)]
        assert codes == [200, 503, 200, 429]


def test_ack_mismatch_revocation_and_forbidden_store():
    sb = make(stores=3, days=1, faults=Faults(ack_mismatch_every=2))
    with client(sb) as c:
        headers = auth(sb)
        first, second = (c.get("/integration/v1/stores", headers=headers) for _ in range(2))
        assert parse(first)["status"]["ack"] == 200
        body = parse(second)
        assert second.status_code == 200 and body["status"]["ack"] == 500 and isinstance(body["status"]["errors"], str)
        sb.faults.ack_mismatch_every = 0

        sb.faults.revoke_tokens_every = 2
        codes = [c.get("/integration/v1/stores", headers=headers).status_code for _ in range(3)]
        assert codes == [200, 200, 401]
        sb.faults.revoke_tokens_every = 0

        headers = auth(sb)
        sb.faults.forbidden_stores.add(7103)
        for path in ("/integration/v1/stores/7103/orders", "/integration/v1/stores/7103/inventory"):
            r = c.get(path, headers=headers)
            assert r.status_code == 403 and parse(r)["status"]["errors"]["code"] == "store_forbidden"
        assert 7103 in {s["id"] for s in parse(c.get("/integration/v1/stores", headers=headers))["data"]}
        assert c.get("/integration/v1/stores/7102/orders", headers=headers).status_code == 200


def test_duplicate_page_boundary_repeats_exactly_one_record_per_page():
    sb = make(stores=1, days=4, faults=Faults(duplicate_page_boundary=True))
    truth_ids = [o["id"] for o in sb.orders_in_window(7101, None, None)]
    with client(sb) as c:
        pages = fetch_all(c, "/integration/v1/stores/7101/orders", auth(sb), count=50)
    assert all(len(p) == 50 for p in pages[:-1]) and len(pages) >= 3
    later_pages = [page for page in pages[1:] if page]  # the last page may be empty
    assert [page[0] for page in later_pages] == [prev[-1] for prev, page in zip(pages, pages[1:], strict=False) if page]
    served = [o["id"] for p in pages for o in p]
    assert len(served) - len(set(served)) == len(later_pages)  # one repeat per later page, nothing else
    assert sorted(set(served)) == sorted(truth_ids)


def test_ignore_index_serves_the_same_page_again():
    sb = make(stores=1, days=4, faults=Faults(ignore_index=True))
    with client(sb) as c:
        headers = auth(sb)
        p0, p1 = (
            parse(c.get("/integration/v1/stores/7101/orders", headers=headers, params={"index": i, "count": 20}))[
                "data"
            ]
            for i in (0, 1)
        )
    assert p0 == p1 and len(p0) == 20


def test_malformed_and_extra_fields():
    sb = make(stores=2, days=3, faults=Faults(malformed_every=7))
    bad = sb.malformed_order_ids()
    headers = auth(sb)
    with client(sb) as c:
        served = {
            o["id"]: o
            for sid in sb.store_ids()
            for p in fetch_all(c, f"/integration/v1/stores/{sid}/orders", headers, count=500)
            for o in p
        }
    clean = {o["id"]: o for sid in sb.store_ids() for o in sb.orders(sid)}
    assert 0 < len(bad) < len(clean) / 3 and bad <= set(served)
    assert {sb.malformed_kind(i) for i in bad} == {
        "missing_total",
        "total_not_a_number",
        "created_at_without_offset",
        "items_not_a_list",
        "nul_in_number",
        "subtotal_three_decimals",
    }
    for oid, o in served.items():
        if oid not in bad:
            assert o == clean[oid]
            continue
        kind = sb.malformed_kind(oid)
        assert o != clean[oid]
        if kind == "missing_total":
            assert "total" not in o
        elif kind == "total_not_a_number":
            assert o["total"] == "abc"
        elif kind == "created_at_without_offset":
            assert datetime.fromisoformat(o["created_at"]).tzinfo is None
        elif kind == "items_not_a_list":
            assert not isinstance(o["items"], list)
        elif kind == "nul_in_number":
            assert "\x00" in o["number"]
        else:
            assert o["subtotal"].as_tuple().exponent == -3

    sb.faults.malformed_every = 0
    sb.faults.extra_fields = True
    with client(sb) as c:
        store = parse(c.get("/integration/v1/stores", headers=headers))["data"][0]
        order = parse(c.get("/integration/v1/stores/7101/orders", headers=headers, params={"count": 1}))["data"][0]
    assert store["x_loyalty_tier"] == "gold" and isinstance(store["x_meta"], dict)
    assert {k: v for k, v in store.items() if not k.startswith("x_")} == sb.stores()[0]
    assert order["x_meta"]["nested"] == {"flag": True, "list": [1, None]}
    assert all("x_kitchen_station" in i for i in order["items"])


def test_timeout_fault_in_process_raises_read_timeout():
    sb = make(stores=1, days=1, faults=Faults(timeout_every=2))
    with client(sb) as c:
        headers = auth(sb)
        assert c.get("/integration/v1/stores", headers=headers).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            c.get("/integration/v1/stores", headers=headers)


# ---------------------------------------------------------------------------- real HTTP and the CLI
def test_real_http_server_serves_the_same_data_and_stalls():
    sb = make(stores=2, days=2, faults=Faults(latency=0.0))
    with sb.serve() as url, httpx.Client(base_url=url, timeout=5) as c:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        tok = token_request(c, scope="integration.order").json()["access_token"]
        headers = {"Authorization": f"Bearer {tok}"}
        served = [o for p in fetch_all(c, "/integration/v1/stores/7102/orders", headers, count=100) for o in p]
        assert served == sb.orders_in_window(7102, None, None) and len(served) > 50
        sb.faults.timeout_every, sb.faults.timeout_sleep = 1, 1.0
        with pytest.raises(httpx.ReadTimeout):
            c.get("/integration/v1/stores/7102/orders", headers=headers, timeout=0.2)
        sb.faults.timeout_every = 0
        sb.faults.latency = 0.3
        t0 = time.perf_counter()
        assert c.get("/integration/v1/stores/7102/inventory", headers=auth(sb)).status_code == 200
        assert time.perf_counter() - t0 >= 0.3
    assert sb.stats.orders_served >= len(served)


def test_cli_serves_until_sigterm():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "taptouch_sandbox",
            "serve",
            "--port",
            "0",
            "--stores",
            "2",
            "--days",
            "2",
            "--end-date",
            "2026-11-27",
            "--forbidden-store",
            "7102",
            "--client-secret",
            "s3cret",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        export = lines[2]
        url = re.search(r"TAPTOUCH_BASE_URL=(\S+)", export).group(1)
        assert "TAPTOUCH_CLIENT_SECRET=s3cret" in export and not url.endswith(":0")
        with httpx.Client(base_url=url, timeout=5) as c:
            r = c.post(
                "/auth/v2/token",
                data={"grant_type": "client_credentials", "client_id": "sandbox-client", "client_secret": "s3cret"},
            )
            headers = {"Authorization": f"bearer {r.json()['access_token']}"}
            assert [s["id"] for s in c.get("/integration/v1/stores", headers=headers).json()["data"]] == [7101, 7102]
            r = c.get("/integration/v1/stores/7102/orders", headers=headers)
            assert r.status_code == 403 and r.json()["status"]["errors"]["code"] == "store_forbidden"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_empty_and_inactive_stores_and_async_clients():
    import asyncio

    sb = make(stores=3, days=2, empty_store_ids=(7102,), inactive_store_ids=(7103,))
    assert [s["status"] for s in sb.stores()] == ["active", "active", "inactive"]
    assert list(sb.orders(7102)) == [] and sb.inventory(7102) == [] and list(sb.orders(7103))
    headers = auth(sb)

    async def fetch() -> httpx.Response:
        async with httpx.AsyncClient(base_url=BASE, transport=sb.transport()) as c:
            return await c.get("/integration/v1/stores/7102/orders", headers=headers)

    r = asyncio.run(fetch())
    assert r.status_code == 200 and parse(r)["data"] == []
