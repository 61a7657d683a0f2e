"""Exact JSON: money and quantities are parsed as ``Decimal`` and written back unchanged.

:func:`loads` reads ``45.50`` as ``Decimal("45.50")`` (never through a binary float) and, to let the
record boundary say why a record is refused, also reads the non-JSON constants ``NaN`` and
``Infinity`` as ``Decimal``. :func:`dumps` writes a ``Decimal`` as the number it is, in compiled code
(msgspec with ``decimal_format="number"``): no markers, no text substitutions, so no string value
can ever be mistaken for a number.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec

_ENCODER = msgspec.json.Encoder(decimal_format="number")


def loads(data: str | bytes | bytearray) -> Any:
    """Parse JSON with every non-integer number as ``Decimal`` (never through float).

    Raises ValueError for text that is not JSON, and for an integer of more than 4300 digits
    (Python's limit; the record boundary reads those exactly from the record's bytes)."""
    return json.loads(data, parse_float=Decimal, parse_constant=Decimal)


def dumps(obj: Any) -> str:
    """Serialise with ``Decimal`` written as the number it is (``Decimal("45.50")`` -> ``45.50``).

    Raises ValueError for a value JSON cannot hold (NaN, Infinity) and for text that is not valid
    Unicode (a lone surrogate)."""
    _check_finite(obj)
    try:
        return _ENCODER.encode(obj).decode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text that is not valid Unicode cannot be written as JSON: {exc.reason}") from None


def _check_finite(obj: Any) -> None:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, Decimal):
            if not o.is_finite():
                raise ValueError(f"{o} is not representable in JSON")
        elif isinstance(o, float):
            if o != o or o in (float("inf"), float("-inf")):
                raise ValueError(f"{o} is not representable in JSON")
        elif isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
