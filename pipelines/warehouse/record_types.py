"""The msgspec types of the API records, generated from their declarations (:mod:`.entities`).

For each entity: the typed Struct the record boundary decodes into (``Decimal`` read from the
number's exact text; unknown fields allowed and left in ``raw``), and a Struct of its number fields
only, typed as plain JSON numbers, whose decode refuses a number field sent as a string (which the
``Decimal`` decode would read as a number). :func:`number_fields` names the same fields for the
precise path's reasons.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

import msgspec

from .entities import DERIVED, ID, INSTANT, LIST, MONEY, OBJECT, QUANTITY, TEXT, Entity, Field

NULL_RAW = msgspec.Raw(b"null")
_TYPES = {ID: int, MONEY: Decimal, QUANTITY: Decimal, TEXT: str, INSTANT: str}
_NUMBER_KINDS = (MONEY, QUANTITY)


def _nested(entity: Entity) -> tuple[list[Field], dict[str, Entity]]:
    """The entity's fields read at its top level, and its nested objects as entities of their own."""
    top: list[Field] = []
    objects: dict[str, list[Field]] = {}
    for f in entity.fields:
        if f.kind == DERIVED:
            continue
        head, _, rest = f.json_path.partition(".")
        if rest:
            objects.setdefault(head, []).append(replace(f, path=rest))
        else:
            top.append(f)
    return top, {head: Entity(head, None, tuple(fields)) for head, fields in objects.items()}


def _defstruct(name: str, fields: list[tuple]) -> type:
    # kw_only: fields stay in declaration order (close to the API's key order, which msgspec decodes
    # fastest), required ones among optional ones
    return msgspec.defstruct(name, fields, kw_only=True)


def typed_struct(entity: Entity) -> type:
    """The Struct of a whole record: every declared field, nested objects and lists of records."""
    top, objects = _nested(entity)
    fields: list[tuple] = []
    for f in top:
        if f.kind in (OBJECT, LIST):
            fields.append((f.path, msgspec.Raw, NULL_RAW))  # validated and stored as the exact text
        elif f.required:
            fields.append((f.path, _TYPES[f.kind]))
        else:
            fields.append((f.path, _TYPES[f.kind] | None, None))
    fields += [(head, typed_struct(sub) | None, None) for head, sub in objects.items()]
    fields += [(name, list[typed_struct(child)] | None, None) for name, child in entity.lines]  # type: ignore[misc]
    return _defstruct(entity.name.title(), fields)


def number_struct(entity: Entity) -> type | None:
    """The Struct of only the record's number fields as JSON numbers (None: it has none)."""
    top, objects = _nested(entity)
    fields: list[tuple] = [(f.path, int | float | None, None) for f in top if f.kind in _NUMBER_KINDS]
    below = [(f.path, f.of) for f in top if f.kind == LIST and f.of is not None]
    below += [(head, sub) for head, sub in objects.items()] + list(entity.lines)
    for name, sub in below:
        inner = number_struct(sub)
        if inner is not None:
            is_list = name in dict(entity.lines) or any(f.path == name and f.kind == LIST for f in top)
            fields.append((name, (list[inner] if is_list else inner) | None, None))  # type: ignore[valid-type]
    return _defstruct(f"{entity.name.title()}Numbers", fields) if fields else None


def number_fields(entity: Entity) -> tuple[frozenset[str], dict[str, Any]]:
    """(the top-level number fields, {list of records: the same for its elements})."""
    top, _ = _nested(entity)
    names = frozenset(f.json_path for f in top if f.kind in _NUMBER_KINDS)
    below = {f.json_path: number_fields(f.of) for f in top if f.kind == LIST and f.of is not None}
    below.update({name: number_fields(child) for name, child in entity.lines})
    return names, below
