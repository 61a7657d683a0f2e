"""Forward-only schema migrations: numbered plain-SQL files applied in order, once.

``sql/migrations/NNNN_name.sql`` files run each in its own transaction, under an advisory lock,
recorded with their sha256 in ``taptouch_meta.schema_migrations``; a changed applied file is an
error (:class:`MigrationError`). Then tables get their comments (:mod:`pipelines.warehouse.catalog`).
Why no library: docs/warehouse.md, "Migrations".
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from pipelines.warehouse.db import connect, first_value, project_root, redact_url, resolve_database_url

logger = logging.getLogger(__name__)

MIGRATIONS_LOCK_KEY = int.from_bytes(b"taptouch", "big")
"""Key of the session-level advisory lock held while migrating (the bytes of "taptouch")."""

_FILE_NAME = re.compile(r"^(\d+)_([A-Za-z0-9][A-Za-z0-9_\-]*)\.sql$")

_BOOKKEEPING_DDL = """
create schema if not exists taptouch_meta;
create table if not exists taptouch_meta.schema_migrations (
    version     integer primary key,
    name        text not null,
    checksum    text not null,
    applied_at  timestamptz not null default now()
);
"""


# Applied migrations are immutable, except one amended so that a warehouse holding legal old data
# can pass it at all; the amended text writes what the earlier one wrote wherever that one
# succeeded. file name -> sha256 of its earlier texts, taken as the file applied.
AMENDED: dict[str, frozenset[str]] = {
    # 0015 failed on an order whose refunds sum past numeric(14,2) (loaded before the boundary checked
    # the sum): the warehouse stayed at 0014 for good. It records no history version for such an order.
    # (refunds are signed money: a sum of -1e12 or less as well)
    "0015_order_history.sql": frozenset({"f769537ee291ea16a93a0ac3c540938be3a0f672b64eb8a098db361c9dd19b72"}),
}


def _same_file(migration: Migration, applied_checksum: str) -> bool:
    """Whether the file applied with ``applied_checksum`` is this one (or an earlier text of it, :data:`AMENDED`)."""
    return applied_checksum == migration.checksum or applied_checksum in AMENDED.get(migration.name, frozenset())


class MigrationError(RuntimeError):
    """A migration could not be applied, or the applied history does not match the files."""


@dataclass(frozen=True)
class Migration:
    """One ``NNNN_name.sql`` file."""

    version: int
    name: str  # the file name, e.g. "0001_warehouse.sql"
    path: Path
    checksum: str  # sha256 hex of the file bytes

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class MigrationStatus:
    """A migration file and/or its bookkeeping row. ``state`` is ``applied``, ``pending``,
    ``changed`` (applied, but the file's bytes differ since) or ``missing`` (applied, but the
    file is gone: the database is newer than this code)."""

    version: int
    name: str
    state: str
    applied_at: datetime | None = None


def migrations_dir() -> Path:
    """The default directory: ``<project root>/sql/migrations``."""
    return project_root() / "sql" / "migrations"


def discover(directory: str | Path | None = None) -> list[Migration]:
    """The migration files in ``directory`` (default :func:`migrations_dir`), in version order."""
    root = Path(directory) if directory is not None else migrations_dir()
    if not root.is_dir():
        raise MigrationError(f"Migrations directory {root} does not exist.")
    found: dict[int, Migration] = {}
    for path in sorted(root.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files must be named NNNN_name.sql (e.g. 0002_add_x.sql).")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path.name} and {found[version].name} share version {version}: renumber one.")
        found[version] = Migration(
            version=version,
            name=path.name,
            path=path,
            checksum=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
    return [found[v] for v in sorted(found)]


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str, datetime]]:
    """version -> (name, checksum, applied_at); empty when the bookkeeping table is missing."""
    exists = conn.execute("select to_regclass('taptouch_meta.schema_migrations') is not null").fetchone()
    if not exists or not exists[0]:
        return {}
    rows = conn.execute("select version, name, checksum, applied_at from taptouch_meta.schema_migrations").fetchall()
    return {version: (name, checksum, applied_at) for version, name, checksum, applied_at in rows}


def _check_unchanged(files: list[Migration], applied: dict[int, tuple[str, str, datetime]]) -> None:
    known = {m.version for m in files}
    newer = [row[0] for version, row in sorted(applied.items()) if version not in known]
    if newer:
        raise MigrationError(
            f"this database was migrated by a newer taptouch-sync: {', '.join(newer)} "
            f"{'is' if len(newer) == 1 else 'are'} applied there and unknown to this version, whose "
            "code could write what that schema no longer expects. Upgrade taptouch-sync here, or point "
            "the warehouse you gave (TAPTOUCH_DATABASE_URL, --database-url or the warehouse resource's "
            "database_url) at one of this version."
        )
    for migration in files:
        row = applied.get(migration.version)
        if row is not None and not _same_file(migration, row[1]):
            raise MigrationError(
                f"{migration.name} was changed after it was applied (sha256 {migration.checksum[:12]} "
                f"on disk, {row[1][:12]} when applied as {row[0]}). Applied migrations are "
                "immutable: restore the file and add a new numbered file instead."
            )


def status(url: str | None = None, *, directory: str | Path | None = None) -> list[MigrationStatus]:
    """Every migration known to the files or the database, with its state, in version order."""
    files = {m.version: m for m in discover(directory)}
    with connect(url, autocommit=True) as conn:
        applied = _applied(conn)
    result = []
    for version in sorted(set(files) | set(applied)):
        migration, row = files.get(version), applied.get(version)
        if row is None:
            assert migration is not None
            result.append(MigrationStatus(version, migration.name, "pending"))
        elif migration is None:
            result.append(MigrationStatus(version, row[0], "missing", row[2]))
        else:
            state = "applied" if _same_file(migration, row[1]) else "changed"
            result.append(MigrationStatus(version, migration.name, state, row[2]))
    return result


def pending(url: str | None = None, *, directory: str | Path | None = None) -> list[str]:
    """Names of the migration files not yet applied, in the order they would be applied."""
    return [s.name for s in status(url, directory=directory) if s.state == "pending"]


def _apply_comments(conn: psycopg.Connection) -> None:
    """``COMMENT ON`` what the migrations created, from :mod:`pipelines.warehouse.catalog` (only
    where a comment differs: up to date, this writes nothing)."""
    from pipelines.warehouse.catalog import apply_comments

    with conn.transaction():
        written = apply_comments(conn)
    if written:
        logger.info("wrote %d catalog comments", written)


def migrate(url: str | None = None, *, directory: str | Path | None = None) -> list[str]:
    """Apply every pending migration in ``directory`` (default ``<project root>/sql/migrations``)
    to ``url`` (resolved with :func:`~pipelines.warehouse.db.resolve_database_url`).

    Returns the file names applied by this call (empty when up to date). Raises
    :class:`MigrationError` when an applied file has changed or a file fails; a failed file is
    rolled back, the ones before it stay applied.
    """
    files = discover(directory)
    url = resolve_database_url(url)
    with connect(url, autocommit=True) as conn:
        if not first_value(conn.execute("select pg_try_advisory_lock(%s)", (MIGRATIONS_LOCK_KEY,))):
            logger.info("waiting for another process to finish migrating %s", redact_url(url))
            conn.execute("select pg_advisory_lock(%s)", (MIGRATIONS_LOCK_KEY,))
        try:
            conn.execute(_BOOKKEEPING_DDL)
            applied = _applied(conn)  # re-read under the lock: another process may have migrated
            _check_unchanged(files, applied)
            done: list[str] = []
            for migration in files:
                if migration.version in applied:
                    continue
                started = time.monotonic()
                try:
                    with conn.transaction():
                        conn.execute(migration.sql())
                        conn.execute(
                            "insert into taptouch_meta.schema_migrations (version, name, checksum) values (%s, %s, %s)",
                            (migration.version, migration.name, migration.checksum),
                        )
                except psycopg.Error as err:
                    detail = str(err).strip() or type(err).__name__
                    raise MigrationError(
                        f"{migration.name} failed and was rolled back: {detail}. "
                        f"Migrations before it stay applied; fix {migration.name} and run again."
                    ) from err
                logger.info(
                    "applied migration %s (%.0f ms)",
                    migration.name,
                    (time.monotonic() - started) * 1000,
                )
                done.append(migration.name)
            _apply_comments(conn)
            return done
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("select pg_advisory_unlock(%s)", (MIGRATIONS_LOCK_KEY,))
