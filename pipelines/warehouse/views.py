"""The analysts' views: ``sql/analytics/<name>.sql`` each create or replace ``analytics.<name>``.

Views are repeatable (unlike migrations): they are (re)applied by the analytics assets and,
cheaply, before every load, so ``analytics.*`` exists as soon as any table does.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path

import psycopg

from .db import project_root

log = logging.getLogger(__name__)
_LOCK = zlib.crc32(b"taptouch.analytics.views")


def analytics_dir() -> Path:
    return project_root() / "sql" / "analytics"


def view_names(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or analytics_dir()).glob("*.sql"))


def view_sql(name: str, directory: Path | None = None) -> str:
    return ((directory or analytics_dir()) / f"{name}.sql").read_text(encoding="utf-8")


_DEPENDS = re.compile(r"^--\s*depends:\s*(.+)$", re.MULTILINE)


def view_depends(name: str, directory: Path | None = None) -> list[str]:
    """What a view's header line ``-- depends: a, b`` names (assets and other views)."""
    m = _DEPENDS.search(view_sql(name, directory))
    return [d.strip() for d in m.group(1).split(",") if d.strip()] if m else []


def in_dependency_order(names: list[str], directory: Path | None = None) -> list[str]:
    """``names`` plus the views they build on, each after the views it depends on."""
    known = set(view_names(directory))
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered:
            return
        if name in path:
            raise ValueError(f"analytics views depend on each other in a cycle: {' -> '.join(path + (name,))}")
        for dep in view_depends(name, directory):
            if dep in known:
                visit(dep, path + (name,))
        ordered.append(name)

    for name in names:
        visit(name, ())
    return ordered


def apply_views(conn: psycopg.Connection, names: list[str] | None = None) -> list[str]:
    """Create or replace the named views (all by default) and the views they build on, in
    dependency order, in one transaction. Returns the names applied."""
    names = in_dependency_order(view_names() if names is None else names)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK,))
        for name in names:
            try:
                with conn.transaction():
                    cur.execute(view_sql(name))
            except psycopg.errors.InvalidTableDefinition:
                # a changed column list cannot be "replaced": drop and create (dependent views are ours too)
                cur.execute(f'drop view if exists analytics."{name}" cascade')
                cur.execute(view_sql(name))
    log.info("analytics views applied: %s", ", ".join(names))
    return names
