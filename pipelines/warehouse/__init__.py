"""The Postgres warehouse: connection settings, the embedded server, and schema migrations."""

from pipelines.warehouse.db import (
    DATABASE_URL_ENV,
    PGDATA_ENV,
    PostgresResource,
    WarehouseConfigError,
    connect,
    embedded_database_url,
    get_engine,
    redact_url,
    resolve_database_url,
    sqlalchemy_url,
)
from pipelines.warehouse.migrations import MigrationError, migrate, pending, status

__all__ = [
    "DATABASE_URL_ENV",
    "PGDATA_ENV",
    "MigrationError",
    "PostgresResource",
    "WarehouseConfigError",
    "connect",
    "embedded_database_url",
    "get_engine",
    "migrate",
    "pending",
    "redact_url",
    "resolve_database_url",
    "sqlalchemy_url",
    "status",
]
