"""``PostgresResource``: the warehouse for Dagster assets (connections, engine, migrations)."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

import dagster as dg
import psycopg
from pydantic import Field, PrivateAttr

from .db import DATABASE_URL_ENV, PGDATA_ENV, _timeout_options, connect, get_engine, resolve_database_url
from .migrations import migrate

if TYPE_CHECKING:
    import sqlalchemy

_migrated: set[tuple[int, str]] = set()
_migrated_guard = threading.Lock()


class PostgresResource(dg.ConfigurableResource):
    """The warehouse database for Dagster assets.

    ``connect()`` for psycopg work (COPY, server-side cursors, explicit transactions),
    ``get_engine()`` for pandas / SQLAlchemy, ``ensure_migrated()`` before first use.
    """

    database_url: str | None = Field(
        default=None,
        description=(
            "PostgreSQL URL, postgresql://user:password@host:5432/dbname. When unset, falls back "
            f"to the environment variable {DATABASE_URL_ENV}, then to the embedded PostgreSQL "
            f"(data in ${PGDATA_ENV}, default <project root>/.taptouch/pgdata). Leaving it unset "
            "and setting the environment variable keeps the password out of code and run config."
        ),
    )
    statement_timeout_ms: int | None = Field(
        default=None,
        description=(
            "Server-side statement_timeout in milliseconds for every connection this resource "
            "opens; a statement running longer is cancelled. Unset: the server default "
            "(usually no timeout). 0 disables it."
        ),
    )

    batch_size: int | None = Field(
        default=None, description="Orders per COPY batch (bounds memory). Unset: TAPTOUCH_BATCH_SIZE, else 5000."
    )

    # (database_url, the URL it resolved to): the environment is read once per resource instance
    # (Dagster builds one per run), not per connection
    _resolved: tuple[str | None, str] | None = PrivateAttr(default=None)

    def url(self) -> str:
        """The database URL, resolved on first use: ``database_url``, else ``TAPTOUCH_DATABASE_URL``,
        else the embedded server (may contain a password: log it with redact_url)."""
        resolved = self._resolved
        if resolved is None or resolved[0] != self.database_url:
            resolved = self._resolved = (self.database_url, resolve_database_url(self.database_url))
        return resolved[1]

    def get_engine(self) -> sqlalchemy.Engine:
        """A cached SQLAlchemy engine with this resource's statement timeout."""
        return get_engine(self.url(), statement_timeout_ms=self.statement_timeout_ms)

    def connect(self) -> psycopg.Connection:
        """A new psycopg connection (autocommit off; the statement timeout applied for the
        whole session). Use as ``with resource.connect() as conn:``: commits on success."""
        return connect(self.url(), autocommit=False, **_timeout_options(self.statement_timeout_ms))

    def ensure_migrated(self) -> list[str]:
        """Apply pending migrations (see :mod:`pipelines.warehouse.migrations`). Idempotent and
        cheap after the first call in a process: the result is cached per process and URL.
        Returns the migrations applied by this call."""
        url = self.url()
        key = (os.getpid(), url)
        if key in _migrated:
            return []
        with _migrated_guard:
            if key in _migrated:
                return []
            applied = migrate(url)
            _migrated.add(key)
            return applied
