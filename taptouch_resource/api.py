"""Every modelled detail of the Taptouch API in one place.

Taptouch documents its OAuth endpoints, scopes, the response envelope and ``index``/``count``
pagination. The Store, Order and Inventory *record shapes* and the order-list filters are modelled
(see the project README). Every path, query parameter and field name the project relies on lives
in this module, and so does the mapping from an API record to the warehouse row: meeting the real
API later means editing this file, not the client, the loader or the pipeline.

The ``parse_*`` functions validate one record and return plain dicts keyed by warehouse column
names. A record that breaks a rule raises :class:`InvalidRecord` with a reason a person
understands; the loader quarantines it and loads everything else.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# --------------------------------------------------------------------------------------------
# Endpoints and OAuth [doc]
DEFAULT_BASE_URL = "https://api.taptouch.net"
TOKEN_PATH = "/auth/v2/token"
AUTHORIZE_PATH = "/auth/v2/authorize"

SCOPE_STORE = "integration.store"
SCOPE_ORDER = "integration.order"
SCOPE_INVENTORY = "integration.inventory"
ALL_SCOPES: tuple[str, ...] = (SCOPE_STORE, SCOPE_ORDER, SCOPE_INVENTORY)

# Integration endpoints: store path [doc], order and inventory paths [model]
STORES_PATH = "/integration/v1/stores"
ORDERS_PATH = "/integration/v1/stores/{store_id}/orders"
INVENTORY_PATH = "/integration/v1/stores/{store_id}/inventory"

# Pagination [doc]: index is a page number [model], count the page size (max 500 [model]).
PARAM_INDEX = "index"
PARAM_COUNT = "count"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500

# Order and inventory filters [model]
PARAM_UPDATED_FROM = "updated_from"
PARAM_UPDATED_TO = "updated_to"
PARAM_STATUS = "status"

# Envelope [doc]
ENVELOPE_STATUS = "status"
ENVELOPE_DATA = "data"
ENVELOPE_ACK = "ack"
ENVELOPE_ERRORS = "errors"
ENVELOPE_TIMESTAMP = "timestamp"
ERROR_CODE = "code"
ERROR_MESSAGE = "message"
ERROR_PARAMETER = "parameter"
ERROR_STORE_FORBIDDEN = "store_forbidden"

# Record identity: the field that identifies a record of each list [model]
STORE_ID_FIELD = "id"
ORDER_ID_FIELD = "id"
ORDER_UPDATED_FIELD = "updated_at"
INVENTORY_ID_FIELD = "product_id"

# Order statuses [model] and which of them are sales (used by checks and analytics).
STATUS_OPEN = "open"
STATUS_COMPLETED = "completed"
SALE_STATUSES = ("completed", "partially_refunded", "refunded")

# Limits of the warehouse types
_MONEY_MAX = Decimal("9999999999.99")  # numeric(12,2)
_BIGINT_MAX = 2**63 - 1
_CENT = Decimal("0.01")
_IMPLAUSIBLE = Decimal("1e15")


# --------------------------------------------------------------------------------------------
class InvalidRecord(ValueError):
    """A record that cannot be loaded as sent. ``reason`` says what is wrong, for a person."""

    def __init__(self, reason: str, *, record_key: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.record_key = record_key


def record_key(entity: str, raw: Any) -> str | None:
    """Best-effort identity of a raw record, for quarantine rows."""
    if not isinstance(raw, dict):
        return None
    name = {"store": STORE_ID_FIELD, "order": ORDER_ID_FIELD, "inventory": INVENTORY_ID_FIELD}[entity]
    value = raw.get(name)
    return None if value is None else str(value)[:200]


# --------------------------------------------------------------------------------------------
# Field readers. Each takes the record, a field name and a path for messages.


def _where(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _get(rec: dict, name: str, path: str, *, required: bool) -> Any:
    if name not in rec or rec[name] is None:
        if required:
            raise InvalidRecord(f"{_where(path, name)} is missing")
        return None
    return rec[name]


def _id(rec: dict, name: str, path: str = "", *, required: bool = True) -> int | None:
    v = _get(rec, name, path, required=required)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidRecord(f"{_where(path, name)} must be an integer id, got {_show(v)}")
    if not 0 <= v <= _BIGINT_MAX:
        raise InvalidRecord(f"{_where(path, name)} is out of range for an id: {v}")
    return v


def _text(rec: dict, name: str, path: str = "", *, required: bool = False, max_len: int = 100_000) -> str | None:
    v = _get(rec, name, path, required=required)
    if v is None:
        return None
    if not isinstance(v, str):
        raise InvalidRecord(f"{_where(path, name)} must be text, got {_show(v)}")
    if required and not v.strip():
        raise InvalidRecord(f"{_where(path, name)} is empty")
    if "\x00" in v:
        raise InvalidRecord(f"{_where(path, name)} contains a NUL byte, which PostgreSQL cannot store in text")
    if len(v) > max_len:
        raise InvalidRecord(f"{_where(path, name)} is {len(v)} characters long (limit {max_len})")
    return v


def _number(rec: dict, name: str, path: str = "", *, required: bool = True) -> Decimal | None:
    v = _get(rec, name, path, required=required)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, Decimal)):
        raise InvalidRecord(f"{_where(path, name)} must be a JSON number, got {_show(v)}")
    d = Decimal(v)
    if not d.is_finite():
        raise InvalidRecord(f"{_where(path, name)} is not a finite number: {v}")
    if abs(d) > _IMPLAUSIBLE:
        raise InvalidRecord(f"{_where(path, name)} is implausibly large: {v}")
    return d


def _money(rec: dict, name: str, path: str = "", *, required: bool = True) -> Decimal | None:
    v = rec.get(name)
    if v.__class__ is Decimal and v.is_finite() and -_MONEY_MAX <= v <= _MONEY_MAX and v == v.quantize(_CENT):
        return v  # the common case, checked in one expression (the hot path of a sync)
    d = _number(rec, name, path, required=required)
    if d is None:
        return None
    q = d.quantize(_CENT)
    if d != q:
        raise InvalidRecord(f"{_where(path, name)} has more than 2 decimals: {d} (money is exact to the cent)")
    if abs(d) > _MONEY_MAX:
        raise InvalidRecord(f"{_where(path, name)} is out of range for money: {d}")
    return q


def _instant(rec: dict, name: str, path: str = "", *, required: bool = True) -> datetime | None:
    v = _get(rec, name, path, required=required)
    if v is None:
        return None
    if not isinstance(v, str):
        raise InvalidRecord(f"{_where(path, name)} must be an ISO 8601 timestamp, got {_show(v)}")
    try:
        ts = datetime.fromisoformat(v)
    except ValueError:
        raise InvalidRecord(f"{_where(path, name)} is not an ISO 8601 timestamp: {_show(v)}") from None
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidRecord(f"{_where(path, name)} has no UTC offset: {_show(v)} (the instant is ambiguous)")
    return ts


def _object(rec: dict, name: str, path: str = "") -> dict | None:
    v = rec.get(name)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise InvalidRecord(f"{_where(path, name)} must be an object, got {_show(v)}")
    return v


def _list(rec: dict, name: str, path: str = "") -> list:
    v = rec.get(name)
    if v is None:
        return []
    if not isinstance(v, list):
        raise InvalidRecord(f"{_where(path, name)} must be a list, got {_show(v)}")
    return v


def _lines(rec: dict, name: str) -> Iterator[tuple[str, dict, int]]:
    """(path, line, id) for each object of the list ``name``; ids must be unique within the record."""
    seen: set[int] = set()
    for i, line in enumerate(_list(rec, name)):
        path = f"{name}[{i}]"
        if not isinstance(line, dict):
            raise InvalidRecord(f"{path} is not an object")
        line_id = _id(line, "id", path)
        if line_id in seen:
            raise InvalidRecord(f"{path}.id {line_id} appears twice in the order")
        seen.add(line_id)
        yield path, line, line_id


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _text_problem(s: str) -> str | None:
    """Why PostgreSQL could not store ``s`` as text, or None."""
    if "\x00" in s:
        return "contains a NUL byte, which PostgreSQL cannot store in text"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "contains an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


def _strings_clean(obj: Any, path: str = "record") -> None:
    """Reject text PostgreSQL cannot store (NUL, lone surrogates) anywhere, keys and unknown fields too."""
    if isinstance(obj, str):
        problem = _text_problem(obj)
        if problem:
            raise InvalidRecord(f"{path} {problem}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if _text_problem(k):
                raise InvalidRecord(f"a field name in {path} {_text_problem(k)}")
            _strings_clean(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _strings_clean(v, f"{path}[{i}]")


def _root(raw: Any, entity: str, raw_text: str | None = None) -> dict:
    if not isinstance(raw, dict):
        raise InvalidRecord(f"the {entity} record is not a JSON object but {type(raw).__name__}")
    # jsonutil.dumps writes every NUL (in a value or a key) as \u0000 and keeps other text as is:
    # a text without that escape that encodes as UTF-8 needs no walk.
    if raw_text is None or "\\u0000" in raw_text or _text_problem(raw_text):
        _strings_clean(raw, entity)
    return raw


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# --------------------------------------------------------------------------------------------
# Stores [doc path, model fields]


def parse_store(raw: Any) -> dict:
    """Validate a store record; return the ``taptouch.stores`` row (without ``raw``)."""
    rec = _root(raw, "store")
    tz = _text(rec, "timezone", required=True)
    try:
        zone(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRecord(f"timezone {tz!r} is not an IANA time zone (needed for business dates)") from None
    address = _object(rec, "address")
    return {
        "store_id": _id(rec, STORE_ID_FIELD),
        "name": _text(rec, "name", required=True),
        "business_name": _text(rec, "business_name"),
        "status": _text(rec, "status", required=True),
        "timezone": tz,
        "currency": _text(rec, "currency", required=True),
        "phone": _text(rec, "phone"),
        "email": _text(rec, "email"),
        "address": address,
        "created_at": _instant(rec, "created_at", required=False),
        "updated_at": _instant(rec, "updated_at"),
    }


# --------------------------------------------------------------------------------------------
# Orders [model]


def parse_order(raw: Any, timezone: str, *, raw_text: str | None = None) -> dict:
    """Validate an order and compute its rows.

    Returns ``{"order": row, "items": [...], "payments": [...], "refunds": [...]}`` with
    warehouse column names. ``timezone`` is the store's IANA zone: ``business_date`` is the local
    calendar date of ``created_at`` there. ``raw_text``: ``jsonutil.dumps(raw)`` when the caller
    has it (the loader stores it), which makes the NUL check one substring search.
    """
    rec = _root(raw, "order", raw_text)
    order_id = _id(rec, ORDER_ID_FIELD)
    status = _text(rec, "status", required=True)
    created_at = _instant(rec, "created_at")
    cashier = _object(rec, "cashier") or {}
    customer = _object(rec, "customer") or {}
    order = {
        "order_id": order_id,
        "store_id": _id(rec, "store_id"),
        "number": _text(rec, "number", max_len=200),
        "source": _text(rec, "source", max_len=200),
        "fulfillment_type": _text(rec, "fulfillment_type", max_len=200),
        "status": status,
        "created_at": created_at,
        "updated_at": _instant(rec, ORDER_UPDATED_FIELD),
        "completed_at": _instant(rec, "completed_at", required=False),
        "business_date": created_at.astimezone(zone(timezone)).date(),
        "currency": _text(rec, "currency", max_len=10),
        "subtotal": _money(rec, "subtotal"),
        "discount": _money(rec, "discount"),
        "surcharge": _money(rec, "surcharge"),
        "rounding": _money(rec, "rounding"),
        "tax": _money(rec, "tax"),
        "total": _money(rec, "total"),
        "tips": _money(rec, "tips", required=False) or Decimal("0.00"),
        "redeem_points": _number(rec, "redeem_points", required=False),
        "customer_id": _id(customer, "id", "customer", required=False),
        "customer_name": _text(customer, "name", "customer"),
        "cashier_id": _id(cashier, "id", "cashier", required=False),
        "cashier_name": _text(cashier, "name", "cashier"),
    }

    items = []
    for p, it, item_id in _lines(rec, "items"):
        qty = _number(it, "quantity", p)
        if qty <= 0:
            raise InvalidRecord(f"{p}.quantity must be positive, got {qty}")
        mods = _list(it, "modifiers", p)
        mod_sum = Decimal(0)
        for j, m in enumerate(mods):
            mp = f"{p}.modifiers[{j}]"
            if not isinstance(m, dict):
                raise InvalidRecord(f"{mp} is not an object")
            mod_sum += _money(m, "price", mp) * (_number(m, "quantity", mp, required=False) or 1)
        row = {
            "order_id": order_id,
            "item_id": item_id,
            "product_id": _id(it, "product_id", p, required=False),
            "sku": _text(it, "sku", p),
            "name": _text(it, "name", p),
            "category": _text(it, "category", p),
            "quantity": qty,
            "unit_price": _money(it, "unit_price", p),
            "discount": _money(it, "discount", p, required=False) or Decimal("0.00"),
            "tax": _money(it, "tax", p, required=False) or Decimal("0.00"),
            "total": _money(it, "total", p),
            "modifiers": mods,
        }
        expected = qty * (row["unit_price"] + mod_sum) - row["discount"]
        if abs(expected - row["total"]) >= _CENT:  # fractional quantities round to the cent
            raise InvalidRecord(
                f"{p}.total {row['total']} != quantity x (unit_price + modifiers) - discount = "
                f"{expected.quantize(_CENT, ROUND_HALF_UP)}"
            )
        items.append(row)

    payments = []
    for p, pay, pid in _lines(rec, "payments"):
        payments.append({
            "order_id": order_id,
            "payment_id": pid,
            "method": _text(pay, "method", p, required=True),
            "amount": _money(pay, "amount", p),
            "tip": _money(pay, "tip", p, required=False) or Decimal("0.00"),
            "surcharge": _money(pay, "surcharge", p, required=False) or Decimal("0.00"),
            "paid_at": _instant(pay, "paid_at", p, required=False),
        })

    refunds = []
    for p, ref, rid in _lines(rec, "refunds"):
        refunds.append({
            "order_id": order_id,
            "refund_id": rid,
            "amount": _money(ref, "amount", p),
            "reason": _text(ref, "reason", p),
            "refunded_at": _instant(ref, "refunded_at", p, required=False),
        })

    # The cheap arithmetic of the contract, exact in cents.
    if items:
        item_sum = sum((it["total"] for it in items), Decimal("0.00"))
        if item_sum != order["subtotal"]:
            raise InvalidRecord(f"subtotal {order['subtotal']} != sum of item totals {item_sum}")
    expected_total = order["subtotal"] - order["discount"] + order["surcharge"] + order["rounding"]
    if expected_total != order["total"]:
        raise InvalidRecord(
            f"total {order['total']} != subtotal - discount + surcharge + rounding = {expected_total}"
        )
    if status == STATUS_COMPLETED:
        paid = sum((p["amount"] for p in payments), Decimal("0.00"))
        if paid != order["total"]:
            raise InvalidRecord(f"completed order: payments sum to {paid}, total is {order['total']}")
    return {"order": order, "items": items, "payments": payments, "refunds": refunds}


# --------------------------------------------------------------------------------------------
# Inventory [model]


def parse_inventory(raw: Any, store_id: int) -> dict:
    """Validate an inventory level; return the ``taptouch.inventory_levels`` row (without ``raw``)."""
    rec = _root(raw, "inventory")
    return {
        "store_id": store_id,
        "product_id": _id(rec, INVENTORY_ID_FIELD),
        "sku": _text(rec, "sku"),
        "name": _text(rec, "name"),
        "category": _text(rec, "category"),
        "unit": _text(rec, "unit"),
        "on_hand": _number(rec, "on_hand"),
        "reorder_level": _number(rec, "reorder_level", required=False),
        "cost_price": _money(rec, "cost_price", required=False),
        "sell_price": _money(rec, "sell_price", required=False),
        "updated_at": _instant(rec, "updated_at", required=False),
    }


def local_date(ts: datetime, timezone: str) -> date:
    """The calendar date of an instant in an IANA time zone."""
    return ts.astimezone(zone(timezone)).date()
