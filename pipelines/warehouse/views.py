"""The analysts' views: ``sql/analytics/<name>.sql`` each create or replace ``analytics.<name>``.

Views are repeatable (unlike migrations): they are (re)applied by the analytics assets and,
cheaply, before every load, so ``analytics.*`` exists as soon as any table does.
"""

from __future__ import annotations

import logging
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


def apply_views(conn: psycopg.Connection, names: list[str] | None = None) -> list[str]:
    """Create or replace the named views (all by default) in one transaction. Returns the names."""
    names = view_names() if names is None else names
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
