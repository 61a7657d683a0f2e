"""The record boundary: the exact bytes of one API record -> warehouse rows, or one quarantine.

Every value of every record, known and unknown fields at any depth, either lands exactly or sends
that one record to ``taptouch.quarantine`` with a reason a person understands; nothing but
:class:`InvalidRecord` leaves it, so no value can fail a window. Each record is decoded once by
msgspec into typed Structs and screened by a few byte searches; only a record that trips a screen
or fails the decode takes the precise path (:func:`deep_reason`). ``raw`` is the record's own bytes.
Every field's rules come from its declaration (``entities.py``); an order's fast path is code
generated from the same declarations. The rules: docs/warehouse.md, "Quarantine" and "Adding a column".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from functools import lru_cache, partial
from keyword import iskeyword
from operator import itemgetter
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from taptouch_resource.api import InvalidRecord

from .entities import (
    DERIVED,
    ENTITIES,
    ID,
    INSTANT,
    LIST,
    MONEY,
    OBJECT,
    QUANTITY,
    TEXT,
    TEXT_MAX,
    ZERO,
    Entity,
    Field,
    tables,
)
from .record_types import number_fields, number_struct, typed_struct

__all__ = [
    "InvalidRecord",
    "OrderRows",
    "as_bytes",
    "deep_reason",
    "parse_inventory",
    "parse_order",
    "parse_store",
    "quarantine_forms",
    "record_key",
    "zone",
    "local_date",
    "business_date",
]

# --------------------------------------------------------------------------------------------
# Limits of the warehouse types (PostgreSQL)
BIGINT_MAX = 2**63 - 1
MONEY_MAX = Decimal("9999999999.99")  # numeric(12,2)
REFUNDS_MAX = Decimal("999999999999.99")  # numeric(14,2): an order's refunds in taptouch.order_history
NUMERIC_MAX_SCALE = 16383  # digits after the decimal point numeric (and jsonb) can hold
NUMERIC_MAX_WEIGHT = 131071  # adjusted exponent: 131072 digits before the point
IMPLAUSIBLE = Decimal("1e15")  # quantities, points, stock: beyond this a value is a bug upstream
MAX_OFFSET_HOURS = 15  # PostgreSQL refuses a UTC offset of 16:00 or more
CENT = Decimal("0.01")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)
# Instants a reader in any time zone (offsets up to ±16 h) can still see in years 1-9999: psycopg
# (and Python) cannot represent year 0 or 10000, so a row within a day of those limits could be
# stored but never read back by a session whose time zone pushes it over.
_MIN_INSTANT = datetime(1, 1, 2, tzinfo=UTC)
_MAX_INSTANT = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)


# --------------------------------------------------------------------------------------------
# Typed shapes, generated from the declarations (entities.py; the [model] field names of the
# contract, section 3-5). Unknown fields are allowed and ignored here; they stay in ``raw``.

ORDER, STORE, INVENTORY = ENTITIES["order"], ENTITIES["store"], ENTITIES["inventory"]
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(typed_struct(e)) for name, e in ENTITIES.items()
}
_NUMS: dict[str, msgspec.json.Decoder[Any]] = {
    name: msgspec.json.Decoder(t) for name, t in ((n, number_struct(e)) for n, e in ENTITIES.items()) if t
}
# Number fields (money and quantities) per entity, with the lists of records below them: a number
# sent as a string is refused (typed Decimal decoding would read "36.60" as 36.60).
_NUMBER_FIELDS = {name: number_fields(e) for name, e in ENTITIES.items()}
_LIST_DECODERS = {
    f.of.name: msgspec.json.Decoder(list[typed_struct(f.of)] | None)  # type: ignore[misc]
    for e in ENTITIES.values()
    for t in tables(e)
    for f in t.fields
    if f.kind == LIST and f.of
}
_DEC_OBJECT = msgspec.json.Decoder(dict | None)
_ENC = msgspec.json.Encoder(decimal_format="number")
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789.", b"0000000000")
_ID_FIELD = {name: e.key for name, e in ENTITIES.items() if e.key is not None}


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
        exp = cast(int, d.as_tuple().exponent)  # finite: an int ('n', 'N', 'F' are NaN, sNaN, Infinity)
        if exp < -NUMERIC_MAX_SCALE or d.adjusted() > NUMERIC_MAX_WEIGHT:
            return (
                f"is a number PostgreSQL cannot store ({_show(d)}: numeric holds at most {NUMERIC_MAX_SCALE} "
                f"decimals and {NUMERIC_MAX_WEIGHT + 1} digits before the point)"
            )
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
            p = (
                _number_problem(Decimal(repr(obj)))
                if obj == obj and obj not in (float("inf"), float("-inf"))
                else f"is not a finite number ({obj})"
            )
            if p:
                return f"{where} {p}"
        elif isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 400_000:
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
    where = m.group(1).lstrip(".") if m else ""
    head = msg[: m.start()] if m else msg
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
        want = {
            "int": "an integer id",
            "decimal": "a JSON number",
            "str": "text",
            "array": "a list",
            "object": "an object",
            "array | null": "a list",
            "object | null": "an object",
            "int | null": "an integer id",
            "decimal | null": "a JSON number",
            "str | null": "text",
        }.get(want, want)
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
        utc = local.astimezone(UTC)
        if frac:  # cut, never rounded: rounding could carry 23:59:59.9999999 into the next day or year
            utc = utc + timedelta(microseconds=int(frac[:6].ljust(6, "0")))
    except OverflowError:
        raise _BadInstant(f"is outside years 1-9999 in UTC: {_show(s)}") from None
    if utc > _MAX_INSTANT or utc < _MIN_INSTANT:
        raise _BadInstant(
            f"is outside years 1-9999 in UTC, or within a day of those limits where a reader's "
            f"time zone cannot show it: {_show(s)}"
        )
    return utc


@lru_cache(maxsize=4096)
def _exact_epoch(s: str) -> Decimal:
    utc = _instant(s)
    d = utc - EPOCH
    whole = d.days * 86400 + d.seconds
    if s[19:20] != ".":  # valid texts are date and time (19 characters), then a fraction or the offset
        return Decimal(whole)
    frac = _FRAC.match(s, 20)
    assert frac is not None  # _instant accepted s: its "." is followed by digits
    return Decimal(whole) + Decimal("0." + frac.group())  # the fraction as sent, every digit


_FRAC = re.compile(r"[0-9]+")


def _pg(v: str | None) -> str | None:
    """The timestamp text as stored: a fraction longer than microseconds is cut to six digits, so
    PostgreSQL does not round it (``23:59:59.9999999Z`` would become the next day, and of year 9999,
    year 10000). The version key keeps every digit (:func:`exact_instant`)."""
    if v is not None and v[19:20] == "." and v[26:27].isdigit():
        end = _FRAC.match(v, 20).end()  # type: ignore[union-attr]  # validated: the "." is followed by digits
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
    return _exact_epoch(s)


_NOT_A_PLACE = frozenset({"localtime", "posixrules", "Factory"})
"""Names the tz database accepts that are not a store's place: ``localtime`` is whatever zone the
loading machine (or the PostgreSQL server) is set to, so business dates would depend on where the
sync runs."""


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


NO_DAY_START = timedelta(0)
"""A business day that starts at local midnight (TAPTOUCH_BUSINESS_DAY_START's default)."""


def business_date(at: datetime, tz: str, day_start: timedelta = NO_DAY_START) -> date:
    """THE business-date rule, the one place it is computed (orders' ``business_date``, inventory
    snapshot dates, re-derivation after a store's zone changes, ``taptouch-sync rebuild``): the
    local calendar date of the instant ``at`` in the store's IANA zone ``tz``, for a business day
    that starts ``day_start`` after local midnight (a sale at 02:00 belongs to the day before when
    the day starts at 04:00). ``day_start`` is wall-clock time, like the opening hours a merchant
    sets: on a day whose clocks change, the day still starts at that local time.

    Deliberately not computed in SQL: PostgreSQL reads some zone names as abbreviations with a
    fixed offset (``at time zone 'CET'`` is +01:00 all summer) and may ship other tz data than
    Python, so a second SQL copy of the rule would not be the same rule. (Views that must place a
    stored date in time use migration 0017's ``taptouch.business_day_bounds``, which reads the start
    the stored dates were derived with; the dates themselves are always computed here.)"""
    local = at.astimezone(zone(tz))
    if day_start:
        wall = local.replace(tzinfo=None)
        if wall - datetime.min < day_start:  # before 0001-01-01's start: the first date there is
            return date.min
        local = wall - day_start
    return local.date()


@lru_cache(maxsize=65536)
def _business_date(created_at: str, tz: str, day_start: timedelta = NO_DAY_START) -> date:
    """:func:`business_date` of an order's ``created_at`` text (cut to the microsecond as stored)."""
    return business_date(_instant(created_at), tz, day_start)


def local_date(ts: datetime, tz: str, day_start: timedelta = NO_DAY_START) -> date:
    """The store's business date of an instant (e.g. an inventory snapshot's date: it lines up
    with the ``business_date`` of the sales beside it). The same rule: :func:`business_date`."""
    return business_date(ts, tz, day_start)


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
# the precise path: each declared field in column order, each failure with its reason (the reference)


def _value_at(obj: Any, path: str) -> Any:
    for name in path.split("."):
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


def _precise_value(f: Field, v: Any, where: str) -> Any:
    """The column value of one declared field, or InvalidRecord saying why it cannot be stored."""
    kind = f.kind
    if kind == ID:
        return _id(v, where, f.required)
    if kind == TEXT:
        return _text(v, where, f.required, f.limit)
    if kind == INSTANT:
        return _ts(v, where, f.required)
    if kind == OBJECT:
        return _raw_object(v, where)
    if kind == LIST:
        return _precise_list(f.element, v, where)
    v = _money(v, where, f.required) if kind == MONEY else _number(v, where, f.required)
    if v is None:
        return f.default
    if f.positive and v <= 0:
        raise InvalidRecord(f"{where} must be positive, got {_show(v)}")
    return v


def _precise_row(entity: Entity, obj: Any, prefix: str, given: dict[str, Any]) -> tuple:
    """The entity's row (DERIVED columns from ``given``), checked field by field in column order."""
    row = []
    for f in entity.fields:
        if f.kind == DERIVED:
            row.append(given[f.column_name])
            continue
        v = _precise_value(f, _value_at(obj, f.json_path), prefix + f.json_path)
        if f.column is not None:
            row.append(v)
    return tuple(row)


def _precise_list(of: Entity, raw: msgspec.Raw, where: str) -> str:
    """The exact text of a JSON list of ``of`` records (``[]`` for null), each element checked."""
    b = bytes(raw)
    if b == b"[]" or b == b"null":
        return "[]"
    try:
        elements = _LIST_DECODERS[of.name].decode(b)
    except msgspec.ValidationError as exc:
        reason = _translate(exc, f"{of.name} list")
        raise InvalidRecord(
            f"{where}{reason}" if reason.startswith("[") else f"{where} must be a list of objects ({reason})"
        ) from None
    for j, element in enumerate(elements or ()):
        _precise_row(of, element, f"{where}[{j}].", {})
    return b.decode("utf-8")


def _precise_lines(name: str, child: Entity, lines: list | None, parent: dict[str, Any]) -> list[tuple]:
    """The rows of a list of line records (ids unique in the order), each checked precisely."""
    if not lines:
        return []
    if len(lines) > 1 and child.key is not None:
        seen: set[int] = set()
        for i, line in enumerate(lines):
            key = getattr(line, child.key)
            if key in seen:
                raise InvalidRecord(f"{name}[{i}].{child.key} {key} appears twice in the order")
            seen.add(key)
    return [_precise_row(child, line, f"{name}[{i}].", parent) for i, line in enumerate(lines)]


# --------------------------------------------------------------------------------------------
# the fast path: straight-line code generated from the same declarations; anything unusual -> _Declined


class _Declined(Exception):
    """The fast path declines: the precise path decides (and says why)."""


_MONEY_CTX = Context(prec=12, traps=[Inexact, InvalidOperation, Overflow])  # numeric(12,2), exact to the cent
_money_exact = (
    _MONEY_CTX.quantize
)  # _money_exact(v, CENT) raises unless v is exact to the cent and within numeric(12,2)


def _plausible_quantity(v: Decimal) -> Decimal:
    if (
        v.__class__ is not Decimal
        or not -IMPLAUSIBLE <= v <= IMPLAUSIBLE
        or (v != v.to_integral_value() and v.as_tuple().exponent < -NUMERIC_MAX_SCALE)  # type: ignore[operator]  # finite here: an int exponent
    ):
        raise _Declined
    return v


def _fast_check(f: Field, v: str, i: int) -> list[str]:
    """Source lines that raise (_Declined, or an error the caller maps to it) unless local ``v`` holds a
    value :func:`_precise_value` accepts, and leave in ``v`` the same column value."""
    if f.kind == ID:
        return [
            f"if not 0 <= {v} <= BIGINT_MAX: raise _Declined"
            if f.required
            else f"if {v} is not None and not 0 <= {v} <= BIGINT_MAX: raise _Declined"
        ]
    if f.kind == TEXT:
        return [
            f"if len({v}) > {f.limit} or not {v}.strip(): raise _Declined"
            if f.required
            else f"if {v} is not None and len({v}) > {f.limit}: raise _Declined"
        ]
    if f.kind == LIST:
        return [f"{v} = bytes({v})", f'{v} = "[]" if {v} == b"[]" or {v} == b"null" else list_{i}({v})']
    checks = {
        INSTANT: [f"_instant({v})", f"if {v}[26:27].isdigit(): {v} = _pg({v})"],
        MONEY: [f"_money_exact({v}, CENT)"],
        QUANTITY: [f"_plausible_quantity({v})"] + ([f"if not {v} > 0: raise _Declined"] if f.positive else []),
    }.get(f.kind)
    if checks is None:
        return ["raise _Declined"]  # OBJECT: left to the precise path
    if f.required:
        return checks  # None fails them too
    return [f"if {v} is None:", f"    {v} = default_{i}", "else:", *(f"    {c}" for c in checks)]


def _attribute(obj: str, path: str) -> str:
    """Source reading ``path`` (dotted) of ``obj``: ``o.name``, or getattr for a name Python cannot spell."""
    for name in path.split("."):
        obj = f"{obj}.{name}" if name.isidentifier() and not iskeyword(name) else f"getattr({obj}, {name!r})"
    return obj


def _fast_source(entity: Entity) -> str:
    """``fast_<entity>(o, <DERIVED columns>)``: the row of a decoded record, or an exception."""
    given = [f.column_name for f in entity.fields if f.kind == DERIVED]
    lines = [f"def fast_{entity.name}({', '.join(['o', *given])}):"]
    cells: list[str] = []
    objects: dict[str, str] = {}
    for i, f in enumerate(entity.fields):
        if f.kind == DERIVED:
            cells.append(f.column_name)
            continue
        v, (head, _, rest) = f"v{i}", f.json_path.partition(".")
        if rest and head not in objects:
            lines.append(f"    n{i} = {_attribute('o', head)}")
            objects[head] = f"n{i}"
        lines.append(
            f"    {v} = None if {objects[head]} is None else {_attribute(objects[head], rest)}"
            if rest
            else f"    {v} = {_attribute('o', head)}"
        )
        lines += [f"    {line}" for line in _fast_check(f, v, i)]
        if f.column is not None:
            cells.append(v)
    lines.append(f"    return ({''.join(c + ', ' for c in cells)})")
    return "\n".join(lines) + "\n"


def _fast_list(b: bytes, decoder: msgspec.json.Decoder, check: Callable) -> str:
    """The text of a non-empty JSON list, each element checked by ``check`` (a generated fast path)."""
    for element in decoder.decode(b) or ():
        check(element)
    return b.decode("utf-8")


def fast_row_function(entity: Entity) -> Callable[..., tuple]:
    """Compile :func:`_fast_source` of the entity (``print(_fast_source(ORDER))`` shows the code)."""
    namespace: dict[str, Any] = {
        "BIGINT_MAX": BIGINT_MAX,
        "CENT": CENT,
        "_Declined": _Declined,
        "_money_exact": _money_exact,
        "_plausible_quantity": _plausible_quantity,
        "_instant": _instant,
        "_pg": _pg,
    }
    for i, f in enumerate(entity.fields):
        namespace[f"default_{i}"] = f.default
        if f.kind == LIST:
            namespace[f"list_{i}"] = partial(
                _fast_list, decoder=_LIST_DECODERS[f.element.name], check=fast_row_function(f.element)
            )
    exec(compile(_fast_source(entity), f"<fast path of {entity.name}>", "exec"), namespace)  # noqa: S102
    return namespace[f"fast_{entity.name}"]


def _fast_lines(lines: list | None, fast: Callable, key: str, parent_key: int) -> list[tuple]:
    if not lines:
        return []
    if len(lines) > 1 and len({getattr(line, key) for line in lines}) != len(lines):
        raise _Declined
    return [fast(line, parent_key) for line in lines]


# --------------------------------------------------------------------------------------------
# an order: its declared fields (either path), then its own arithmetic (one function, both paths)


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


_ORDER_AT = {c: i for i, c in enumerate(ORDER.columns)}
_ORDER_SUMS = itemgetter(*(_ORDER_AT[c] for c in ("subtotal", "discount", "surcharge", "rounding", "total", "status")))
_ITEM_SUMS = itemgetter(
    *(ORDER.lines[0][1].columns.index(c) for c in ("quantity", "unit_price", "discount", "total", "modifiers"))
)
_PAYMENT_AMOUNT = itemgetter(ORDER.lines[1][1].columns.index("amount"))
_REFUND_AMOUNT = itemgetter(ORDER.lines[2][1].columns.index("amount"))
_FAST_ORDER = fast_row_function(ORDER)
_FAST_LINES = tuple((name, fast_row_function(child), child.key or "id") for name, child in ORDER.lines)


_REFUNDED = frozenset({"partially_refunded", "refunded"})


@lru_cache(maxsize=4096)
def _modifier_sum(text: str) -> Decimal:
    """Σ price × quantity (1 when unsent) of a checked modifier list's text."""
    total = ZERO
    for m in _LIST_DECODERS["modifier"].decode(text) or ():
        total += m.price * (1 if m.quantity is None else m.quantity)
    return total


def _order_sums(order: tuple, items: list, payments: list, refunds: list) -> None:
    """Each item's total, subtotal = Σ item totals, total = subtotal − discount + surcharge +
    rounding, a completed order paid in full, a refunded or partially refunded one with a refund, and its refunds summing to what the order's history row
    holds; InvalidRecord says which does not add up."""
    subtotal, discount, surcharge, rounding, total, status = _ORDER_SUMS(order)
    item_sum = ZERO
    for i, item in enumerate(items):
        qty, price, discount_i, item_total, modifiers = _ITEM_SUMS(item)
        expected = qty * (price + (_modifier_sum(modifiers) if modifiers != "[]" else 0)) - discount_i
        if abs(expected - item_total) >= CENT:  # fractional quantities round to the cent
            raise InvalidRecord(
                f"items[{i}].total {item_total} != quantity x (unit_price + modifiers) - discount = "
                f"{expected.quantize(CENT) if abs(expected) < IMPLAUSIBLE * 1000 else expected}"
            )
        item_sum += item_total
    if item_sum != subtotal:  # no items: the subtotal is 0 (the contract's subtotal = sum of item totals)
        raise InvalidRecord(f"subtotal {subtotal} != sum of item totals {item_sum}")
    expected_total = subtotal - discount + surcharge + rounding
    if expected_total != total:
        raise InvalidRecord(f"total {total} != subtotal - discount + surcharge + rounding = {expected_total}")
    if status == "completed":
        paid = sum(map(_PAYMENT_AMOUNT, payments), ZERO)
        if paid != total:
            raise InvalidRecord(f"completed order: payments sum to {paid}, total is {total}")
    if not refunds and status in _REFUNDED:  # the contract: refunds "non-empty for partially_refunded and refunded"
        raise InvalidRecord(f"{status} order without any refund (refunds is empty)")
    if refunds:
        refunded = sum(map(_REFUND_AMOUNT, refunds), ZERO)
        if abs(refunded) > REFUNDS_MAX:
            raise InvalidRecord(
                f"refunds sum to {refunded}, beyond what the order's history row holds (numeric(14,2): {REFUNDS_MAX})"
            )


def _order_precise(
    o: Any, raw: bytes, tz: str, listed_store: int | None, day_start: timedelta = NO_DAY_START
) -> OrderRows:
    """The order by :func:`_precise_row` (the reference: says exactly why a record cannot be stored)."""
    try:
        business_day = _business_date(o.created_at, tz, day_start)
    except (_BadInstant, TypeError):
        business_day = None  # created_at's own check says why
    order = _precise_row(ORDER, o, "", {"business_date": business_day})
    given = dict(zip(ORDER.columns, order, strict=True))
    if listed_store is not None and given["store_id"] != listed_store:
        raise InvalidRecord(f"store_id {given['store_id']} differs from the store it was listed under ({listed_store})")
    items, payments, refunds = (_precise_lines(name, child, getattr(o, name), given) for name, child in ORDER.lines)
    _order_sums(order, items, payments, refunds)
    return OrderRows(
        given["order_id"],
        given["store_id"],
        exact_instant(o.updated_at),
        order,
        items,
        payments,
        refunds,
        raw.decode("utf-8"),
    )


def _order_fast(
    o: Any, raw: bytes, tz: str, listed_store: int | None, day_start: timedelta = NO_DAY_START
) -> OrderRows:
    """The order by the generated code, or _Declined. Its contract with :func:`_order_precise` (the same
    rows, or a decline): tests/records/test_records_properties.py."""
    try:
        order = _FAST_ORDER(o, _business_date(o.created_at, tz, day_start))
        oid, sid = order[0], order[1]
        if listed_store is not None and sid != listed_store:
            raise _Declined
        items, payments, refunds = (_fast_lines(getattr(o, name), fast, key, oid) for name, fast, key in _FAST_LINES)
        _order_sums(order, items, payments, refunds)
        return OrderRows(oid, sid, _exact_epoch(o.updated_at), order, items, payments, refunds, raw.decode("utf-8"))
    except (
        _Declined,
        InvalidRecord,
        ArithmeticError,
        _BadInstant,
        TypeError,
        AttributeError,
        ValueError,
        msgspec.ValidationError,
        OverflowError,
        ZoneInfoNotFoundError,
    ):
        raise _Declined from None


# --------------------------------------------------------------------------------------------
# the entry points


# Deepest nesting a record may have: a fixed limit, so that whether a record is "nested too deeply"
# never depends on how deep the decoding thread's stack already is (the recursion limit is shared
# with the caller's frames: a worker process, the loader's thread under Dagster, under the CLI).
MAX_NESTING = 512
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _nesting_over(raw: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects deeper than ``limit`` (strings skipped)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for c in _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS):
        depth += 1 if c in (0x5B, 0x7B) else -1
        if depth > limit:
            return True
    return False


def _checked(raw: bytes, entity: str, decoder: msgspec.json.Decoder) -> Any:
    """The record decoded into its typed shape, or InvalidRecord with the most precise reason.

    Screens (all compiled code): a ``\\u0000`` escape (jsonb and text cannot hold NUL), an exponent or
    a run of thousands of digits (a number maybe beyond ``numeric``'s range, in any field) send the
    record down the precise path; a number field sent as a string fails the typed number decode.
    A false alarm (e.g. a text like "10e5") costs time, never correctness."""
    if _nesting_over(raw):
        raise InvalidRecord(f"the {entity} record is nested too deeply to be stored (more than {MAX_NESTING} levels)")
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


def order_rows(
    record: Any, timezone_name: str, store_id: int | None = None, day_start: timedelta = NO_DAY_START
) -> OrderRows:
    """Validate one order (its bytes, or a parsed record) and build its rows, its ``business_date``
    by :func:`business_date` for a business day starting ``day_start`` after local midnight.
    Raises InvalidRecord only."""
    raw = as_bytes(record)
    try:
        o = _checked(raw, "order", _DECODERS["order"])
        try:
            return _order_fast(o, raw, timezone_name, store_id, day_start)
        except _Declined:
            return _order_precise(o, raw, timezone_name, store_id, day_start)  # the authority: says exactly why
    except InvalidRecord:
        raise
    except Exception as exc:  # a rule this module did not foresee: that record, not the window
        raise _unforeseen(raw, "order", exc) from None


_STORE_ZONE = STORE.columns.index("timezone")


def store_row(record: Any) -> tuple[tuple, Decimal, str]:
    """(the ``taptouch.stores`` row in loader column order, exact version key, raw text)."""
    raw = as_bytes(record)
    try:
        s = _checked(raw, "store", _DECODERS["store"])
        row = _precise_row(STORE, s, "", {})
        tz = row[_STORE_ZONE]
        try:
            if tz in _NOT_A_PLACE or tz.startswith(("posix/", "right/")):
                raise ValueError(tz)  # this machine's zone, a placeholder, or leap-second clocks
            zone(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidRecord(f"timezone {tz!r} is not an IANA time zone (needed for business dates)") from None
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
        r = _checked(raw, "inventory", _DECODERS["inventory"])
        row = _precise_row(INVENTORY, r, "", {"store_id": store_id})
        return row, None if r.updated_at is None else exact_instant(r.updated_at), raw.decode("utf-8")
    except InvalidRecord:
        raise
    except Exception as exc:
        raise _unforeseen(raw, "inventory", exc) from None


# --------------------------------------------------------------------------------------------
# column tuples (the loader's column order) and dict-shaped views (compatibility with the former
# ``taptouch_resource.api.parse_*``)

STORE_COLS = STORE.columns
INVENTORY_COLS = INVENTORY.columns
ORDER_COLS = ORDER.columns
ITEM_COLS, PAYMENT_COLS, REFUND_COLS = (child.columns for _, child in ORDER.lines)
_TS_COLS = {f.column for e in ENTITIES.values() for t in tables(e) for f in t.fields if f.kind == INSTANT}
_JSON_COLS = {f.column for e in ENTITIES.values() for t in tables(e) for f in t.fields if f.kind in (OBJECT, LIST)}


def _as_dict(cols: tuple, row: tuple) -> dict:
    d = dict(zip(cols, row, strict=True))
    for c in _TS_COLS & d.keys():
        if d[c] is not None:
            d[c] = instant(d[c])
    for c in _JSON_COLS & d.keys():
        if isinstance(d[c], str):
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
    return {
        "order": _as_dict(ORDER_COLS, r.order),
        "items": [_as_dict(ITEM_COLS, x) for x in r.items],
        "payments": [_as_dict(PAYMENT_COLS, x) for x in r.payments],
        "refunds": [_as_dict(REFUND_COLS, x) for x in r.refunds],
    }


# --------------------------------------------------------------------------------------------
# quarantine


class _Version(msgspec.Struct):
    updated_at: Any = None


_VERSION = msgspec.json.Decoder(_Version)


def record_version(record: Any) -> Decimal | None:
    """A record's exact version (``updated_at`` as epoch seconds, every digit sent), if readable:
    the version a listing read, and the version of a quarantined record (a quarantine row is
    resolved only by a valid version at least as new)."""
    try:
        text = record.get("updated_at") if isinstance(record, dict) else _VERSION.decode(as_bytes(record)).updated_at
        return exact_instant(text) if isinstance(text, str) else None
    except (msgspec.DecodeError, RecursionError, ValueError, ArithmeticError):
        return None


def record_key(entity: str, record: Any) -> str | None:
    """Best-effort identity of a record (its id as text), for quarantine rows."""
    if isinstance(record, dict):
        doc = record
    else:
        try:
            doc = _loads_tolerant(_text_of(as_bytes(record)))
        except (ValueError, RecursionError):  # e.g. nested too deep: read a leading integer id if there is one
            m = re.search(
                rb'"' + _ID_FIELD[entity].encode() + rb'"\s*:\s*(-?[0-9]{1,19})\s*[,}]', as_bytes(record)[:4096]
            )
            return m.group(1).decode() if m else None
    if not isinstance(doc, dict):
        return None
    value = doc.get(_ID_FIELD[entity])
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)[:200]
    return (
        text
        if _text_problem(text) is None
        else text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\u0000")
    )


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
