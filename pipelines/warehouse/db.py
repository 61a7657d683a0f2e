"""Where the warehouse lives and how to connect to it.

Resolution order for the database URL (see :func:`resolve_database_url`):

1. an explicit URL (a resource's ``database_url``, a ``--database-url`` flag);
2. the environment variable ``TAPTOUCH_DATABASE_URL``;
3. an embedded PostgreSQL (the ``pgserver`` package) whose data lives in ``TAPTOUCH_PGDATA``,
   by default ``<project root>/.taptouch/pgdata``. It is started on first use and left running, so
   later processes (the Dagster UI, ``psql``, the next ``taptouch-sync`` call) reuse it.

Settings (environment variables):

``TAPTOUCH_DATABASE_URL``
    A libpq URI, ``postgresql://user:password@host:5432/dbname`` (``postgres://`` and
    ``postgresql+psycopg://`` are accepted too). Unset: use the embedded server.
``TAPTOUCH_PGDATA``
    Data directory of the embedded server. Unset: ``<project root>/.taptouch/pgdata``.

Passwords never appear in logs or error messages: everything that shows a URL goes through
:func:`redact_url`.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import sqlalchemy
from psycopg import sql

logger = logging.getLogger(__name__)

DATABASE_URL_ENV = "TAPTOUCH_DATABASE_URL"
PGDATA_ENV = "TAPTOUCH_PGDATA"
EMBEDDED_DATABASE = "taptouch"
"""Name of the database created inside the embedded server (not the default ``postgres`` db)."""

_ACCEPTED_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
_REDACTED = "***"


class WarehouseConfigError(ValueError):
    """The warehouse is configured wrongly (e.g. a database URL that is not a PostgreSQL URL)."""


# --------------------------------------------------------------------------------------------
# URLs
# --------------------------------------------------------------------------------------------


def project_root() -> Path:
    """The directory holding ``pyproject.toml`` above this file; the cwd when there is none
    (e.g. when the package is installed into site-packages)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd()


def redact_url(url: str) -> str:
    """``url`` with its password (in the user-info part or a ``password=`` query parameter)
    replaced by ``***``. Safe to log. Returns the input unchanged when it has no password."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, hostinfo = netloc.rsplit("@", 1)
        if ":" in userinfo:
            user, password = userinfo.split(":", 1)
            if password:
                netloc = f"{user}:{_REDACTED}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k == "password" for k, _ in pairs):
            query = urlencode(
                [(k, _REDACTED if k == "password" else v) for k, v in pairs], safe="/*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _validate_url(url: str, source: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in _ACCEPTED_SCHEMES:
        raise WarehouseConfigError(
            f"The database URL from {source} ({redact_url(url)!r}) is not a PostgreSQL URL. "
            "Expected the form postgresql://user:password@host:5432/dbname "
            "(postgres:// and postgresql+psycopg:// are accepted too). "
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
    if scheme.lower() in _ACCEPTED_SCHEMES:
        return f"postgresql://{rest}"
    return url


def sqlalchemy_url(url: str) -> str:
    """``url`` in SQLAlchemy's ``postgresql+psycopg://`` form. Query parameters (such as the
    ``host=/socket/dir`` of a unix-socket URL) are kept: the psycopg dialect passes them on."""
    return "postgresql+psycopg://" + libpq_url(url).partition("://")[2]


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (the URL path replaced)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


# --------------------------------------------------------------------------------------------
# Embedded server
# --------------------------------------------------------------------------------------------

_embedded_urls: dict[Path, str] = {}
_embedded_guard = threading.Lock()


def embedded_data_dir(data_dir: str | Path | None = None) -> Path:
    """Data directory of the embedded server: ``data_dir``, else ``$TAPTOUCH_PGDATA``, else
    ``<project root>/.taptouch/pgdata``."""
    chosen = data_dir or os.environ.get(PGDATA_ENV) or project_root() / ".taptouch" / "pgdata"
    return Path(chosen).expanduser().resolve()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing): serialises processes that start
    or set up the same embedded server."""
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def embedded_database_url(data_dir: str | Path | None = None) -> str:
    """URL of the ``taptouch`` database in the embedded PostgreSQL for ``data_dir`` (see
    :func:`embedded_data_dir`).

    The server is started on first use and left running when this process exits, so later
    processes reuse it; a second call in the same process returns the cached URL at once. Safe
    when several processes call it at once: start-up and database creation happen under a file
    lock on ``<data_dir>.lock``. The URL is a unix-socket URI without a password (trust auth,
    no TCP listener)."""
    pgdata = embedded_data_dir(data_dir)
    with _embedded_guard:
        cached = _embedded_urls.get(pgdata)
        if cached is not None:
            return cached
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(pgdata.with_name(pgdata.name + ".lock")):
            pgserver = _import_pgserver()
            if not _embedded_running(pgdata):
                logger.info("starting embedded PostgreSQL in %s", pgdata)
            server = pgserver.get_server(pgdata, cleanup_mode=None)
            admin_url = server.get_uri()
            _create_database_if_missing(admin_url, EMBEDDED_DATABASE)
            url = with_database(admin_url, EMBEDDED_DATABASE)
        _embedded_urls[pgdata] = url
        return url


