"""Where the warehouse lives and how to connect to it.

The URL is an explicit one, else ``TAPTOUCH_DATABASE_URL``, else the embedded PostgreSQL in
``TAPTOUCH_PGDATA`` (:func:`resolve_database_url`; :mod:`.embedded`). A URL is shown only through
:func:`redact_url`, and every connection error is re-raised without the password (:func:`connect`,
:func:`get_engine`). Settings: the README's table; passwords: docs/security.md.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg

from .embedded import (  # noqa: F401 - re-exported: the embedded server's names live here too
    EMBEDDED_DATABASE,
    PGDATA_ENV,
    EmbeddedServerError,
    _embedded_running,
    embedded_data_dir,
    embedded_database_url,
    private_dir,
    project_root,
    state_dir,
    stop_embedded_server,
)
from .urls import ACCEPTED_SCHEMES, REDACTED, is_uri, redact_text, redact_url, redacted_error, scheme_of, secrets_of
from .urls import with_database as _with_database

if TYPE_CHECKING:  # imported by get_engine: only previews use an engine, and loading the code location need not
    import sqlalchemy

logger = logging.getLogger(__name__)

DATABASE_URL_ENV = "TAPTOUCH_DATABASE_URL"
_ACCEPTED_SCHEMES = ACCEPTED_SCHEMES
_REDACTED = REDACTED

__all__ = [
    "DATABASE_URL_ENV",
    "EMBEDDED_DATABASE",
    "PGDATA_ENV",
    "EmbeddedServerError",
    "WarehouseConfigError",
    "connect",
    "embedded_data_dir",
    "embedded_database_url",
    "get_engine",
    "libpq_url",
    "project_root",
    "redact_text",
    "redact_url",
    "redacted_error",
    "resolve_database_url",
    "secrets_of",
    "sqlalchemy_url",
    "stop_embedded_server",
    "warehouse_misconfigured",
    "with_database",
]


class WarehouseConfigError(ValueError):
    """The warehouse is configured wrongly (e.g. a database URL that is not a PostgreSQL URL)."""


# A connection refused for these reasons fails the same way however often it is retried: the
# warehouse URL (TAPTOUCH_DATABASE_URL) is wrong, not the server briefly away.
_WAREHOUSE_MISCONFIGURED = re.compile(
    r"password authentication failed|no password supplied|authentication failed|does not exist|"
    r"could not translate host name|failed to resolve host|Name or service not known|invalid (dsn|connection option|"
    r"integer value|port)|role .* is not permitted|no pg_hba.conf entry|"
    # libpq refusing an option's value (sslmode, target_session_attrs, ...), the server refusing
    # the URL's options=-c ..., and an SSL or channel-binding demand the server cannot meet
    r"invalid \w+ value|invalid value for parameter|unrecognized configuration parameter|"
    r"server does not support SSL|channel binding required",
    re.IGNORECASE,
)


def warehouse_misconfigured(exc: BaseException) -> bool:
    """A connection error the warehouse URL causes (the same on every attempt: never retried, and
    the CLI's configuration error)."""
    return isinstance(exc, psycopg.OperationalError) and bool(_WAREHOUSE_MISCONFIGURED.search(str(exc)))


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


def _validate_url(url: str, source: str) -> str:
    if scheme_of(url) not in ACCEPTED_SCHEMES:
        if not is_uri(url) and "=" in url:
            got = "a key=value connection string (host=... dbname=...)"
        else:
            scheme = scheme_of(url)
            got = f"a {scheme}:// URL" if scheme else "a value that is not a URL"
        raise WarehouseConfigError(
            f"The database URL from {source} is not a PostgreSQL URL: got {got}. "
            "Expected the form postgresql://user:password@host:5432/dbname "
            "(postgres:// and postgresql+psycopg:// are accepted too; percent-encode @ # ? / % : in the password). "
            f"Fix {DATABASE_URL_ENV} or the database_url setting, or unset both to use the "
            "embedded PostgreSQL."
        )
    return url


def resolve_database_url(url: str | None = None) -> str:
    """The database URL to use: ``url`` when given, else ``$TAPTOUCH_DATABASE_URL``, else the
    embedded server's URL (started if needed, see :func:`embedded_database_url`).

    Raises :class:`WarehouseConfigError` when an explicit or environment URL is not
    ``postgresql://``, ``postgres://`` or ``postgresql+psycopg://``.
    """
    if url:
        return _validate_url(url.strip(), "the explicit database_url")
    env_url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if env_url:
        return _validate_url(env_url, f"the environment variable {DATABASE_URL_ENV}")
    return embedded_database_url()


def libpq_url(url: str) -> str:
    """``url`` as a plain libpq URI (``postgresql://``), which psycopg and psql accept."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise WarehouseConfigError(f"Not a URL: {redact_url(url)!r}")
    if scheme.lower() in ACCEPTED_SCHEMES:
        return f"postgresql://{rest}"
    return url


def sqlalchemy_url(url: str) -> str:
    """``url`` in SQLAlchemy's ``postgresql+psycopg://`` form. Query parameters (such as the
    ``host=/socket/dir`` of a unix-socket URL) are kept: the psycopg dialect passes them on.
    (:func:`get_engine` does not parse it with SQLAlchemy: libpq reads the URL, see there.)"""
    return "postgresql+psycopg://" + libpq_url(url).partition("://")[2]


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (the URL path replaced)."""
    try:
        return _with_database(url, database)
    except ValueError:
        raise WarehouseConfigError(f"Not a URL: {redact_url(url)!r}") from None


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------

