"""Database passwords never printed, logged, raised or stored: URLs read the way libpq reads them
(a password may hold ``#``, ``?``, ``/``, ``@``, ``%``, ``:`` or spaces), connection errors
re-raised without the password everywhere a connection is made, the CLI and a Dagster run, and the
files the project creates readable by their owner only. Runs on the system PostgreSQL
(TAPTOUCH_TEST_DATABASE_URL) and on the embedded one."""

from __future__ import annotations

import os
import stat
import traceback
from pathlib import Path
from urllib.parse import quote, urlsplit

import dagster as dg
import pytest
import sqlalchemy as sa

from pipelines.cli import main
from pipelines.warehouse.db import (
    DATABASE_URL_ENV,
    connect,
    get_engine,
    redact_text,
    redact_url,
    with_database,
)
from pipelines.warehouse.migrations import migrate
from pipelines.warehouse.resource import PostgresResource
from tests.support.oauth_helpers import make_store

# (URL, the password in it, what redact_url must show)
TRICKY = [
    ("postgresql://postgres:Hunter2#x@127.0.0.1:5432/db", "Hunter2#x", "postgresql://postgres:***@127.0.0.1:5432/db"),
    ("postgresql://app:50%off@db.example/wh", "50%off", "postgresql://app:***@db.example/wh"),
    ("postgresql://app:wh?at=1@db.example/wh", "wh?at=1", "postgresql://app:***@db.example/wh"),
    ("postgres://app:sl/ash@db.example:5/wh", "sl/ash", "postgres://app:***@db.example:5/wh"),
    ("postgresql://app:p@ss#w?rd/x@db.example/wh", "p@ss#w?rd/x", "postgresql://app:***@db.example/wh"),
    ("postgresql+psycopg://app:co:lon@db.example/wh", "co:lon", "postgresql+psycopg://app:***@db.example/wh"),
    (
        "postgresql://db.example/wh?user=app&password=q%23s%26&sslmode=require",
        "q%23s%26",
        "postgresql://db.example/wh?user=app&password=***&sslmode=require",
    ),
    ("postgresql://db.example/wh?password=a#b", "a#b", "postgresql://db.example/wh?password=***"),
    (
        "host=db.example user=app password='sp ace\\'q' dbname=wh",
        "sp ace",
        "host=db.example user=app password=*** dbname=wh",
    ),
    ("host=db.example password=Plain#1 dbname=wh", "Plain#1", "host=db.example password=*** dbname=wh"),
]


