"""The record boundary: the exact bytes of one API record -> warehouse rows, or one quarantine.

Every value of every record, known and unknown fields at any depth, either lands exactly or sends
that one record to ``taptouch.quarantine`` with a reason a person understands; nothing but
:class:`InvalidRecord` leaves it, so no value can fail a window. Each record is decoded once by
msgspec into typed Structs and screened by a few byte searches; only a record that trips a screen
or fails the decode takes the precise path (:func:`deep_reason`). ``raw`` is the record's own bytes.
The rules: docs/warehouse.md, "Quarantine".
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from taptouch_resource.api import InvalidRecord

__all__ = [
    "InvalidRecord", "OrderRows", "as_bytes", "deep_reason", "parse_inventory", "parse_order", "parse_store",
    "quarantine_forms", "record_key", "zone", "local_date", "business_date",
]

# --------------------------------------------------------------------------------------------
# Limits of the warehouse types (PostgreSQL)
BIGINT_MAX = 2**63 - 1
MONEY_MAX = Decimal("9999999999.99")  # numeric(12,2)
NUMERIC_MAX_SCALE = 16383  # digits after the decimal point numeric (and jsonb) can hold
NUMERIC_MAX_WEIGHT = 131071  # adjusted exponent: 131072 digits before the point
IMPLAUSIBLE = Decimal("1e15")  # quantities, points, stock: beyond this a value is a bug upstream
MAX_OFFSET_HOURS = 15  # PostgreSQL refuses a UTC offset of 16:00 or more
TEXT_MAX = 100_000  # characters of one known text field
SHORT_TEXT_MAX = 200
CURRENCY_MAX = 10
CENT = Decimal("0.01")
ZERO = Decimal("0.00")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_NAIVE = datetime(1970, 1, 1)
# Instants a reader in any time zone (offsets up to ±16 h) can still see in years 1-9999: psycopg
# (and Python) cannot represent year 0 or 10000, so a row within a day of those limits could be
# stored but never read back by a session whose time zone pushes it over.
_MIN_INSTANT = datetime(1, 1, 2, tzinfo=timezone.utc)
_MAX_INSTANT = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=timezone.utc)


# --------------------------------------------------------------------------------------------
# Typed shapes (the [model] field names of the contract, section 3-5). Unknown fields are allowed
# and ignored here; they stay in ``raw``. ``Decimal`` fields are decoded from the number's exact text.

_NULL_RAW = msgspec.Raw(b"null")


class _Modifier(msgspec.Struct):
    price: Decimal
    quantity: Decimal | None = None


class _Item(msgspec.Struct):
    id: int
    quantity: Decimal
    unit_price: Decimal
    total: Decimal
    product_id: int | None = None
    sku: str | None = None
    name: str | None = None
    category: str | None = None
    discount: Decimal | None = None
    tax: Decimal | None = None
    modifiers: msgspec.Raw = _NULL_RAW


class _Payment(msgspec.Struct):
    id: int
    method: str
    amount: Decimal
    tip: Decimal | None = None
    surcharge: Decimal | None = None
    paid_at: str | None = None


class _Refund(msgspec.Struct):
    id: int
    amount: Decimal
    reason: str | None = None
    refunded_at: str | None = None


class _Person(msgspec.Struct):
    id: int | None = None
    name: str | None = None


class _Order(msgspec.Struct):
    id: int
    store_id: int
    status: str
    created_at: str
    updated_at: str
    subtotal: Decimal
    discount: Decimal
    surcharge: Decimal
    rounding: Decimal
    tax: Decimal
    total: Decimal
    number: str | None = None
    source: str | None = None
    fulfillment_type: str | None = None
    completed_at: str | None = None
    currency: str | None = None
    tips: Decimal | None = None
    redeem_points: Decimal | None = None
    customer: _Person | None = None
    cashier: _Person | None = None
    items: list[_Item] | None = None
    payments: list[_Payment] | None = None
    refunds: list[_Refund] | None = None


class _Store(msgspec.Struct):
    id: int
    name: str
    status: str
    timezone: str
    currency: str
    updated_at: str
    business_name: str | None = None
    phone: str | None = None
    email: str | None = None
    address: msgspec.Raw = _NULL_RAW
    created_at: str | None = None


class _Inventory(msgspec.Struct):
    product_id: int
    on_hand: Decimal
    sku: str | None = None
    name: str | None = None
    category: str | None = None
    unit: str | None = None
    reorder_level: Decimal | None = None
    cost_price: Decimal | None = None
    sell_price: Decimal | None = None
    updated_at: str | None = None


_DEC_ORDER = msgspec.json.Decoder(_Order)
_DEC_STORE = msgspec.json.Decoder(_Store)
_DEC_INVENTORY = msgspec.json.Decoder(_Inventory)
_DEC_MODIFIERS = msgspec.json.Decoder(list[_Modifier] | None)
_DEC_OBJECT = msgspec.json.Decoder(dict | None)
_ENC = msgspec.json.Encoder(decimal_format="number")

# Number fields (money and quantities) per entity, with the lists of objects below them: a number
# sent as a string is refused (typed Decimal decoding would read "36.60" as 36.60).
_NUMBER_FIELDS: dict[str, tuple[frozenset, dict]] = {
    "order": (frozenset({"subtotal", "discount", "surcharge", "rounding", "tax", "total", "tips", "redeem_points"}), {
        "items": (frozenset({"quantity", "unit_price", "discount", "tax", "total"}),
                  {"modifiers": (frozenset({"price", "quantity"}), {})}),
        "payments": (frozenset({"amount", "tip", "surcharge"}), {}),
        "refunds": (frozenset({"amount"}), {}),
    }),
    "store": (frozenset(), {}),
    "inventory": (frozenset({"on_hand", "reorder_level", "cost_price", "sell_price"}), {}),
}
# A typed decode of only the number fields, as JSON numbers: compiled code refuses a number field
# sent as a string (which the exact Decimal decoding above would read as a number).
class _NumMod(msgspec.Struct):
    price: int | float | None = None
    quantity: int | float | None = None


class _NumItem(msgspec.Struct):
    quantity: int | float | None = None
    unit_price: int | float | None = None
    discount: int | float | None = None
    tax: int | float | None = None
    total: int | float | None = None
    modifiers: list[_NumMod] | None = None


class _NumPay(msgspec.Struct):
    amount: int | float | None = None
    tip: int | float | None = None
    surcharge: int | float | None = None


class _NumRefund(msgspec.Struct):
    amount: int | float | None = None


class _NumOrder(msgspec.Struct):
    subtotal: int | float | None = None
    discount: int | float | None = None
    surcharge: int | float | None = None
    rounding: int | float | None = None
    tax: int | float | None = None
    total: int | float | None = None
    tips: int | float | None = None
    redeem_points: int | float | None = None
    items: list[_NumItem] | None = None
    payments: list[_NumPay] | None = None
    refunds: list[_NumRefund] | None = None


class _NumInventory(msgspec.Struct):
    on_hand: int | float | None = None
    reorder_level: int | float | None = None
    cost_price: int | float | None = None
    sell_price: int | float | None = None


_NUMS = {"order": msgspec.json.Decoder(_NumOrder), "inventory": msgspec.json.Decoder(_NumInventory)}
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789.", b"0000000000")
_ID_FIELD = {"order": "id", "store": "id", "inventory": "product_id"}


# --------------------------------------------------------------------------------------------
# bytes in, bytes out

def as_bytes(record: Any) -> bytes:
    """The JSON bytes of one record: its own bytes when it came raw from the API, else the exact
    serialisation of a parsed record (``Decimal`` written as the number it is)."""
    if isinstance(record, bytes):
        return record
    if isinstance(record, (msgspec.Raw, bytearray, memoryview)):
        return bytes(record)
    try:
        return _ENC.encode(record)
    except Exception:  # a lone surrogate, an exotic object: written so that the boundary says why
        return _py_dumps(record).encode("utf-8", "backslashreplace")


def dumps(obj: Any) -> str:
    """Exact JSON text of a parsed value (``Decimal("45.50")`` -> ``45.50``)."""
    return _ENC.encode(obj).decode("utf-8")


def _py_dumps(obj: Any) -> str:
    if isinstance(obj, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + _py_dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_py_dumps(v) for v in obj) + "]"
    if obj is None or isinstance(obj, (bool, int, str)):
        return json.dumps(obj)
    if isinstance(obj, (Decimal, float)):
        return str(obj)
    return json.dumps(repr(obj))


def _text_of(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------------
# the precise path: what exactly is wrong with a document

def _parse_int(s: str) -> Any:
    return int(s) if len(s) < 4000 else Decimal(s)


def _loads_tolerant(text: str) -> Any:
    return json.loads(text, parse_float=Decimal, parse_int=_parse_int, parse_constant=Decimal)


def _number_problem(d: Decimal) -> str | None:
    if not d.is_finite():
        return f"is not a finite number ({d}), which JSON and PostgreSQL cannot hold"
    if d:
        exp = d.as_tuple().exponent
        if exp < -NUMERIC_MAX_SCALE or d.adjusted() > NUMERIC_MAX_WEIGHT:
            return f"is a number PostgreSQL cannot store ({_show(d)}: numeric holds at most {NUMERIC_MAX_SCALE} " \
                   f"decimals and {NUMERIC_MAX_WEIGHT + 1} digits before the point)"
    return None


def _text_problem(s: str) -> str | None:
    if "\x00" in s:
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store in text or jsonb"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            return "contains an unpaired UTF-16 surrogate (\\ud800-\\udfff), which is not valid Unicode"
    return None


def _walk_problem(doc: Any, path: str) -> str | None:
    """The first value of ``doc`` (any depth, keys too) that PostgreSQL cannot hold, as a reason."""
    stack = [(doc, path)]
    while stack:
        obj, where = stack.pop()
        if isinstance(obj, dict):
            for k, v in obj.items():
                p = _text_problem(k)
                if p:
                    return f"a field name in {where} {p}"
                stack.append((v, f"{where}.{k}"))
        elif isinstance(obj, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(obj))
        elif isinstance(obj, str):
            p = _text_problem(obj)
            if p:
                return f"{where} {p}"
        elif isinstance(obj, Decimal):
            p = _number_problem(obj)
            if p:
                return f"{where} {p}"
        elif isinstance(obj, float):  # only from a parsed record handed in by a caller
            p = _number_problem(Decimal(repr(obj))) if obj == obj and obj not in (float("inf"), float("-inf")) \
                else f"is not a finite number ({obj})"
            if p:
                return f"{where} {p}"
        elif isinstance(obj, int) and not isinstance(obj, bool):
            if obj.bit_length() > 400_000:
                return f"{where} is an integer PostgreSQL cannot store"
    return None


def _string_numbers(doc: dict, spec: tuple, path: str) -> str | None:
    names, children = spec
    for n in names:
        v = doc.get(n)
        if isinstance(v, str):
            return f"{path}{n} must be a JSON number, got the string {_show(v)}"
    for child, sub in children.items():
        lines = doc.get(child)
        if isinstance(lines, list):
            for i, line in enumerate(lines):
                if isinstance(line, dict):
                    p = _string_numbers(line, sub, f"{path}{child}[{i}].")
                    if p:
                        return p
    return None


def deep_reason(raw: bytes, entity: str) -> str | None:
    """Why the record's bytes cannot be stored as sent (not JSON, NaN, NUL, a number out of range, a
    number field sent as a string...), or None. Slow and precise: the screened-out path."""
    if len(raw) > 200_000_000:
        return f"the {entity} record is {len(raw)} bytes long; jsonb holds at most 255 MB"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"the {entity} record is not valid UTF-8 (byte {exc.start})"
    try:
        doc = _loads_tolerant(text)
    except RecursionError:
        return f"the {entity} record is nested too deeply to be stored"
    except ValueError as exc:
        return f"the {entity} record is not valid JSON: {str(exc)[:200]}"
    if not isinstance(doc, dict):
        return f"the {entity} record is not a JSON object but {_json_type(doc)}"
    try:
        problem = _walk_problem(doc, entity)
    except RecursionError:
        return f"the {entity} record is nested too deeply to be stored"
    if problem:
        return problem
    if entity == "order" and not isinstance(doc.get("items", []), (list, type(None))):
        return "items must be a list"
    return _string_numbers(doc, _NUMBER_FIELDS[entity], "")


def _json_type(v: Any) -> str:
    return {str: "a string", list: "a list", bool: "a boolean", type(None): "null"}.get(type(v), "a number")


_MSGSPEC_PATH = re.compile(r" - at `\$(.*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`")
_EXPECTED = re.compile(r"^Expected `([^`]*)`, got `([^`]*)`")


def _translate(exc: Exception, entity: str) -> str:
    """A msgspec validation message as a person reads it."""
    msg = str(exc)
    m = _MSGSPEC_PATH.search(msg)
    where = (m.group(1).lstrip(".") if m else "")
    head = msg[:m.start()] if m else msg
    mm = _MISSING.match(head)
    if mm:
        field = f"{where}.{mm.group(1)}" if where else mm.group(1)
        return f"{field} is missing"
    me = _EXPECTED.match(head)
    if me:
        want, got = me.groups()
        if not where:
            return f"the {entity} record is not a JSON object but {got}"
        if got == "null":
            return f"{where} is missing (null)"
        want = {"int": "an integer id", "decimal": "a JSON number", "str": "text", "array": "a list",
                "object": "an object", "array | null": "a list", "object | null": "an object",
                "int | null": "an integer id", "decimal | null": "a JSON number", "str | null": "text"}.get(want, want)
        return f"{where} must be {want}, got {got}"
    return f"{where + ': ' if where else ''}{head}"[:500]


# --------------------------------------------------------------------------------------------
# field rules (the fast path)

def _show(v: Any) -> str:
    text = repr(v) if not isinstance(v, Decimal) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _id(v: int | None, where: str, required: bool = True) -> int | None:
    if v is None:
        if required:
            raise InvalidRecord(f"{where} is missing")
        return None
    if not 0 <= v <= BIGINT_MAX:
        raise InvalidRecord(f"{where} is out of range for an id: {_show(v)}")
    return v


def _money(v: Decimal | None, where: str, required: bool = True) -> Decimal | None:
    if v is None:
        if required:
            raise InvalidRecord(f"{where} is missing")
        return None
    if not v.is_finite():
        raise InvalidRecord(f"{where} is not a finite number: {v}")
    if not -MONEY_MAX <= v <= MONEY_MAX:
        raise InvalidRecord(f"{where} is out of range for money: {_show(v)}")
    if v != v.quantize(CENT):
        raise InvalidRecord(f"{where} has more than 2 decimals: {_show(v)} (money is exact to the cent)")
    return v


def _number(v: Decimal | None, where: str, required: bool = True) -> Decimal | None:
    if v is None:
        if required:
            raise InvalidRecord(f"{where} is missing")
        return None
    if not v.is_finite():
        raise InvalidRecord(f"{where} is not a finite number: {v}")
    if abs(v) > IMPLAUSIBLE:
        raise InvalidRecord(f"{where} is implausibly large: {_show(v)}")
    if v != v.to_integral_value():
        problem = _number_problem(v)
        if problem:
            raise InvalidRecord(f"{where} {problem}")
    return v


def _text(v: str | None, where: str, required: bool = False, max_len: int = TEXT_MAX) -> str | None:
    if v is None:
        if required:
            raise InvalidRecord(f"{where} is missing")
        return None
    if required and not v.strip():
        raise InvalidRecord(f"{where} is empty")
    if len(v) > max_len:
        raise InvalidRecord(f"{where} is {len(v)} characters long (limit {max_len})")
    return v


_TS = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,30}))?"
    r"(?:([Zz])|([+-])([0-9]{2})(?::?([0-9]{2}))?(:[0-9].*)?)"
)
_TZ_CACHE: dict[int, timezone] = {}


class _BadInstant(ValueError):
    pass


@lru_cache(maxsize=65536)
def _instant(s: str) -> datetime:
    """The instant in UTC, cut to the microsecond as it is stored (:func:`_pg`). Raises _BadInstant
    with the reason for anything PostgreSQL would refuse, read differently, or store beyond what
    Python (and psycopg) can read back."""
    m = _TS.fullmatch(s)
    if m is None:
        if datetime_like(s):
            raise _BadInstant(f"has no UTC offset or is not RFC 3339: {_show(s)} (the instant is ambiguous)")
        raise _BadInstant(f"is not an ISO 8601 timestamp with an offset: {_show(s)}")
    y, mo, d, h, mi, sec, frac, z, sign, oh, om, oextra = m.groups()
    if oextra is not None:
        raise _BadInstant(f"has a UTC offset with seconds: {_show(s)} (offsets are hours and minutes)")
    if z is None and (int(oh) > MAX_OFFSET_HOURS or int(om or 0) > 59):
        raise _BadInstant(f"has a UTC offset PostgreSQL refuses: {_show(s)} (at most ±15:59)")
    try:
        offset = "+00:00" if z else f"{sign}{oh}:{om or '00'}"
        local = datetime.fromisoformat(f"{y}-{mo}-{d}T{h}:{mi}:{sec}{offset}")
    except ValueError as exc:
        raise _BadInstant(f"is not a valid date and time: {_show(s)} ({exc})") from None
    try:
        utc = local.astimezone(timezone.utc)
        if frac:  # cut, never rounded: rounding could carry 23:59:59.9999999 into the next day or year
            utc = utc + timedelta(microseconds=int(frac[:6].ljust(6, "0")))
    except OverflowError:
        raise _BadInstant(f"is outside years 1-9999 in UTC: {_show(s)}") from None
    if utc > _MAX_INSTANT or utc < _MIN_INSTANT:
        raise _BadInstant(f"is outside years 1-9999 in UTC, or within a day of those limits where a reader's "
                          f"time zone cannot show it: {_show(s)}")
    return utc


@lru_cache(maxsize=4096)
def _exact(s: str) -> Decimal:
    utc = _instant(s)
    d = utc - EPOCH
    whole = d.days * 86400 + d.seconds
    if s[19:20] != ".":  # valid texts are date and time (19 characters), then a fraction or the offset
        return Decimal(whole)
    frac = _FRAC.match(s, 20).group()
    return Decimal(whole) + Decimal("0." + frac)  # the fraction as sent, every digit


_FRAC = re.compile(r"[0-9]+")


def _pg(v: str | None) -> str | None:
    """The timestamp text as stored: a fraction longer than microseconds is cut to six digits, so
    PostgreSQL does not round it (``23:59:59.9999999Z`` would become the next day, and of year 9999,
    year 10000). The version key keeps every digit (:func:`exact_instant`)."""
    if v is not None and v[19:20] == "." and v[26:27].isdigit():
        end = _FRAC.match(v, 20).end()
        if end > 26:  # more than six fractional digits (a shorter fraction is followed by its offset)
            return v[:26] + v[end:]
    return v


def datetime_like(s: str) -> bool:
    return bool(re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", s))


def _ts(v: str | None, where: str, required: bool = True) -> str | None:
    """The timestamp text, checked (PostgreSQL parses the same text into the same instant)."""
    if v is None:
        if required:
            raise InvalidRecord(f"{where} is missing")
        return None
    try:
        _instant(v)
    except _BadInstant as exc:
        raise InvalidRecord(f"{where} {exc}") from None
    return _pg(v)


def instant(s: str) -> datetime:
    """The UTC instant of a valid timestamp text (rounded to the microsecond)."""
    return _instant(s)


def exact_instant(s: str) -> Decimal:
    """Epoch seconds with every fractional digit the API sent: the version key of newest-wins."""
    return _exact(s)


_NOT_A_PLACE = frozenset({"localtime", "posixrules", "Factory"})
"""Names the tz database accepts that are not a store's place: ``localtime`` is whatever zone the
loading machine (or the PostgreSQL server) is set to, so business dates would depend on where the
sync runs."""


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


NO_DAY_START = timedelta(0)
"""A business day that starts at local midnight (issue 22 will read a store's own start)."""


def business_date(at: datetime, tz: str, day_start: timedelta = NO_DAY_START) -> date:
    """THE business-date rule, the one place it is computed (orders' ``business_date``, inventory
    snapshot dates, re-derivation after a store's zone changes, ``taptouch-sync rebuild``): the
    local calendar date of the instant ``at`` in the store's IANA zone ``tz``, for a business day
    that starts ``day_start`` after local midnight (a sale at 02:00 belongs to the day before when
    the day starts at 04:00). ``day_start`` is wall-clock time, like the opening hours a merchant
    sets: on a day whose clocks change, the day still starts at that local time.

    Deliberately not computed in SQL: PostgreSQL reads some zone names as abbreviations with a
    fixed offset (``at time zone 'CET'`` is +01:00 all summer) and may ship other tz data than
    Python, so a second SQL copy of the rule would not be the same rule."""
    local = at.astimezone(zone(tz))
    if day_start:
        local = local.replace(tzinfo=None) - day_start
    return local.date()


@lru_cache(maxsize=65536)
def _business_date(created_at: str, tz: str) -> date:
    """:func:`business_date` of an order's ``created_at`` text (cut to the microsecond as stored)."""
    return business_date(_instant(created_at), tz)


def local_date(ts: datetime, tz: str) -> date:
    """The store-local business date of an instant (e.g. an inventory snapshot's date: it lines up
    with the ``business_date`` of the sales beside it). The same rule: :func:`business_date`."""
    return business_date(ts, tz)


def _raw_object(raw: msgspec.Raw | None, where: str) -> str | None:
    """The exact JSON text of an object-valued field (None for null)."""
    if raw is None:
        return None
    b = bytes(raw)
    if b == b"null":
        return None
    try:
        _DEC_OBJECT.decode(b)
    except msgspec.ValidationError:
        raise InvalidRecord(f"{where} must be an object") from None
    return b.decode("utf-8")


# --------------------------------------------------------------------------------------------
# the entry points

class OrderRows(msgspec.Struct, array_like=True):
    """One valid order: the rows of each table (tuples in the loader's column order) and its raw text."""

    order_id: int
    store_id: int
    updated_key: Decimal
    order: tuple
    items: list
    payments: list
    refunds: list
    raw: str


def _checked(raw: bytes, entity: str, decoder: msgspec.json.Decoder) -> Any:
    """The record decoded into its typed shape, or InvalidRecord with the most precise reason.

    Screens (all compiled code): a ``\\u0000`` escape (jsonb and text cannot hold NUL), an exponent or
    a run of thousands of digits (a number maybe beyond ``numeric``'s range, in any field) send the
    record down the precise path; a number field sent as a string fails the typed number decode.
    A false alarm (e.g. a text like "10e5") costs time, never correctness."""
    if b"\\u0000" in raw:
        reason = deep_reason(raw, entity)
        if reason:
            raise InvalidRecord(reason)
    digits = raw.translate(_DIGITS_TO_ZERO)
    if b"0e" in digits or b"0E" in digits or b"0" * 4000 in digits:
        reason = deep_reason(raw, entity)
        if reason:
            raise InvalidRecord(reason)
    try:
        rec = decoder.decode(raw)
        nums = _NUMS.get(entity)
        if nums is not None:
            try:
                nums.decode(raw)
            except msgspec.ValidationError as exc:
                if str(exc).startswith("Expected"):  # a number field sent as a string (or worse)
                    raise
                # else a number beyond float's range: the Decimal rules judge it
        return rec
    except (msgspec.DecodeError, ValueError, RecursionError, OverflowError) as exc:
        reason = deep_reason(raw, entity)
        raise InvalidRecord(reason or _translate(exc, entity)) from None


def _unforeseen(raw: bytes, entity: str, exc: Exception) -> InvalidRecord:
    """An error no rule foresaw (e.g. invalid UTF-8 inside an unknown field, which the typed decode
    skips): the precise path says why when it can, the error itself otherwise."""
    try:
        reason = deep_reason(raw, entity)
    except Exception:  # pragma: no cover - deep_reason is total; belt and braces
        reason = None
    return InvalidRecord(reason or f"the {entity} record could not be read: {type(exc).__name__}: {str(exc)[:200]}")


def _lines_unique(lines: list, name: str) -> None:
    if len(lines) > 1:
        ids = [line.id for line in lines]
        if len(set(ids)) != len(ids):
            seen: set[int] = set()
            for i, x in enumerate(ids):
                if x in seen:
                    raise InvalidRecord(f"{name}[{i}].id {x} appears twice in the order")
                seen.add(x)


def order_rows(record: Any, timezone_name: str, store_id: int | None = None) -> OrderRows:
    """Validate one order (its bytes, or a parsed record) and build its rows. Raises InvalidRecord only."""
    raw = as_bytes(record)
    try:
        o: _Order = _checked(raw, "order", _DEC_ORDER)
        try:
            return _order_fast(o, raw, timezone_name, store_id)
        except _Slow:
            return _order_rows(o, raw, timezone_name, store_id)  # the authority: says exactly why
    except InvalidRecord:
        raise
    except Exception as exc:  # a rule this module did not foresee: that record, not the window
        raise _unforeseen(raw, "order", exc) from None


class _Slow(Exception):
    """The fast path declines: the precise path decides (and says why)."""


_MONEY_CTX = Context(prec=12, traps=[Inexact, InvalidOperation, Overflow])  # numeric(12,2), exact to the cent


_mq = _MONEY_CTX.quantize
_CENTS = (CENT,) * 6


def _m(v: Decimal) -> Decimal:
    return _mq(v, CENT)  # raises unless exact to the cent and within numeric(12,2)


def _q(v: Decimal) -> Decimal:
    if v.__class__ is not Decimal or not -IMPLAUSIBLE <= v <= IMPLAUSIBLE or (v != v.to_integral_value()
                                                                              and v.as_tuple().exponent < -NUMERIC_MAX_SCALE):
        raise _Slow
    return v


def _t(v: str | None, limit: int) -> str | None:
    if v is not None and len(v) > limit:
        raise _Slow
    return v


def _order_fast(o: _Order, raw: bytes, tz: str, listed_store: int | None) -> OrderRows:
    """The common case in as few Python operations as possible; anything unusual raises _Slow.
    Accepts only what :func:`_order_rows` accepts, with the same rows."""
    try:
        oid = o.id
        sid = o.store_id
        if not (0 <= oid <= BIGINT_MAX and 0 <= sid <= BIGINT_MAX) or (listed_store is not None and sid != listed_store):
            raise _Slow
        long_ok = len(raw) < TEXT_MAX
        status = o.status
        if not status.strip() or len(status) > SHORT_TEXT_MAX:
            raise _Slow
        created, updated, completed = o.created_at, o.updated_at, o.completed_at
        _instant(created)
        key = _exact(updated)
        if completed is not None:
            _instant(completed)
        # money: one trapped quantize each (exact cents and numeric(12,2) in one C call), mapped in C
        subtotal, discount, surcharge, rounding, total, tax = map(_mq, (o.subtotal, o.discount, o.surcharge,
                                                                       o.rounding, o.total, o.tax), _CENTS)
        if subtotal - discount + surcharge + rounding != total:
            raise _Slow
        cust, cash = o.customer, o.cashier
        cust_id = cust_name = cash_id = cash_name = None
        if cust is not None:
            cust_id, cust_name = cust.id, cust.name
            if cust_id is not None and not 0 <= cust_id <= BIGINT_MAX:
                raise _Slow
        if cash is not None:
            cash_id, cash_name = cash.id, cash.name
            if cash_id is not None and not 0 <= cash_id <= BIGINT_MAX:
                raise _Slow
        number, source, ftype, currency = o.number, o.source, o.fulfillment_type, o.currency
        if not long_ok:
            for v in (number, source, ftype):
                _t(v, SHORT_TEXT_MAX)
            for v in (cust_name, cash_name):
                _t(v, TEXT_MAX)
        elif (number is not None and len(number) > SHORT_TEXT_MAX) or (source is not None and len(source) > SHORT_TEXT_MAX) \
                or (ftype is not None and len(ftype) > SHORT_TEXT_MAX):
            raise _Slow
        if currency is not None and len(currency) > CURRENCY_MAX:
            raise _Slow
        tips = o.tips
        rp = o.redeem_points
        order = (oid, sid, number, source, ftype, status, _pg(created), _pg(updated), _pg(completed),
                 _business_date(created, tz),
                 currency, subtotal, discount, surcharge, rounding, tax, total,
                 ZERO if tips is None else _mq(tips, CENT), None if rp is None else _q(rp),
                 cust_id, cust_name, cash_id, cash_name)
        items = []
        if o.items:
            seen = set()
            item_sum = ZERO
            for it in o.items:
                iid, pid = it.id, it.product_id
                if iid in seen or not 0 <= iid <= BIGINT_MAX or (pid is not None and not 0 <= pid <= BIGINT_MAX):
                    raise _Slow
                seen.add(iid)
                qty = _q(it.quantity)
                if qty <= 0:
                    raise _Slow
                price, itotal = _mq(it.unit_price, CENT), _mq(it.total, CENT)
                idisc = ZERO if it.discount is None else _mq(it.discount, CENT)
                mb = bytes(it.modifiers)
                if mb == b"[]":
                    mods_text, mod_sum = "[]", 0
                elif mb == b"null":
                    mods_text, mod_sum = "[]", 0
                else:
                    mod_sum = 0
                    for m in _DEC_MODIFIERS.decode(mb) or ():
                        mod_sum += _mq(m.price, CENT) * (1 if m.quantity is None else _q(m.quantity))
                    mods_text = mb.decode("utf-8")
                if abs(qty * (price + mod_sum) - idisc - itotal) >= CENT:
                    raise _Slow
                item_sum += itotal
                sku, name, cat = it.sku, it.name, it.category
                if not long_ok:
                    for v in (sku, name, cat):
                        _t(v, TEXT_MAX)
                items.append((oid, iid, pid, sku, name, cat, qty, price, idisc,
                              ZERO if it.tax is None else _mq(it.tax, CENT), itotal, mods_text))
            if item_sum != subtotal:
                raise _Slow
        payments = []
        paid = ZERO
        if o.payments:
            seen = set()
            for pay in o.payments:
                pid, method = pay.id, pay.method
                if pid in seen or not 0 <= pid <= BIGINT_MAX or not method.strip() or len(method) > SHORT_TEXT_MAX:
                    raise _Slow
                seen.add(pid)
                amount = _mq(pay.amount, CENT)
                paid += amount
                at = pay.paid_at
                if at is not None:
                    _instant(at)
                payments.append((oid, pid, method, amount, ZERO if pay.tip is None else _mq(pay.tip, CENT),
                                 ZERO if pay.surcharge is None else _mq(pay.surcharge, CENT), _pg(at)))
        if status == "completed" and paid != total:
            raise _Slow
        refunds = []
        if o.refunds:
            seen = set()
            for ref in o.refunds:
                rid = ref.id
                if rid in seen or not 0 <= rid <= BIGINT_MAX:
                    raise _Slow
                seen.add(rid)
                at = ref.refunded_at
                if at is not None:
                    _instant(at)
                if not long_ok:
                    _t(ref.reason, TEXT_MAX)
                refunds.append((oid, rid, _mq(ref.amount, CENT), ref.reason, _pg(at)))
        return OrderRows(oid, sid, key, order, items, payments, refunds, raw.decode("utf-8"))
    except (_Slow, ArithmeticError, _BadInstant, TypeError, AttributeError, ValueError, msgspec.ValidationError,
            OverflowError, ZoneInfoNotFoundError):
        raise _Slow from None


def _order_rows(o: _Order, raw: bytes, tz: str, listed_store: int | None) -> OrderRows:
    """The precise rules, one field at a time, each failure with its reason (the reference)."""
    oid = _id(o.id, "id")
    sid = _id(o.store_id, "store_id")
    if listed_store is not None and sid != listed_store:
        raise InvalidRecord(f"store_id {sid} differs from the store it was listed under ({listed_store})")
    status = _text(o.status, "status", True, SHORT_TEXT_MAX)
    created = _ts(o.created_at, "created_at")
    updated = _ts(o.updated_at, "updated_at")
    completed = _ts(o.completed_at, "completed_at", False)
    subtotal = _money(o.subtotal, "subtotal")
    discount = _money(o.discount, "discount")
    surcharge = _money(o.surcharge, "surcharge")
    rounding = _money(o.rounding, "rounding")
    total = _money(o.total, "total")
    cust = o.customer
    cash = o.cashier
    order = (
        oid, sid, _text(o.number, "number", False, SHORT_TEXT_MAX), _text(o.source, "source", False, SHORT_TEXT_MAX),
        _text(o.fulfillment_type, "fulfillment_type", False, SHORT_TEXT_MAX), status, created, updated, completed,
        _business_date(created, tz), _text(o.currency, "currency", False, CURRENCY_MAX),
        subtotal, discount, surcharge, rounding, _money(o.tax, "tax"), total,
        ZERO if o.tips is None else _money(o.tips, "tips"),
        _number(o.redeem_points, "redeem_points", False),
        None if cust is None else _id(cust.id, "customer.id", False),
        None if cust is None else _text(cust.name, "customer.name"),
        None if cash is None else _id(cash.id, "cashier.id", False),
        None if cash is None else _text(cash.name, "cashier.name"),
    )
    items = []
    item_sum = ZERO
    if o.items:
        _lines_unique(o.items, "items")
        for i, it in enumerate(o.items):
            p = f"items[{i}]"
            qty = _number(it.quantity, f"{p}.quantity")
            if qty <= 0:
                raise InvalidRecord(f"{p}.quantity must be positive, got {_show(qty)}")
            price = _money(it.unit_price, f"{p}.unit_price")
            idisc = ZERO if it.discount is None else _money(it.discount, f"{p}.discount")
            itotal = _money(it.total, f"{p}.total")
            mods_text = "[]"
            mod_sum = 0
            if it.modifiers is not None:
                mb = bytes(it.modifiers)
                if mb != b"[]" and mb != b"null":
                    try:
                        mods = _DEC_MODIFIERS.decode(mb)
                    except msgspec.ValidationError as exc:
                        reason = _translate(exc, "modifier list")
                        raise InvalidRecord(f"{p}.modifiers{reason}" if reason.startswith("[")
                                            else f"{p}.modifiers must be a list of objects ({reason})") from None
                    for j, m in enumerate(mods or ()):
                        mp = f"{p}.modifiers[{j}]"
                        mq = 1 if m.quantity is None else _number(m.quantity, f"{mp}.quantity")
                        mod_sum += _money(m.price, f"{mp}.price") * mq
                    mods_text = mb.decode("utf-8")
                elif mb == b"[]":
                    mods_text = "[]"
            expected = qty * (price + mod_sum) - idisc
            if abs(expected - itotal) >= CENT:  # fractional quantities round to the cent
                raise InvalidRecord(
                    f"{p}.total {itotal} != quantity x (unit_price + modifiers) - discount = "
                    f"{expected.quantize(CENT) if abs(expected) < IMPLAUSIBLE * 1000 else expected}")
            item_sum += itotal
            items.append((oid, _id(it.id, f"{p}.id"),
                          _id(it.product_id, f"{p}.product_id", False), _text(it.sku, f"{p}.sku"),
                          _text(it.name, f"{p}.name"), _text(it.category, f"{p}.category"), qty, price, idisc,
                          ZERO if it.tax is None else _money(it.tax, f"{p}.tax"), itotal, mods_text))
        if item_sum != subtotal:
            raise InvalidRecord(f"subtotal {subtotal} != sum of item totals {item_sum}")
    payments = []
    paid = ZERO
    if o.payments:
        _lines_unique(o.payments, "payments")
        for i, pay in enumerate(o.payments):
            p = f"payments[{i}]"
            amount = _money(pay.amount, f"{p}.amount")
            paid += amount
            payments.append((oid, _id(pay.id, f"{p}.id"), _text(pay.method, f"{p}.method", True, SHORT_TEXT_MAX),
                             amount, ZERO if pay.tip is None else _money(pay.tip, f"{p}.tip"),
                             ZERO if pay.surcharge is None else _money(pay.surcharge, f"{p}.surcharge"),
                             _ts(pay.paid_at, f"{p}.paid_at", False)))
    refunds = []
    if o.refunds:
        _lines_unique(o.refunds, "refunds")
        for i, ref in enumerate(o.refunds):
            p = f"refunds[{i}]"
            refunds.append((oid, _id(ref.id, f"{p}.id"), _money(ref.amount, f"{p}.amount"),
                            _text(ref.reason, f"{p}.reason"), _ts(ref.refunded_at, f"{p}.refunded_at", False)))
    expected_total = subtotal - discount + surcharge + rounding
    if expected_total != total:
        raise InvalidRecord(f"total {total} != subtotal - discount + surcharge + rounding = {expected_total}")
    if status == "completed" and paid != total:
        raise InvalidRecord(f"completed order: payments sum to {paid}, total is {total}")
    return OrderRows(oid, sid, exact_instant(o.updated_at), order, items, payments, refunds, raw.decode("utf-8"))


def store_row(record: Any) -> tuple[tuple, Decimal, str]:
    """(the ``taptouch.stores`` row in loader column order, exact version key, raw text)."""
    raw = as_bytes(record)
    try:
        s: _Store = _checked(raw, "store", _DEC_STORE)
        tz = _text(s.timezone, "timezone", True, SHORT_TEXT_MAX)
        try:
            if tz in _NOT_A_PLACE or tz.startswith(("posix/", "right/")):
                raise ValueError(tz)  # this machine's zone, a placeholder, or leap-second clocks
            zone(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidRecord(f"timezone {tz!r} is not an IANA time zone (needed for business dates)") from None
        address = _raw_object(s.address, "address")
        row = (_id(s.id, "id"), _text(s.name, "name", True), _text(s.business_name, "business_name"),
               _text(s.status, "status", True), tz, _text(s.currency, "currency", True),
               _text(s.phone, "phone"), _text(s.email, "email"), address,
               _ts(s.created_at, "created_at", False), _ts(s.updated_at, "updated_at"))
        return row, exact_instant(s.updated_at), raw.decode("utf-8")
    except InvalidRecord:
        raise
    except msgspec.ValidationError as exc:
        raise InvalidRecord(_translate(exc, "store")) from None
    except Exception as exc:
        raise _unforeseen(raw, "store", exc) from None


def inventory_row(record: Any, store_id: int) -> tuple[tuple, Decimal | None, str]:
    """(the ``taptouch.inventory_levels`` row in loader column order, exact version key or None, raw text)."""
    raw = as_bytes(record)
    try:
        r: _Inventory = _checked(raw, "inventory", _DEC_INVENTORY)
        row = (store_id, _id(r.product_id, "product_id"), _text(r.sku, "sku"), _text(r.name, "name"),
               _text(r.category, "category"), _text(r.unit, "unit"), _number(r.on_hand, "on_hand"),
               _number(r.reorder_level, "reorder_level", False), _money(r.cost_price, "cost_price", False),
               _money(r.sell_price, "sell_price", False), _ts(r.updated_at, "updated_at", False))
        return row, None if r.updated_at is None else exact_instant(r.updated_at), raw.decode("utf-8")
    except InvalidRecord:
        raise
    except Exception as exc:
        raise _unforeseen(raw, "inventory", exc) from None


# --------------------------------------------------------------------------------------------
# dict-shaped views (compatibility with the former ``taptouch_resource.api.parse_*``)

STORE_COLS = ("store_id", "name", "business_name", "status", "timezone", "currency", "phone", "email",
              "address", "created_at", "updated_at")
INVENTORY_COLS = ("store_id", "product_id", "sku", "name", "category", "unit", "on_hand", "reorder_level",
                  "cost_price", "sell_price", "updated_at")
ORDER_COLS = (
    "order_id", "store_id", "number", "source", "fulfillment_type", "status", "created_at", "updated_at",
    "completed_at", "business_date", "currency", "subtotal", "discount", "surcharge", "rounding", "tax",
    "total", "tips", "redeem_points", "customer_id", "customer_name", "cashier_id", "cashier_name",
)
ITEM_COLS = ("order_id", "item_id", "product_id", "sku", "name", "category", "quantity", "unit_price",
             "discount", "tax", "total", "modifiers")
PAYMENT_COLS = ("order_id", "payment_id", "method", "amount", "tip", "surcharge", "paid_at")
REFUND_COLS = ("order_id", "refund_id", "amount", "reason", "refunded_at")
_TS_COLS = {"created_at", "updated_at", "completed_at", "paid_at", "refunded_at"}


def _as_dict(cols: tuple, row: tuple) -> dict:
    d = dict(zip(cols, row))
    for c in _TS_COLS & d.keys():
        if d[c] is not None:
            d[c] = instant(d[c])
    for c in ("address", "modifiers"):
        if isinstance(d.get(c), str):
            d[c] = json.loads(d[c], parse_float=Decimal)
    return d


def parse_store(record: Any) -> dict:
    """The ``taptouch.stores`` row (without ``raw``) as a dict; raises InvalidRecord only."""
    row, _, _ = store_row(record)
    return _as_dict(STORE_COLS, row)


def parse_inventory(record: Any, store_id: int) -> dict:
    row, _, _ = inventory_row(record, store_id)
    return _as_dict(INVENTORY_COLS, row)


def parse_order(record: Any, tz: str, **_: Any) -> dict:
    """``{"order": row, "items": [...], "payments": [...], "refunds": [...]}`` keyed by column names."""
    r = order_rows(record, tz)
    return {"order": _as_dict(ORDER_COLS, r.order), "items": [_as_dict(ITEM_COLS, x) for x in r.items],
            "payments": [_as_dict(PAYMENT_COLS, x) for x in r.payments],
            "refunds": [_as_dict(REFUND_COLS, x) for x in r.refunds]}


# --------------------------------------------------------------------------------------------
# quarantine

def record_key(entity: str, record: Any) -> str | None:
    """Best-effort identity of a record (its id as text), for quarantine rows."""
    if isinstance(record, dict):
        doc = record
    else:
        try:
            doc = _loads_tolerant(_text_of(as_bytes(record)))
        except (ValueError, RecursionError):  # e.g. nested too deep: read a leading integer id if there is one
            m = re.search(rb'"' + _ID_FIELD[entity].encode() + rb'"\s*:\s*(-?[0-9]{1,19})\s*[,}]',
                          as_bytes(record)[:4096])
            return m.group(1).decode() if m else None
    if not isinstance(doc, dict):
        return None
    value = doc.get(_ID_FIELD[entity])
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)[:200]
    return text if _text_problem(text) is None else text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")


_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def quarantine_forms(record: Any) -> tuple[str | None, str]:
    """(jsonb candidate, text) of a quarantined record. The candidate shows a NUL as the text
    ``\\u0000`` (jsonb cannot hold NUL); the loader stores it when PostgreSQL accepts it as jsonb and
    the text otherwise. The text is always storable (invalid bytes shown as ``\\xNN``)."""
    raw = as_bytes(record)
    text = _text_of(raw).replace("\x00", "\\x00")
    if _text_problem(text):
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    candidate = _NUL_ESCAPE.sub(r"\1\\\\u0000", text) if "\\u0000" in text else text
    return candidate, text