def _import_pgserver() -> Any:
    # Imported lazily: only the embedded server needs it. Its import warns when XDG_RUNTIME_DIR
    # is unset (containers, CI), which is harmless: it falls back to /tmp/runtime-<uid>.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    return pgserver


def _embedded_running(pgdata: Path) -> bool:
    _import_pgserver()
    from pgserver.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):
        return False
    return info is not None and info.is_running()


def stop_embedded_server(data_dir: str | Path | None = None) -> bool:
    """Stop the embedded server for ``data_dir`` (see :func:`embedded_data_dir`) if it runs.
    Returns whether a server was stopped. Its data stays on disk."""
    pgdata = embedded_data_dir(data_dir)
    with _embedded_guard:
        _embedded_urls.pop(pgdata, None)
        if not pgdata.exists():
            return False
        with _file_lock(pgdata.with_name(pgdata.name + ".lock")):
            if not _embedded_running(pgdata):
                return False
            pgserver = _import_pgserver()
            from pgserver.postgres_server import PostgresServer

            pgserver.pg_ctl(["-w", "stop"], pgdata=pgdata, user=_pgserver_system_user())
            handle = PostgresServer._instances.pop(pgdata, None)
            if handle is not None:  # this process's pgserver handle: forget it, at exit too
                atexit.unregister(handle._cleanup)
                handle.global_process_id_list.get_and_remove(os.getpid())
            logger.info("stopped embedded PostgreSQL in %s", pgdata)
            return True


def _pgserver_system_user() -> str | None:
    # pgserver runs postgres as the system user "pgserver" when we are root (postgres refuses
    # to run as root); pg_ctl must run as that same user.
    return "pgserver" if os.name == "posix" and os.geteuid() == 0 else None


def _create_database_if_missing(admin_url: str, database: str) -> None:
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        exists = conn.execute(
            "select 1 from pg_database where datname = %s", (database,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(database)))
            logger.info("created database %s in the embedded PostgreSQL", database)


# --------------------------------------------------------------------------------------------
# Connections
# --------------------------------------------------------------------------------------------

_engines: dict[tuple[str, Optional[int]], sqlalchemy.Engine] = {}
_engines_guard = threading.Lock()


def _timeout_options(statement_timeout_ms: Optional[int]) -> dict[str, Any]:
    if statement_timeout_ms is None:
        return {}
    if statement_timeout_ms < 0:
        raise WarehouseConfigError("statement_timeout_ms must be >= 0 (0 means no timeout)")
    return {"options": f"-c statement_timeout={int(statement_timeout_ms)}"}


def get_engine(
    url: str | None = None, *, statement_timeout_ms: Optional[int] = None
) -> sqlalchemy.Engine:
    """A SQLAlchemy engine for ``url`` (resolved with :func:`resolve_database_url`), cached per
    URL and timeout, with ``pool_pre_ping=True`` so connections dropped by a server restart are
    replaced transparently."""
    target = sqlalchemy_url(resolve_database_url(url))
    key = (target, statement_timeout_ms)
    with _engines_guard:
        engine = _engines.get(key)
        if engine is None:
            engine = sqlalchemy.create_engine(
                target,
                pool_pre_ping=True,
                connect_args=_timeout_options(statement_timeout_ms),
            )
            _engines[key] = engine
        return engine


def connect(url: str | None = None, **kwargs: Any) -> psycopg.Connection:
    """A new psycopg 3 connection to ``url`` (resolved with :func:`resolve_database_url`).
    ``kwargs`` go to :func:`psycopg.connect` (``autocommit=True``, ``row_factory=...``,
    ``options="-c statement_timeout=5000"``...). Use it as a context manager: the block
    commits on success, rolls back on error, and closes the connection."""
    return psycopg.connect(libpq_url(resolve_database_url(url)), **kwargs)
