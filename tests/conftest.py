"""Shared fixtures: a real PostgreSQL server and a fresh database per test.

The server is ``$TAPTOUCH_TEST_DATABASE_URL`` when set (an admin URL, e.g.
``postgresql://postgres@127.0.0.1:5432/postgres``: the user must be allowed to create
databases), otherwise an embedded pgserver started in a scratch temp dir (one per
pytest-xdist worker) and stopped at the end of the session.

Fixtures: ``pg_admin_url`` (session), ``make_database`` (session factory), ``database_url``
(a fresh empty database per test), ``migrated_db`` (a fresh database with every migration),
``embedded_pgdata`` (a data dir for an embedded server of the test's own).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pipelines.warehouse.db import DATABASE_URL_ENV, PGDATA_ENV, libpq_url, stop_embedded_server, with_database

TEST_DATABASE_URL_ENV = "TAPTOUCH_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def pg_scratch_root() -> Iterator[Path]:
    """A private directory for embedded-server data dirs, removed at the end of the session.

    Not under pytest's basetemp on purpose: as root, pgserver runs postgres as the system user
    ``pgserver``, and every pytest session that starts on the machine resets
    ``/tmp/pytest-of-<user>`` to mode 0700, which locks running servers out of their data
    (PANIC: could not open pg_control: Permission denied)."""
    root = Path(tempfile.mkdtemp(prefix="taptouch-test-pg-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(pg_scratch_root: Path) -> Iterator[None]:
    """No test touches the user's database or ``.taptouch/pgdata``: ``TAPTOUCH_DATABASE_URL``
    is unset and ``TAPTOUCH_PGDATA`` points into a scratch dir. An embedded server a test
    starts there through the default resolution is stopped at the end."""
    pgdata = pg_scratch_root / "default-pgdata"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(DATABASE_URL_ENV, raising=False)
        mp.setenv(PGDATA_ENV, str(pgdata))
        yield
        stop_embedded_server(pgdata)


@pytest.fixture
def embedded_pgdata(pg_scratch_root: Path) -> Iterator[Path]:
    """A fresh data dir for :func:`~pipelines.warehouse.db.embedded_database_url` (not created
    yet); a server started in it is stopped after the test."""
    pgdata = Path(tempfile.mkdtemp(dir=pg_scratch_root)) / "pgdata"
    yield pgdata
    stop_embedded_server(pgdata)


@pytest.fixture(scope="session")
def pg_admin_url(pg_scratch_root: Path) -> Iterator[str]:
    """URL of a database on a server where the tests may create databases."""
    configured = os.environ.get(TEST_DATABASE_URL_ENV, "").strip()
    if configured:
        yield configured
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver
    server = pgserver.get_server(pg_scratch_root / "session-pgdata", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def make_database(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """Factory: ``make_database()`` creates an empty, uniquely named database (``tt_test_<hex>``)
    and returns its URL. Every database it made is dropped at the end of the session."""
    created: list[str] = []

    def make() -> str:
        name = f"tt_test_{uuid.uuid4().hex}"
        with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        created.append(name)
        return with_database(pg_admin_url, name)

    yield make

    if not created:
        return
    with psycopg.connect(libpq_url(pg_admin_url), autocommit=True) as conn:
        force = conn.info.server_version >= 130000
        for name in created:
            statement = "drop database if exists {} with (force)" if force else "drop database if exists {}"
            conn.execute(sql.SQL(statement).format(sql.Identifier(name)))


@pytest.fixture
def database_url(make_database: Callable[[], str]) -> str:
    """URL of a fresh, empty database for this test."""
    return make_database()


@pytest.fixture
def migrated_db(make_database: Callable[[], str]) -> str:
    """URL of a fresh database with every migration in sql/migrations applied."""
    from pipelines.warehouse.migrations import migrate

    url = make_database()
    migrate(url)
    return url


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the database fixtures get the ``postgres`` marker (``-m 'not postgres'``
    runs the rest without a server)."""
    for item in items:
        if "pg_admin_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
