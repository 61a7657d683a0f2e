"""The analysts' views: ``sql/analytics/<name>.sql`` each create or replace ``analytics.<name>``.

Owned by the analytics assets alone; what a view reads is taken from its SQL, so the asset graph
cannot disagree with it. Applying never drops a view it does not recreate (a view whose columns
changed is recreated with its dependents in one transaction, and only when they are all project
views), and comments each view it applies. docs/analytics.md.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import psycopg
from psycopg import sql

from .comments import write_comments
from .db import first_value, project_root

log = logging.getLogger(__name__)
_LOCK = zlib.crc32(b"taptouch.analytics.views")
SCHEMA = "analytics"


class ViewConflictError(RuntimeError):
    """A view cannot be replaced without dropping a view that is not ours to recreate."""


def analytics_dir() -> Path:
    return project_root() / "sql" / "analytics"


def view_names(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or analytics_dir()).glob("*.sql"))


def view_sql(name: str, directory: Path | None = None) -> str:
    return ((directory or analytics_dir()) / f"{name}.sql").read_text(encoding="utf-8")


def view_description(name: str, directory: Path | None = None) -> str:
    """The first line of the file's header comment."""
    first = view_sql(name, directory).splitlines()[0].lstrip("- ").strip()
    return first or f"{SCHEMA}.{name}"


_COMMENT = re.compile(r"--[^\n]*")
_RELATION = re.compile(r"\b(taptouch|analytics)\.([a-z_][a-z0-9_]*)\b(?!\s*\()")  # a function call is no relation


def view_reads(name: str, directory: Path | None = None) -> dict[str, set[str]]:
    """The relations the view's SQL reads, by schema: ``{"taptouch": {tables}, "analytics": {views}}``."""
    code = _COMMENT.sub("", view_sql(name, directory))
    reads: dict[str, set[str]] = {"taptouch": set(), "analytics": set()}
    for schema, relation in _RELATION.findall(code):
        if (schema, relation) != (SCHEMA, name):
            reads[schema].add(relation)
    return reads


def in_dependency_order(names: list[str], directory: Path | None = None) -> list[str]:
    """``names`` plus the views they build on, each after the views it reads."""
    known = set(view_names(directory))
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in path:
            raise ValueError(f"analytics views depend on each other in a cycle: {' -> '.join(path + (name,))}")
        for dep in sorted(view_reads(name, directory)["analytics"] & known):
            visit(dep, path + (name,))
        ordered.append(name)

    for name in names:
        visit(name, ())
    return ordered


def _exists(cur: psycopg.Cursor, name: str) -> bool:
    cur.execute("select to_regclass(%s) is not null", (f"{SCHEMA}.{name}",))
    return first_value(cur)


def _dependent_views(cur: psycopg.Cursor, name: str) -> list[tuple[str, str]]:
    """(schema, view) of every view or materialized view built on ``analytics.<name>``, directly or not."""
    cur.execute(
        """
        with recursive dependents(oid) as (
            select rewrite.ev_class
            from pg_depend as dep
            join pg_rewrite as rewrite on rewrite.oid = dep.objid
            where dep.classid = 'pg_rewrite'::regclass and dep.refobjid = %s::regclass
              and rewrite.ev_class <> dep.refobjid
            union
            select rewrite.ev_class
            from dependents
            join pg_depend as dep on dep.refobjid = dependents.oid and dep.classid = 'pg_rewrite'::regclass
            join pg_rewrite as rewrite on rewrite.oid = dep.objid
            where rewrite.ev_class <> dep.refobjid
        )
        select ns.nspname, cls.relname
        from dependents
        join pg_class as cls on cls.oid = dependents.oid
        join pg_namespace as ns on ns.oid = cls.relnamespace
        order by 1, 2
        """,
        (f"{SCHEMA}.{name}",),
    )
    return cur.fetchall()


def _recreate(cur: psycopg.Cursor, name: str) -> list[str]:
    """Drop ``name`` and the views built on it, then create them again, in dependency order.
    Refuses (dropping nothing) when a dependent is not one of ours. Returns the views recreated."""
    ours = set(view_names())
    dependents = _dependent_views(cur, name)
    foreign = [f"{schema}.{view}" for schema, view in dependents if schema != SCHEMA or view not in ours]
    if foreign:
        raise ViewConflictError(
            f"analytics.{name} changed its columns, so it must be dropped and recreated, but "
            f"{', '.join(foreign)} depend(s) on it and cannot be recreated from sql/analytics/. "
            f"Drop or adapt them, then materialize {name} again."
        )
    again = [n for n in in_dependency_order(sorted(view for _, view in dependents)) if n != name]
    cur.execute(sql.SQL("drop view {} cascade").format(sql.Identifier(SCHEMA, name)))
    for view in [name] + again:
        cur.execute(view_sql(view))
    return again


def apply_views(conn: psycopg.Connection, names: list[str] | None = None) -> list[str]:
    """Create or replace the named views (all by default), in dependency order, in one transaction.

    A view the named ones build on is created too when it does not exist yet (never replaced:
    its own asset does that). Returns the names applied."""
    wanted = view_names() if names is None else names
    applied: list[str] = []
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK,))
        for name in in_dependency_order(wanted):
            if name not in wanted and _exists(cur, name):
                continue
            try:
                with conn.transaction():
                    cur.execute(view_sql(name))
            except psycopg.errors.InvalidTableDefinition:
                recreated = _recreate(cur, name)
                if recreated:
                    log.info("analytics.%s changed its columns: recreated with %s", name, ", ".join(recreated))
            applied.append(name)
        # A view dropped and recreated (with the views built on it) has lost its comments.
        write_comments(
            conn, {(SCHEMA, name): (view_description(name), dict(view_columns(name))) for name in view_names()}
        )
    log.info("analytics views applied: %s", ", ".join(applied))
    return applied


# ---------------------------------------------------------------------------- column descriptions

_COLUMNS_HEAD = re.compile(r"^--\s*Columns:\s*$")
_COLUMN_LINE = re.compile(r"^--   (\w[\w, ]*?\w)\s{2,}(\S.*)$")
_CONTINUATION = re.compile(r"^--\s{4,}(\S.*)$")


def view_columns(name: str, directory: Path | None = None) -> list[tuple[str, str]]:
    """(column, description) from the ``-- Columns:`` block of a view's header, in order."""
    cols: list[list[str]] = []
    inside = False
    for line in view_sql(name, directory).splitlines():
        if not inside:
            inside = bool(_COLUMNS_HEAD.match(line))
            continue
        m = _COLUMN_LINE.match(line)
        if m:
            for col in m.group(1).split(","):
                cols.append([col.strip(), m.group(2).strip()])
            continue
        c = _CONTINUATION.match(line)
        if c and cols:
            cols[-1][1] += " " + c.group(1).strip()
            continue
        break
    return [(n, d) for n, d in cols]
