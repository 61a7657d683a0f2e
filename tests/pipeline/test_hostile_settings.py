"""A careless operator's settings: every bad value fails clearly (naming the variable, saying what to
do, at load or at run start, never retried, never quoting a secret); every good-but-unusual one works."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pipelines import settings
from pipelines.accounts import Account
from pipelines.cli import main
from pipelines.definitions import defs
from pipelines.warehouse.db import DATABASE_URL_ENV, PGDATA_ENV, EmbeddedServerError, connect, with_database
from pipelines.warehouse.embedded import embedded_data_dir, embedded_database_url
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchConfigError, TaptouchResource
from taptouch_sandbox import Sandbox, SandboxConfig

orders, stores = (defs.get_assets_def(key) for key in ("orders", "stores"))  # as registered

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-11-25"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPTOUCH_") or k == PGDATA_ENV}
    return {**env, **extra}


# ------------------------------------------------------------------------------ read at run start


def test_a_bad_lookback_fails_the_step_once_instead_of_retrying_with_backoff(monkeypatch):
    # TAPTOUCH_LOOKBACK is read before the step's error boundary: it used to go to the RetryPolicy
    # (3 retries, 30 s exponential backoff) as a bare ValueError
    monkeypatch.setenv("TAPTOUCH_LOOKBACK", "1d")
    res = {
        "taptouch": TaptouchResource(client_id="c", client_secret="s", base_url="http://127.0.0.1:9"),
        "warehouse": PostgresResource(database_url="postgresql://nobody@127.0.0.1:9/none"),
    }
    result = dg.materialize([orders], resources=res, partition_key=DAY, raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("orders").user_failure_data
    assert failure.description == (
        "TAPTOUCH_LOOKBACK must be seconds or a number with s/m/h (e.g. 300, 5m), got '1d': "
        "set it to seconds or a whole number with s, m or h (e.g. 300, 5m, 1h), at most "
        "24h, or unset it for 5m"
    )
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def test_an_uppercase_lookback_works_from_the_run_config_too():
    # TAPTOUCH_LOOKBACK=5M worked; the orders config's lookback "5M" was refused (not lowercased)
    assert settings.lookback("5M") == timedelta(minutes=5)


@pytest.mark.parametrize("raw", ["-1", "-0.5", "0.001", "-inf", "1e-400"])  # 1e-400 is 0.0 as a float
def test_a_negative_or_stalling_request_rate_is_refused_not_turned_into_no_limit(monkeypatch, raw):
    # -1 used to become 0: no limit at all, silently
    monkeypatch.setenv("TAPTOUCH_REQUESTS_PER_SECOND", raw)
    with pytest.raises(settings.RunSettingError) as raised:
        settings.requests_per_second()
    assert str(raised.value).startswith(
        "TAPTOUCH_REQUESTS_PER_SECOND must be 0 (no limit) or a number of requests "
        f"per second from 0.01 (e.g. 10 or 0.5), got '{raw}'"
    )
    assert isinstance(raised.value, ValueError) and raised.value.allow_retries is False


def test_an_accounts_rate_is_read_from_its_own_variable_only(monkeypatch):
    north = Account("north")
    monkeypatch.setenv("TAPTOUCH_REQUESTS_PER_SECOND", "-1")  # broken, but not north's setting
    monkeypatch.setenv("TAPTOUCH_NORTH_REQUESTS_PER_SECOND", "0.5")
    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_ID", "north-client")
    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_SECRET", "north-secret")
    resolved, _ = settings.for_run(TaptouchResource(), PostgresResource(), north)
    assert resolved.requests_per_second == 0.5
    monkeypatch.setenv("TAPTOUCH_NORTH_REQUESTS_PER_SECOND", "-2")
    with pytest.raises(ValueError, match=r"^TAPTOUCH_NORTH_REQUESTS_PER_SECOND must be 0 \(no limit\)"):
        settings.for_run(TaptouchResource(), PostgresResource(), north)


def test_a_bad_integer_setting_names_the_variable_once_and_says_what_to_do(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_PAGE_SIZE", "0")
    with pytest.raises(settings.RunSettingError) as raised:
        settings.page_size()
    assert str(raised.value) == (
        "TAPTOUCH_PAGE_SIZE must be between 1 and 500, got 0: set TAPTOUCH_PAGE_SIZE to a "
        "whole number from 1 to 500, or unset it for the default 100"
    )
    with pytest.raises(
        settings.RunSettingError,
        match=r"^TAPTOUCH_STORE_WORKERS \(the resource's store_workers\) "
        r"must be between 1 and 64, got 0",
    ):
        settings.store_workers(0)


def test_a_client_secret_read_from_a_file_with_its_newline_still_authenticates(migrated_db):
    sandbox = Sandbox(SandboxConfig(seed=3, stores=2, days=2, end_date=date(2026, 11, 27), orders_per_day=3))
    with sandbox.serve() as url:
        res = {
            "taptouch": TaptouchResource(
                client_id=f" {sandbox.config.client_id}\n",
                client_secret=f"{sandbox.config.client_secret}\n",
                base_url=f" {url}/ ",
                requests_per_second=0,
            ),
            "warehouse": PostgresResource(database_url=migrated_db),
        }
        result = dg.materialize([stores], resources=res, raise_on_error=False)
    assert result.success  # was: 401 invalid_client for the secret with its trailing newline
    with psycopg.connect(migrated_db) as conn:
        assert conn.execute("select count(*) from taptouch.stores").fetchone()[0] == 2


def test_an_accounts_secret_is_stripped_too(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_ID", "north-client\n")
    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_SECRET", "north-secret\r\n")
    resolved, _ = settings.for_run(TaptouchResource(), PostgresResource(), Account("north"))
    assert resolved.resolved()[:2] == ("north-client", "north-secret")


# ------------------------------------------------------------------------------ TAPTOUCH_BASE_URL


@pytest.mark.parametrize(
    "raw, error",
    [
        ("http://api.example.com", "TAPTOUCH_BASE_URL: Refusing plain http to api.example.com"),
        ("https://api.taptouch.net/v1?key=abc", "TAPTOUCH_BASE_URL must not have a query (?...) or fragment (#...)"),
        ("https://api.taptouch.net#top", "TAPTOUCH_BASE_URL must not have a query (?...) or fragment (#...)"),
        ("https://api.taptouch.net:99999", "TAPTOUCH_BASE_URL has an invalid port"),
        ("https://api.taptouch.net:443x", "TAPTOUCH_BASE_URL has an invalid port"),
        ("https://api.taptouch.net:0", "TAPTOUCH_BASE_URL has an invalid port"),
        (
            "https://",
            "TAPTOUCH_BASE_URL must be an https:// URL such as https://api.taptouch.net, got a https:// URL without a host",
        ),
        ("https://api.tap touch.net", "TAPTOUCH_BASE_URL must not contain spaces"),
    ],
)
def test_a_base_url_requests_cannot_be_appended_to_is_refused_naming_the_variable(monkeypatch, raw, error):
    monkeypatch.setenv("TAPTOUCH_BASE_URL", raw)
    with pytest.raises(TaptouchConfigError) as raised:
        TaptouchResource(client_id="c", client_secret="s").resolved()
    assert str(raised.value).startswith(error)
    assert "abc" not in str(raised.value)


def test_a_blank_base_url_is_unset_like_every_other_setting(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_BASE_URL", "   ")  # was: "must be an https:// URL ..., got a value that is not a URL"
    assert TaptouchResource(client_id="c", client_secret="s").resolved()[2] == "https://api.taptouch.net"


def test_a_bad_account_base_url_names_the_accounts_variable_not_taptouch_base_url(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_ID", "north-client")
    monkeypatch.setenv("TAPTOUCH_NORTH_CLIENT_SECRET", "north-secret")
    monkeypatch.setenv("TAPTOUCH_NORTH_BASE_URL", "http://north.example.com")
    with pytest.raises(TaptouchConfigError) as raised:
        settings.for_run(TaptouchResource(), PostgresResource(), Account("north"))
    assert str(raised.value).startswith("TAPTOUCH_NORTH_BASE_URL: Refusing plain http to north.example.com")
    assert "TAPTOUCH_BASE_URL" not in str(raised.value)


# ------------------------------------------------------------------------------ read at definition load


@pytest.mark.parametrize(
    "raw, message",
    [
        ("2099-01-01", "TAPTOUCH_START_DATE '2099-01-01' is after today"),
        ("0001-01-01", "TAPTOUCH_START_DATE '0001-01-01' is before 1970-01-01"),
    ],
)
def test_a_start_date_that_leaves_no_partitions_to_load_fails_at_load(monkeypatch, raw, message):
    # a future start used to load fine and then fail every run with "Could not find a partition"
    monkeypatch.setenv("TAPTOUCH_START_DATE", raw)
    with pytest.raises(settings.SettingError, match=message):
        settings.start_date()


def test_an_iso_basic_start_date_loads_as_the_day_it_names():
    # 20240101 passed date.fromisoformat, then broke Dagster's partitions deep inside the load
    out = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            "from pipelines.definitions import defs\n"
            "from pipelines.partitions import daily_partitions as p\n"
            "print(p.get_first_partition_key())",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(TAPTOUCH_START_DATE="20240101"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "2024-01-01"


# ------------------------------------------------------------------------------ TAPTOUCH_DATABASE_URL


def test_a_password_with_unencoded_specials_says_to_percent_encode_it(monkeypatch, capsys):
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql://app:Hunter2#?@%/x@127.0.0.1:5432/wh")
    assert main(["-q", "migrate"]) == 2
    err = capsys.readouterr().err
    assert "TAPTOUCH_DATABASE_URL is not a URL libpq can read" in err and "# as %23" in err
    assert "Hunter2" not in err and "Traceback" not in err


def test_a_missing_database_is_named_with_what_to_do(pg_admin_url, monkeypatch):
    url = with_database(pg_admin_url, "tt_hostile_no_such_db")
    monkeypatch.setenv(DATABASE_URL_ENV, url)
    with pytest.raises(psycopg.OperationalError) as raised:
        connect()
    assert str(raised.value).endswith(
        'database "tt_hostile_no_such_db" does not exist (create that database '
        "(createdb), or fix the database name at the end of TAPTOUCH_DATABASE_URL)"
    )


def test_a_key_value_dsn_is_refused_cleanly_without_its_password(monkeypatch, capsys):
    monkeypatch.setenv(DATABASE_URL_ENV, "host=db.example user=app dbname=wh password=Hunter2pw")
    assert main(["-q", "migrate"]) == 2
    err = capsys.readouterr().err
    assert (
        "error: The database URL from the environment variable TAPTOUCH_DATABASE_URL is not a PostgreSQL URL: "
        "got a key=value connection string (host=... dbname=...)."
    ) in err
    assert "Hunter2pw" not in err


# ------------------------------------------------------------------------------ TAPTOUCH_PGDATA


def test_a_pgdata_that_is_a_file_or_under_one_is_named(tmp_path, monkeypatch, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for pgdata in (afile, afile / "pgdata"):  # the second was a NotADirectoryError traceback
        monkeypatch.setenv(PGDATA_ENV, str(pgdata))
        assert main(["-q", "db-url"]) == 2  # a setting to fix: a configuration error
        err = capsys.readouterr().err
        assert err.startswith(f"error: TAPTOUCH_PGDATA is {pgdata}, but {afile} is a file, not a directory")
        assert "Traceback" not in err


def test_a_pgdata_holding_other_files_is_refused_before_initdb(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(EmbeddedServerError, match="a directory that holds other files and no PostgreSQL data"):
        embedded_database_url(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_pgdata_that_cannot_be_created_is_named(monkeypatch):
    monkeypatch.setenv(PGDATA_ENV, "/proc/taptouch-hostile/pgdata")  # not creatable, even by root
    with pytest.raises(EmbeddedServerError) as raised:
        embedded_database_url()
    assert str(raised.value).startswith("The embedded PostgreSQL cannot use its data directory (TAPTOUCH_PGDATA): ")
    assert "Set TAPTOUCH_PGDATA to a directory this user may create and write" in str(raised.value)


def test_a_padded_pgdata_is_the_path_inside(monkeypatch, tmp_path):
    # "/x/pg  " made a data dir whose name ends in spaces, and PostgreSQL trims its socket directory
    monkeypatch.setenv(PGDATA_ENV, f"  {tmp_path}/pg \n")
    assert embedded_data_dir() == tmp_path / "pg"


# ------------------------------------------------------------------------------ the command line


@pytest.mark.parametrize(
    "argv", [["migrate", "postgresql://app:Hunter2pw@db/wh"], ["postgresql://app:Hunter2pw@db/wh"]]
)
def test_a_usage_error_never_echoes_a_password(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "postgresql://app:***@db/wh" in err and "Hunter2pw" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--days", "-3"], "argument --days: '-3' is out of range: give one from 1 to 366"),
        (["ui", "--port", "99999"], "argument --port: '99999' is out of range: give one from 1 to 65535"),
        (["migrate", "--database-url", " "], "argument --database-url: is empty"),
        (["refresh", "--min-remaining-hours", "nan"], "argument --min-remaining-hours: 'nan' is out of range"),
    ],
)
def test_out_of_range_arguments_are_usage_errors(argv, message, capsys):
    # --days -3 used to run the demo into an IndexError; --port 99999 started dagster dev on no port;
    # an empty --database-url silently used the embedded server
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("", 30),
        ("5", 5),
        (" 86400 ", 86400),
        ("0", None),
        ("-5", None),
        ("86401", None),
        ("abc", None),
        ("1.5", None),
        ("\u0663\u0660", None),  # Arabic-Indic digits: int() reads them as 30
        ("1_0", None),  # int() reads 10
        ("+5", None),
    ],
)
def test_the_alert_sensor_interval_is_checked_not_silently_raised(monkeypatch, raw, expected):
    monkeypatch.setenv("TAPTOUCH_ALERT_SENSOR_INTERVAL", raw)
    if expected is None:
        with pytest.raises(ValueError, match="TAPTOUCH_ALERT_SENSOR_INTERVAL must be a whole number of seconds from 1"):
            settings.alert_sensor_interval()
    else:
        assert settings.alert_sensor_interval() == expected


def test_every_option_of_every_command_says_what_it_does():
    """``taptouch-sync <command> --help`` explains each option (``ui --host`` said nothing)."""
    import argparse

    from pipelines.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    silent = [
        f"{name} {action.option_strings[0]}"
        for name, command in commands.items()
        for action in command._actions
        if action.option_strings and action.help is None
    ]
    assert silent == []