_engines: dict[tuple[str, int | None], sqlalchemy.Engine] = {}
_engines_guard = threading.Lock()


def _timeout_options(statement_timeout_ms: int | None) -> dict[str, Any]:
    if statement_timeout_ms is None:
        return {}
    if statement_timeout_ms < 0:
        raise WarehouseConfigError("statement_timeout_ms must be >= 0 (0 means no timeout)")
    return {"options": f"-c statement_timeout={int(statement_timeout_ms)}"}


# What an operator can do about a connection error, by libpq's message; {source} names the setting.
_HINTS = (
    (
        re.compile(
            r"invalid percent-encoded token|invalid URI|invalid (integer|port)|missing (key/value separator )?\"=\"|"
            r"unexpected spaces|invalid \w+ value|invalid connection option",
            re.IGNORECASE,
        ),
        "{source} is not a URL libpq can read: write it as postgresql://<user>:<password>@<host>:5432/<dbname> and "
        "percent-encode the characters @ # ? / % : and spaces in the user name and password "
        "(@ as %40, # as %23, ? as %3F, / as %2F, % as %25, : as %3A, space as %20)",
    ),
    (
        re.compile(r'database "[^"]*" does not exist', re.IGNORECASE),
        "create that database (createdb), or fix the database name at the end of {source}",
    ),
    (
        re.compile(
            r"password authentication failed|no password supplied|role \"[^\"]*\" does not exist", re.IGNORECASE
        ),
        "check the user name and password in {source}",
    ),
    (
        re.compile(
            r"could not translate host name|failed to resolve host|Name or service not known|"
            r"Connection refused|timeout expired|No route to host|Network is unreachable",
            re.IGNORECASE,
        ),
        "check the host and port in {source}, and that PostgreSQL runs there and accepts connections",
    ),
)


def _setting_of(url: str) -> str | None:
    """Which setting ``url`` came from, for a hint: None for the embedded server (its own URL)."""
    if url in _embedded_urls_values():
        return None
    env = os.environ.get(DATABASE_URL_ENV, "").strip()
    if env and url.strip() == env:
        return DATABASE_URL_ENV
    return f"the database URL (--database-url, or the warehouse resource's database_url; default {DATABASE_URL_ENV})"


def _embedded_urls_values() -> set[str]:
    from . import embedded

    return set(embedded._embedded_urls.values())


def _with_hint(error: BaseException, url: str) -> BaseException:
    """``error`` (already redacted) with what to do about it, naming the setting, when known."""
    source = _setting_of(url)
    message = str(error).strip()
    if source is None:
        return error
    for pattern, hint in _HINTS:  # noqa: B007 - the matching hint is used after the loop
        if pattern.search(message):
            break
    else:
        return error
    try:
        clean = type(error)(f"{message} ({hint.format(source=source)})")
    except Exception:  # noqa: BLE001 - a class with another constructor: keep the redacted one
        return error
    clean.__suppress_context__ = True
    return clean


