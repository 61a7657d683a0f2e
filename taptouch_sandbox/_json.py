"""JSON for the sandbox: money as exact two-decimal numbers, never through a binary float.

The C encoder cannot emit a bare number it does not know, so a number literal travels through
it as a string tagged with a control character (which the encoder always escapes as ``\\u0002``),
and one regex pass strips the quotes afterwards. Generated data never contains U+0002 itself.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

_MARK = "\x02"
_OPEN = '"\\u0002'  # how the encoder writes the start of a tagged literal
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


_MONEY: dict[int, str] = {}


def money(cents: int) -> str:
    """A cent amount as a tagged JSON number literal with exactly two decimals (``4550`` -> 45.50)."""
    try:
        return _MONEY[cents]
    except KeyError:
        pass
    a = -cents if cents < 0 else cents
    text = f"{_MARK}{'-' if cents < 0 else ''}{a // 100}.{a % 100:02d}"
    if len(_MONEY) < 200_000:
        _MONEY[cents] = text
    return text


def number(value: Decimal) -> str:
    """A Decimal as a tagged JSON number literal, digits exactly as ``str(value)``."""
    return _MARK + str(value)


def prepare(obj: Any) -> Any:
    """Replace every Decimal in a JSON-shaped structure by its tagged literal (a copy)."""
    t = type(obj)
    if t is dict:
        return {k: prepare(v) for k, v in obj.items()}
    if t is list or t is tuple:
        return [prepare(v) for v in obj]
    if t is Decimal:
        return _MARK + str(obj)
    return obj


def _untag(text: str) -> str:
    parts = text.split(_OPEN)
    if len(parts) == 1:
        return text
    # each tagged literal is followed by its closing quote, the first quote in its part
    return parts[0] + "".join([p.replace('"', "", 1) for p in parts[1:]])


def dumps_prepared(obj: Any) -> str:
    """Encode a structure whose numbers are already tagged (see ``money``/``number``)."""
    return _untag(_encode(obj))


def dumps(obj: Any) -> str:
    """Encode any JSON-shaped structure; Decimals come out as numbers with their own digits."""
    return _untag(_encode(prepare(obj)))


def loads(text: str | bytes) -> Any:
    """Parse as a client should: every non-integer number as a Decimal."""
    return json.loads(text, parse_float=Decimal)