@pytest.mark.parametrize(("url", "password", "shown"), TRICKY)
def test_redact_url_reads_urls_like_libpq(url: str, password: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert password not in redact_url(url)
    assert password not in redact_text(f"could not connect to {url}: refused")


def test_with_database_keeps_a_password_libpq_accepts() -> None:
    assert (
        with_database("postgresql://postgres:Hunter2#x@127.0.0.1:5432/db?sslmode=require", "dagster")
        == "postgresql://postgres:Hunter2#x@127.0.0.1:5432/dagster?sslmode=require"
    )


def _url_with_password(admin_url: str, password: str) -> str:
    """The test server's URL with ``password`` (raw, libpq-invalid when it holds a lone %) added."""
    scheme, rest = admin_url.split("://", 1)
    userinfo, _, hostpart = rest.rpartition("@")
    user = (userinfo.split(":", 1)[0] if userinfo else "") or "postgres"
    return f"{scheme}://{user}:{password}@{hostpart}" if userinfo else f"{scheme}://{user}:{password}@{rest}"


BAD_PASSWORDS = ["50%off-Zq9", "Hunter2#x@nohost", "p@ssWord7"]


def _everything(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


@pytest.mark.parametrize("password", BAD_PASSWORDS)
def test_connection_errors_carry_no_password(password: str) -> None:
    """libpq quotes what it cannot parse (``invalid percent-encoded token: "50%off-Zq9"``) or the
    host it could not resolve (the part after an unencoded @): every entry point re-raises
    without it, with no original chained. (Port 1: every attempt fails, whichever server runs.)"""
    url = f"postgresql://postgres:{password}@127.0.0.1:1/db"
    pieces = [password, *[p for p in password.split("@") if len(p) >= 4]]
    attempts = {
        "db.connect": lambda: connect(url),
        "PostgresResource.connect": lambda: PostgresResource(database_url=url).connect(),
        "PostgresResource.get_engine": lambda: PostgresResource(database_url=url).get_engine().connect(),
        "get_engine": lambda: get_engine(url).connect(),
        "migrate": lambda: migrate(url),
        "token store": lambda: make_store(url).grants(),
    }
    for where, attempt in attempts.items():
        with pytest.raises(Exception) as raised:
            attempt()
        text = _everything(raised.value)
        assert not [p for p in pieces if p in text], f"{where} leaked the password: {text}"
        assert raised.value.__cause__ is None or password not in _everything(raised.value.__cause__)


def test_the_engine_connects_as_libpq_reads_the_url(database_url: str) -> None:
    engine = get_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select current_database()")).scalar() == urlsplit(database_url).path.lstrip("/")
    assert str(engine.url) == "postgresql+psycopg://"  # no credentials for SQLAlchemy to show or mis-parse


@pytest.mark.parametrize("password", ["Hunter2#x", "50%off"])
def test_cli_never_prints_the_password(monkeypatch, capsys, password: str) -> None:
    url = f"postgresql://postgres:{password}@127.0.0.1:5432/db"
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    assert main(["db-url"]) == 0
    out = capsys.readouterr()
    assert password not in out.out + out.err and "postgresql://postgres:***@127.0.0.1:5432/db" in out.out
    code = main(["-q", "migrate"])  # 50%off: libpq refuses the URL; Hunter2#x: wrong password or no db
    out = capsys.readouterr()
    assert code != 0 and password not in out.out + out.err and "Traceback" not in out.err
    assert main(["db-url", "--raw"]) == 0
    assert capsys.readouterr().out.strip() == url  # the owner asked for it explicitly


def test_a_failing_dagster_run_stores_no_password(tmp_path: Path, database_url: str) -> None:
    password = "50%off-" + "Y" * 12
    url = _url_with_password(database_url, password)

    @dg.asset
    def probe(warehouse: PostgresResource) -> None:
        warehouse.ensure_migrated()

    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = dg.materialize(
            [probe],
            resources={"warehouse": PostgresResource(database_url=url)},
            instance=instance,
            raise_on_error=False,
        )
        assert not result.success
        from dagster._serdes import serialize_value

        events = "\n".join(serialize_value(e) for e in instance.all_logs(result.run_id))
        failures = [
            e.event_specific_data.error.to_string()
            for e in result.all_events
            if e.event_specific_data is not None and getattr(e.event_specific_data, "error", None)
        ]
    on_disk = b"\n".join(p.read_bytes() for p in home.rglob("*") if p.is_file()).decode("utf-8", "replace")
    assert failures and "percent-encoded" in "".join(failures)
    for where, text in {"event log": events, "errors": "\n".join(failures), "storage": on_disk}.items():
        assert password not in text and quote(password) not in text, where


def test_dagster_home_and_its_files_are_owner_only(tmp_path: Path, monkeypatch) -> None:
    from pipelines.demo import dagster_home

    home = tmp_path / "open" / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    previous = os.umask(0o022)
    try:
        assert dagster_home() == home
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE(home.parent.stat().st_mode) == 0o700  # created by it: owner only too
        assert stat.S_IMODE((home / "dagster.yaml").stat().st_mode) == 0o600
        (home / "storage").mkdir()  # what Dagster writes next inherits the umask
        (home / "storage" / "run.db").write_text("x")
        assert stat.S_IMODE((home / "storage" / "run.db").stat().st_mode) == 0o600
    finally:
        os.umask(previous)


def test_local_prod_script_keeps_the_url_off_the_command_line() -> None:
    script = (Path(__file__).resolve().parents[2] / "deploy" / "local-prod.sh").read_text()
    assert '"$DAGSTER_PG_URL")' not in script and "sys.argv" not in script
    assert 'os.environ["DAGSTER_PG_URL"]' in script and "umask 077" in script
