"""Database URL resolution, the embedded server, the Dagster resource and the CLI."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import sqlalchemy as sa

from pipelines.cli import main
from pipelines.warehouse.db import (
    DATABASE_URL_ENV,
    PGDATA_ENV,
    WarehouseConfigError,
    connect,
    embedded_database_url,
    get_engine,
    redact_url,
    resolve_database_url,
    sqlalchemy_url,
)
from pipelines.warehouse.migrations import discover
from pipelines.warehouse.resource import PostgresResource

# --- URL resolution (no server needed) --------------------------------------------------------


def test_explicit_url_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://env@db.example/env")
    assert resolve_database_url("postgresql://explicit@db.example/x") == "postgresql://explicit@db.example/x"


def test_environment_used_without_explicit_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "  postgres://env@db.example/env  ")
    assert resolve_database_url() == "postgres://env@db.example/env"
    assert resolve_database_url(None) == "postgres://env@db.example/env"


@pytest.mark.parametrize(
    "url",
    ["postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db", "POSTGRESQL://u@h/db"],
)
def test_postgres_schemes_accepted(url: str) -> None:
    assert resolve_database_url(url) == url


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@h/db", "sqlite:///x.db", "db.example:5432/x", "postgresql+asyncpg://u:hunter2@h/db"]
)
def test_other_urls_rejected_naming_the_setting(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    with pytest.raises(WarehouseConfigError) as raised:
        resolve_database_url()
    message = str(raised.value)
    assert DATABASE_URL_ENV in message
    assert "postgresql://user:password@host:5432/dbname" in message
    assert "hunter2" not in message
    assert isinstance(raised.value, ValueError)


def test_explicit_bad_url_rejected() -> None:
    with pytest.raises(WarehouseConfigError, match=DATABASE_URL_ENV):
        resolve_database_url("http://example.com")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app:s3cret@db:5432/wh", "postgresql://app:***@db:5432/wh"),
        ("postgresql://app:p%40ss:w@rd@db/wh", "postgresql://app:***@db/wh"),
        ("postgresql://app@db/wh", "postgresql://app@db/wh"),
        ("postgresql://postgres:@/taptouch?host=/tmp/x", "postgresql://postgres:@/taptouch?host=/tmp/x"),
        ("postgresql://db/wh?user=app&password=s3cret", "postgresql://db/wh?user=app&password=***"),
    ],
)
def test_redact_url_hides_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_sqlalchemy_url_keeps_socket_host() -> None:
    assert sqlalchemy_url("postgres://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    parsed = sa.make_url(sqlalchemy_url("postgresql://postgres:@/taptouch?host=/tmp/sock"))
    assert parsed.drivername == "postgresql+psycopg"
    assert parsed.database == "taptouch"
    assert parsed.query["host"] == "/tmp/sock"


# --- embedded server --------------------------------------------------------------------------


@pytest.fixture
def embedded_dir(embedded_pgdata: Path) -> Path:
    return embedded_pgdata


def _url_from_other_process(pgdata: Path) -> subprocess.Popen:
    code = (
        "import sys\n"
        "from pipelines.warehouse.db import embedded_database_url, connect\n"
        "url = embedded_database_url(sys.argv[1])\n"
        "with connect(url) as conn:\n"
        "    conn.execute('select 1')\n"
        "print(url)\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(pgdata)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
def test_embedded_server_starts_once_and_is_reused(embedded_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="pipelines.warehouse.db"):
        url = embedded_database_url(embedded_dir)
    assert f"starting embedded PostgreSQL in {embedded_dir}" in caplog.text
    assert (embedded_dir / "PG_VERSION").exists()

    started = time.monotonic()
    assert embedded_database_url(str(embedded_dir)) == url
    assert time.monotonic() - started < 1.0  # reused: a start takes seconds (and logs, checked below)
    assert caplog.text.count("starting embedded PostgreSQL") == 1

    with connect(url, autocommit=True) as conn:
        assert conn.execute("select current_database()").fetchone() == ("taptouch",)
        conn.execute("create table reuse_marker (id int)")
    with get_engine(url).connect() as conn:  # SQLAlchemy over the unix socket
        assert conn.execute(sa.text("select to_regclass('reuse_marker') is not null")).scalar()

    other = _url_from_other_process(embedded_dir)
    out, err = other.communicate(timeout=60)
    assert other.returncode == 0, err
    assert out.strip() == url
    assert "starting embedded PostgreSQL" not in err


@pytest.mark.slow
def test_embedded_server_started_by_several_processes_at_once(embedded_dir: Path) -> None:
    children = [_url_from_other_process(embedded_dir) for _ in range(3)]
    urls = set()
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        urls.add(out.strip())
    assert len(urls) == 1
    assert embedded_database_url(embedded_dir) == urls.pop()


@pytest.mark.slow
def test_default_resolution_uses_embedded_server_in_pgdata(embedded_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PGDATA_ENV, str(embedded_dir))
    url = resolve_database_url()
    assert url == embedded_database_url(embedded_dir)
    assert urlsplit(url).path == "/taptouch"


# --- PostgresResource -------------------------------------------------------------------------


def test_resource_connect_applies_statement_timeout(database_url: str) -> None:
    resource = PostgresResource(database_url=database_url, statement_timeout_ms=200)
    with resource.connect() as conn:
        assert conn.autocommit is False
        assert conn.execute("show statement_timeout").fetchone() == ("200ms",)
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(5)")


def test_resource_without_timeout_uses_server_default(database_url: str) -> None:
    with PostgresResource(database_url=database_url).connect() as conn:
        assert conn.execute("select current_database()").fetchone()[0] == urlsplit(database_url).path.lstrip("/")
        assert conn.execute("select pg_sleep(0.3)").fetchone() is not None


def test_resource_falls_back_to_environment(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, database_url)
    resource = PostgresResource()
    assert resource.url() == database_url
    with resource.get_engine().connect() as conn:
        assert conn.execute(sa.text("select 1")).scalar() == 1


def test_resource_reads_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The URL is resolved on first use and kept by the resource (one per run): a later change of
    TAPTOUCH_DATABASE_URL reaches a new resource, not the connections of this one."""
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://u@first.example:5432/a")
    resource = PostgresResource()
    assert resource.url() == "postgresql://u@first.example:5432/a"
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://u@second.example:5432/b")
    assert resource.url() == "postgresql://u@first.example:5432/a"
    assert PostgresResource().url() == "postgresql://u@second.example:5432/b"
    explicit = PostgresResource(database_url="postgresql://u@explicit.example:5432/c")
    assert explicit.url() == "postgresql://u@explicit.example:5432/c"