def connect_url(url: str, **kwargs: Any) -> psycopg.Connection:
    """:func:`psycopg.connect` on a libpq URL; an error is re-raised (same class) without the
    password and without the original chained to it, with a hint naming the setting to fix."""
    target = libpq_url(url)
    try:
        return psycopg.connect(target, **kwargs)
    except psycopg.Error as exc:
        error = _with_hint(redacted_error(exc, url), url)
    raise error


def get_engine(url: str | None = None, *, statement_timeout_ms: int | None = None) -> sqlalchemy.Engine:
    """A SQLAlchemy engine for ``url`` (resolved with :func:`resolve_database_url`), cached per
    URL and timeout, with ``pool_pre_ping=True`` so connections dropped by a server restart are
    replaced transparently.

    libpq, not SQLAlchemy, reads the URL (SQLAlchemy's parser disagrees with libpq about
    passwords holding ``@``, ``#`` or ``%``): the engine connects through :func:`connect_url`, so
    a connection error carries no password either. ``engine.url`` holds no credentials."""
    import sqlalchemy

    target = libpq_url(resolve_database_url(url))
    key = (target, statement_timeout_ms)
    with _engines_guard:
        engine = _engines.get(key)
        if engine is None:
            options = _timeout_options(statement_timeout_ms)
            engine = sqlalchemy.create_engine(
                "postgresql+psycopg://",
                creator=lambda: connect_url(target, **options),
                pool_pre_ping=True,
            )
            _engines[key] = engine
        return engine


def connect(url: str | None = None, **kwargs: Any) -> psycopg.Connection:
    """A new psycopg 3 connection to ``url`` (resolved with :func:`resolve_database_url`).
    ``kwargs`` go to :func:`psycopg.connect` (``autocommit=True``, ``row_factory=...``,
    ``options="-c statement_timeout=5000"``...). Use it as a context manager: the block
    commits on success, rolls back on error, and closes the connection. A connection error is
    re-raised without the password (see :func:`connect_url`)."""
    return connect_url(resolve_database_url(url), **kwargs)


def one_row(cur: psycopg.Cursor[Any]) -> Any:
    """The next row of ``cur`` (a cursor, or what ``conn.execute`` returns), for a query that
    always returns a row (``count(*)``, ``select current_setting(...)``, ``... returning``)."""
    row = cur.fetchone()
    if row is None:
        raise LookupError("the query returned no row")
    return row


def first_value(cur: psycopg.Cursor[Any]) -> Any:
    """The first column of :func:`one_row`."""
    return one_row(cur)[0]


# Joined to a window's or a store-day's few hundred orders, a table of millions should be read by
# index probes (or a hash of the small side). A merge join instead walks the big table's primary
# key in order from its first entry, and the planner takes it when it judges the small side's ids
# near the key's start: at 10M orders an hour's 550 orders had their items replaced in 62 ms
# instead of 25, a store-day's product aggregates recomputed in 101 ms instead of 8, and the money
# reconciliation of a few thousand orders took 0.9 s instead of 0.1 (docs/warehouse.md, "Flat
# cost at scale").
_NO_MERGE_JOINS = "select current_setting('enable_mergejoin'), set_config('enable_mergejoin', 'off', true)"


def prefer_index_joins(cur: psycopg.Cursor[Any]) -> None:
    """No merge joins for the rest of the transaction (``SET LOCAL``), e.g. an orders window's merge."""
    cur.execute(_NO_MERGE_JOINS)


@contextmanager
def index_joins(cur: psycopg.Cursor[Any]) -> Iterator[None]:
    """No merge joins for the statements inside, the transaction's own setting restored after (for
    code that other writers call inside their transactions)."""
    cur.execute(_NO_MERGE_JOINS)
    before = first_value(cur)
    try:
        yield
    finally:
        cur.execute("select set_config('enable_mergejoin', %s, true)", (before,))
