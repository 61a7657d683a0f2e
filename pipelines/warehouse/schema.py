"""Column schemas of the warehouse, read from the SQL files that create it (never written twice).

Tables from the ``create table`` and later ``alter table ... add column`` statements of
``sql/migrations/``, with descriptions from :mod:`pipelines.warehouse.catalog`; views from the
``-- Columns:`` block of their SQL header (types from the database when materialized:
:func:`view_schema_from_db`). The assets take ``dagster/table_name``, ``dagster/column_schema`` and
a view's ``code_version`` from here. docs/alerts.md, "Views that know their version, and the catalog".
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import dagster as dg

from .catalog import column_text, view_columns  # noqa: F401  (view_columns: re-exported)
from .db import project_root
from .migrations import discover
from .views import analytics_dir, view_sql


@dataclass
class Column:
    name: str
    type: str
    nullable: bool = True
    primary_key: bool = False
    description: str | None = None


@dataclass
class Table:
    schema: str
    name: str
    columns: dict[str, Column] = field(default_factory=dict)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


_CREATE = re.compile(
    r"create\s+table\s+(?:if\s+not\s+exists\s+)?(\w+)\.(\w+)\s*\((.*?)\)\s*;", re.IGNORECASE | re.DOTALL
)
_ALTER = re.compile(r"alter\s+table\s+(?:if\s+exists\s+)?(?:only\s+)?(\w+)\.(\w+)\s+(.*?);", re.IGNORECASE | re.DOTALL)
_ADD = re.compile(r"^\s*add\s+(?:column\s+)?(?:if\s+not\s+exists\s+)?(.+)$", re.IGNORECASE | re.DOTALL)
_DROP = re.compile(r"^\s*drop\s+(?:column\s+)?(?:if\s+exists\s+)?\"?(\w+)\"?", re.IGNORECASE)
_CONSTRAINT = re.compile(r"^(primary\s+key|unique|foreign\s+key|check|constraint|exclude)\b", re.IGNORECASE)
# where a column's type ends: the first constraint keyword
_TYPE_END = re.compile(
    r"\s+(not\s+null|null|default|primary\s+key|references|unique|check|generated|collate|constraint)\b",
    re.IGNORECASE,
)
_PK_LIST = re.compile(r"primary\s+key\s*\(([^)]*)\)", re.IGNORECASE)


def _split_top_level(body: str) -> list[str]:
    """Split on commas outside parentheses and quotes (``numeric(12,2)``, ``default 'a, b'``)."""
    parts: list[str] = []
    cur: list[str] = []
    depth, quote = 0, None
    for ch in body:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0 and not quote:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _strip_comments(text: str) -> str:
    """The text with every ``-- comment`` blanked out (offsets kept)."""
    return re.sub(r"--[^\n]*", lambda m: " " * len(m.group(0)), text)


def _line_comments(raw: str) -> dict[str, str]:
    """column name -> the ``-- comment`` ending the line that defines it."""
    found: dict[str, str] = {}
    for line in raw.splitlines():
        code, sep, comment = line.partition("--")
        word = code.split()
        if sep and word and comment.strip():
            found.setdefault(word[0].strip('"').lower(), comment.strip())
    return found


def _column(defn: str, comment: str | None) -> Column | None:
    text = " ".join(defn.split())
    if not text or _CONSTRAINT.match(text):
        return None
    name, _, rest = text.partition(" ")
    m = _TYPE_END.search(" " + rest)
    col_type = (rest[: m.start()] if m else rest).strip() or "unknown"
    lowered = rest.lower()
    pk = "primary key" in lowered
    nullable = not ("not null" in lowered or pk)
    return Column(name=name.strip('"'), type=col_type.lower(), nullable=nullable, primary_key=pk, description=comment)


def parse_migrations(paths: list[Path]) -> dict[str, Table]:
    """Tables (``schema.table`` -> :class:`Table`) after applying ``paths`` in order."""
    tables: dict[str, Table] = {}
    for path in paths:
        raw = path.read_text(encoding="utf-8")
        text = _strip_comments(raw)
        events = [(m.start(), "create", m) for m in _CREATE.finditer(text)]
        events += [(m.start(), "alter", m) for m in _ALTER.finditer(text)]
        for _, kind, m in sorted(events, key=lambda e: e[0]):
            key = f"{m.group(1).lower()}.{m.group(2).lower()}"
            if kind == "create":
                if key in tables:
                    continue  # "if not exists": the first definition stands
                table = tables[key] = Table(m.group(1).lower(), m.group(2).lower())
                pk_cols: list[str] = []
                comments = _line_comments(raw[m.start(3) : m.end(3)])
                for defn in _split_top_level(m.group(3)):
                    flat = " ".join(defn.split())
                    pk = _PK_LIST.search(flat)
                    if pk and _CONSTRAINT.match(flat):
                        pk_cols = [c.strip().strip('"') for c in pk.group(1).split(",")]
                    col = _column(defn, None)
                    if col:
                        col.description = comments.get(col.name.lower())
                        table.columns[col.name] = col
                for name in pk_cols:
                    if name in table.columns:
                        table.columns[name].primary_key = True
                        table.columns[name].nullable = False
            else:
                if key not in tables:
                    continue
                table = tables[key]
                for action in _split_top_level(m.group(3)):
                    add = _ADD.match(action)
                    if add and not _CONSTRAINT.match(add.group(1).strip()):
                        col = _column(add.group(1), None)
                        if col and col.name not in table.columns:
                            table.columns[col.name] = col
                        continue
                    drop = _DROP.match(action)
                    if drop:
                        table.columns.pop(drop.group(1).lower(), None)
    return tables


@cache
def warehouse_tables() -> dict[str, Table]:
    """Every table the migrations create, as they stand after the last migration."""
    return parse_migrations([m.path for m in discover()])


def _table_schema(qualified: str, columns: list[Column]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type,
                description=column_text(qualified, c.name) or c.description,
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
                tags={"primary_key": "true"} if c.primary_key else None,
            )
            for c in columns
        ]
    )


def table_schema(qualified: str) -> dg.TableSchema:
    """``dg.TableSchema`` of ``schema.table`` as the migrations define it."""
    try:
        table = warehouse_tables()[qualified]
    except KeyError:
        raise KeyError(f"{qualified} is not created by any file in sql/migrations") from None
    return _table_schema(qualified, list(table.columns.values()))


def table_metadata(qualified: str, *also: str) -> dict:
    """Definition metadata of the asset that writes ``qualified``: ``dagster/table_name`` and
    ``dagster/column_schema``; each table in ``also`` (tables the asset writes too, e.g. an order's
    items) adds ``<table> columns``."""
    meta: dict = {"dagster/table_name": qualified, "dagster/column_schema": table_schema(qualified)}
    for other in also:
        meta[f"{other} columns"] = table_schema(other)
    return meta


# ------------------------------------------------------------------------------------------ views


def view_code_version(name: str, directory: Path | None = None) -> str:
    """The view's code version: the first 12 hex digits of the sha256 of its SQL file."""
    return hashlib.sha256(view_sql(name, directory).encode()).hexdigest()[:12]