def test_resource_ensure_migrated_is_idempotent(database_url: str) -> None:
    resource = PostgresResource(database_url=database_url)
    assert resource.ensure_migrated() == [m.name for m in discover()]
    assert resource.ensure_migrated() == []
    with resource.connect() as conn:
        assert conn.execute("select to_regclass('taptouch.orders') is not null").fetchone() == (True,)


def test_migrated_db_fixture_has_contract_tables(migrated_db: str) -> None:
    with connect(migrated_db) as conn:
        assert conn.execute("select count(*) from taptouch.orders").fetchone() == (0,)


# --- CLI --------------------------------------------------------------------------------------


def test_cli_migrate_then_up_to_date(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "migrate", "--database-url", database_url]) == 0
    out = capsys.readouterr().out
    assert all(m.name in out for m in discover())
    assert main(["-q", "migrate", "--database-url", database_url]) == 0
    assert "up to date" in capsys.readouterr().out


def test_cli_bad_url_exits_2_without_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "mysql://u:hunter2@h/db")
    assert main(["-q", "migrate"]) == 2
    captured = capsys.readouterr()
    assert DATABASE_URL_ENV in captured.err
    assert "Traceback" not in captured.err
    assert "hunter2" not in captured.err + captured.out


def test_cli_db_url_redacts_unless_raw(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://app:hunter2@db.example:5432/wh"
    assert main(["db-url", "--database-url", url]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert 'psql "postgresql://app:***@db.example:5432/wh"' in out or '"postgresql://app:***@db.example:5432/wh"' in out
    assert main(["db-url", "--raw", "--database-url", url]) == 0
    assert capsys.readouterr().out.strip() == url


def test_an_unencoded_at_then_question_mark_in_the_password_names_the_variable_and_the_fix(monkeypatch, capsys):
    """libpq reads `Pa@ss?wd@...` as a query string and says `missing key/value separator "="`:
    the error names the variable and says to percent-encode, and shows no piece of the password."""
    from pipelines.cli import main
    from pipelines.warehouse.db import DATABASE_URL_ENV

    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://app:Pa@ss?wd@127.0.0.1:5432/wh")
    assert main(["-q", "migrate"]) == 2
    err = capsys.readouterr().err
    assert "Pa@ss" not in err and "ss?wd" not in err
    assert "TAPTOUCH_DATABASE_URL" in err and "percent-encode" in err, err


def test_db_url_and_migrate_hide_the_sslpassword(migrated_db, monkeypatch, capsys):
    """libpq's sslpassword (the client key's passphrase) is a secret like password."""
    from pipelines.cli import main
    from pipelines.warehouse.db import DATABASE_URL_ENV

    url = migrated_db + ("&" if "?" in migrated_db else "?") + "sslpassword=SslSecretX9"
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    assert main(["-q", "db-url"]) == 0
    assert main(["-q", "migrate"]) == 0
    out = capsys.readouterr()
    assert "SslSecretX9" not in out.out + out.err and "sslpassword=***" in out.out
    from pipelines.warehouse.urls import redact_text

    assert redact_text("host=h sslpassword=Abc123 password=Xyz") == "host=h sslpassword=*** password=***"
