"""Exact JSON: money and quantities are parsed as ``Decimal`` and written back unchanged.

``json.loads(..., parse_float=Decimal)`` reads ``45.50`` as ``Decimal("45.50")``; the standard
encoder cannot write a ``Decimal`` as a bare number, so :func:`dumps` marks decimals while the C
encoder runs and strips the marks afterwards (one regex pass, far cheaper than a Python encoder).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

# A NUL-prefixed marker: a NUL can never reach the marker position from real data we keep, because
# text with NUL bytes is rejected by validation before anything is written (Postgres refuses NUL).
_MARK = "\x00D"
_END = "\x00E"
_MARKED = re.compile(r'"\\u0000D([^"]*?)\\u0000E"')


def _parse_constant(name: str) -> Decimal:
    # NaN / Infinity / -Infinity are not JSON; Python accepts them. Keep them visible to validation.
    return Decimal(name)


def loads(data: str | bytes) -> Any:
    """Parse JSON with every non-integer number as ``Decimal`` (never through float)."""
    return json.loads(data, parse_float=Decimal, parse_constant=_parse_constant)


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            raise ValueError(f"{obj} is not representable in JSON")
        return _MARK + str(obj) + _END
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """Serialise with ``Decimal`` written as the number it is (``Decimal("45.50")`` -> ``45.50``)."""
    text = json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":"))
    if "\\u0000D" in text:
        # Fast path (two C-level replaces): exact when no other NUL escape is left, i.e. every
        # \u0000 was one of our marks. Otherwise the regex, which touches only whole marks.
        fast = text.replace('"\\u0000D', "").replace('\\u0000E"', "")
        if "\\u0000" not in fast:
            return fast
        text = _MARKED.sub(r"\1", text)
    return text
