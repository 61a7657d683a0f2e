"""A small fake of the Taptouch API written from the API contract only (docs/api-model.md; not the sandbox):
envelope, index/count page numbers, orders filtered on [updated_from, updated_to) at full precision and
sorted by (updated_at, id)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from urllib.parse import parse_qs

import httpx
import msgspec

from taptouch_resource import TaptouchClient

_ENC = msgspec.json.Encoder(decimal_format="number")


def instant(s: str) -> Decimal:
    """Epoch seconds with every fractional digit."""
    head, frac = s[:19], ""
    rest = s[19:]
    if rest.startswith("."):
        i = 1
        while i < len(rest) and rest[i].isdigit():
            i += 1
        frac, rest = rest[1:i], rest[i:]
    at = datetime.fromisoformat(head + (rest.replace("Z", "+00:00")))
    return Decimal(int(at.timestamp())) + (Decimal("0." + frac) if frac else 0)


def env(data, ack=200, errors=None, status=200, headers=None, timestamp=None) -> httpx.Response:
    ts = int(time.time()) if timestamp is None else timestamp
    body = {"status": {"timestamp": ts, "ack": ack, "errors": errors}, "data": data}
    return httpx.Response(
        status, content=_ENC.encode(body), headers={"content-type": "application/json", **(headers or {})}
    )


class FakeAPI:
    def __init__(self, stores: list[dict], orders: dict[int, list[dict]] | None = None, inventory=None):
        self.stores = stores
        self.orders = orders or {}
        self.inventory = inventory or {}
        self.requests: list[httpx.Request] = []
        self.after: Callable[[httpx.Request], None] = lambda r: None
        self.before: Callable[[httpx.Request], httpx.Response | None] = lambda r: None
        self.sort: Callable[[dict], object] = lambda o: (instant(o["updated_at"]), o["id"])
        self.clock: Callable[[], int] | None = None  # the API's clock (status.timestamp), default: this machine's
        # one page of the filtered, sorted rows (index, count): a server's page rules (default: a slice)
        self.pager: Callable[[list, int, int], list] = lambda rows, index, count: rows[
            index * count : (index + 1) * count
        ]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/v2/token":
            return httpx.Response(
                200,
                json={
                    "access_token": "tok",
                    "token_type": "Bearer",
                    "expires_in": 172800,
                    "scope": "integration.store integration.order integration.inventory",
                },
            )
        self.requests.append(request)
        early = self.before(request)
        if early is not None:
            return early
        q = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        index, count = int(q.get("index", 0)), int(q.get("count", 100))
        if count > 500:
            return env(None, ack=422, errors={"code": "invalid_parameter", "message": "count"}, status=422)
        path = request.url.path
        if path == "/integration/v1/stores":
            rows = list(self.stores)
        elif path.endswith("/orders"):
            sid = int(path.split("/")[-2])
            rows = sorted(self.orders.get(sid, []), key=self.sort)
            lo = instant(q["updated_from"]) if "updated_from" in q else None
            hi = instant(q["updated_to"]) if "updated_to" in q else None
            rows = [
                o
                for o in rows
                if (lo is None or instant(o["updated_at"]) >= lo) and (hi is None or instant(o["updated_at"]) < hi)
            ]
        elif path.endswith("/inventory"):
            sid = int(path.split("/")[-2])
            rows = list(self.inventory.get(sid, []))
        else:
            return env(None, ack=404, errors="not found", status=404)
        page = self.pager(rows, index, count) if path.endswith("/orders") else rows[index * count : (index + 1) * count]
        response = env(page, timestamp=None if self.clock is None else self.clock())
        self.after(request)
        return response


def client_of(handler, page_size: int = 100, **kw) -> TaptouchClient:
    return TaptouchClient(
        client_id="cid",
        client_secret="s3cret",
        base_url="https://api.test",
        transport=httpx.MockTransport(handler),
        page_size=page_size,
        requests_per_second=None,
        sleep=lambda s: None,
        **kw,
    )


def store(sid: int, tz: str = "Australia/Melbourne") -> dict:
    return {
        "id": sid,
        "name": f"Store {sid}",
        "business_name": "B",
        "status": "active",
        "timezone": tz,
        "currency": "AUD",
        "address": None,
        "phone": None,
        "email": None,
        "created_at": "2023-04-01T09:00:00+11:00",
        "updated_at": "2026-10-02T10:15:00+10:00",
    }


def order(oid: int, sid: int, updated_at: str, created_at: str | None = None, total: str = "10.00") -> dict:
    return {
        "id": oid,
        "number": f"A-{oid}",
        "store_id": sid,
        "source": "pos",
        "fulfillment_type": "dine_in",
        "status": "completed",
        "cashier": {"id": 17, "name": "Jess"},
        "customer": None,
        "created_at": created_at or updated_at,
        "updated_at": updated_at,
        "completed_at": updated_at,
        "currency": "AUD",
        "subtotal": Decimal(total),
        "discount": Decimal("0.00"),
        "surcharge": Decimal("0.00"),
        "rounding": Decimal("0.00"),
        "tax": Decimal("0.91"),
        "total": Decimal(total),
        "tips": Decimal("0.00"),
        "redeem_points": 0,
        "items": [
            {
                "id": 1,
                "product_id": 3301,
                "sku": "X",
                "name": "X",
                "category": "C",
                "quantity": 1,
                "unit_price": Decimal(total),
                "discount": Decimal("0.00"),
                "tax": Decimal("0.91"),
                "total": Decimal(total),
                "modifiers": [],
            }
        ],
        "payments": [
            {
                "id": 1,
                "method": "cash",
                "amount": Decimal(total),
                "tip": Decimal("0.00"),
                "surcharge": Decimal("0.00"),
                "paid_at": updated_at,
            }
        ],
        "refunds": [],
    }