def view_metadata(name: str) -> dict:
    """Definition metadata of a view asset (the column types follow at materialization)."""
    return {
        "dagster/table_name": f"analytics.{name}",
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=col, type="unknown", description=desc) for col, desc in view_columns(name)]
        ),
        "sql": dg.MetadataValue.path(view_sql_path(name)),
    }


def view_sql_path(name: str) -> str:
    """Where the view's SQL lives, relative to the repository (``sql/analytics/<name>.sql``): the
    same on every machine that loads the code."""
    return (analytics_dir() / f"{name}.sql").relative_to(project_root()).as_posix()


def view_schema_from_db(conn, name: str, schema: str = "analytics") -> dg.TableSchema:
    """The view's columns with their types from ``information_schema``, described from its header."""
    described = dict(view_columns(name))
    with conn.cursor() as cur:
        cur.execute(
            "select column_name, data_type, numeric_precision, numeric_scale from information_schema.columns"
            " where table_schema = %s and table_name = %s order by ordinal_position",
            (schema, name),
        )
        rows = cur.fetchall()
    cols = []
    for col, data_type, precision, scale in rows:
        if data_type == "numeric" and precision is not None:
            data_type = f"numeric({precision},{scale})"
        cols.append(dg.TableColumn(name=col, type=data_type, description=described.get(col)))
    return dg.TableSchema(columns=cols)


def view_materialization_metadata(warehouse, name: str) -> dict:
    """What a view asset adds to its materialization: its table name and column schema, typed
    from ``information_schema`` (``warehouse``: a PostgresResource)."""
    with warehouse.connect() as conn:
        return {"dagster/table_name": f"analytics.{name}", "dagster/column_schema": view_schema_from_db(conn, name)}


# Views are re-applied when their SQL changes (code_version), when an upstream asset is updated, or
# when they go missing; never while an upstream or the view itself is in progress. Not
# AutomationCondition.eager(): its ~any_deps_missing would wait for every daily partition of orders
# since TAPTOUCH_START_DATE to exist.
VIEW_AUTOMATION = (
    (
        dg.AutomationCondition.newly_missing()
        | dg.AutomationCondition.code_version_changed()
        | dg.AutomationCondition.any_deps_updated()
    ).since_last_handled()  # type: ignore[misc]  # dagster's stub wants an asset-or-check condition; works as is
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("view: missing, SQL changed or upstream updated")
