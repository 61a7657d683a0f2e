"""A hostile review of the public faces: promises of README.md / docs/operating.md that the code
does not keep (2026-12-06). Each test fails on the code it was written against."""

from __future__ import annotations

import pytest

from pipelines.cli import EXIT_CONFIG, main
from pipelines.sync import is_transient
from pipelines.warehouse.db import connect_url, with_database

# docs/operating.md, "Failures": only errors a retry can cure are retried (..., a lost database
# connection); "Anything else (403, 404, 422, bad credentials, a bad setting, a bug) fails the step
# at once, unretried". README: "A value the code location cannot use fails ... the run fails once,
# unretried". Each URL below is a TAPTOUCH_DATABASE_URL that fails identically on every attempt.
MISCONFIGURED_QUERIES = [
    "sslmode=bogus",  # libpq: invalid sslmode value
    "target_session_attrs=bogus",  # libpq: invalid target_session_attrs value
    "sslmode=require",  # the server has no SSL (ssl = off on the test server): never cured by a retry
    "options=-c%20statement_timeout%3Dx",  # FATAL: invalid value for parameter
    "options=-c%20no_such_setting%3D1",  # FATAL: unrecognized configuration parameter
]


@pytest.mark.parametrize("query", MISCONFIGURED_QUERIES)
def test_a_warehouse_url_that_can_never_connect_is_not_retried(pg_admin_url: str, query: str) -> None:
    url = with_database(pg_admin_url, "postgres")
    url = f"{url}{'&' if '?' in url else '?'}{query}"
    try:
        connect_url(url).close()
    except Exception as exc:  # noqa: BLE001 - what matters is how it is classified
        caught = pytest.ExceptionInfo.from_exception(exc)
    else:  # libpq uses no SSL over a Unix socket (the embedded server): nothing to refuse
        assert "sslmode=require" in query, "connected although the URL cannot work"
        pytest.skip("a Unix socket connection: sslmode=require needs no SSL")
    if "sslmode=require" in query and "does not support SSL" not in str(caught.value):
        pytest.skip("the test server speaks SSL")
    # a step's RetryPolicy retries what is_transient calls transient: 3 retries, 30 s exponential
    # with jitter, about 6 minutes (measured: `dagster asset materialize --select stores` with
    # TAPTOUCH_DATABASE_URL=...?sslmode=bogus took 04:04:39 -> 04:10:35, three STEP_UP_FOR_RETRY)
    assert not is_transient(caught.value), f"retried although it can never succeed: {caught.value}"


def test_a_database_url_libpq_cannot_read_is_a_configuration_error_exit_2(pg_admin_url: str) -> None:
    """docs/operating.md, "Checking settings": `taptouch-sync`: a usage or configuration error exits 2,
    any other failure 1. The message itself says the URL is not one libpq can read (a setting)."""
    url = with_database(pg_admin_url, "postgres")
    bad = f"{url}{'&' if '?' in url else '?'}sslmode=bogus"
    assert main(["-q", "migrate", "--database-url", bad]) == EXIT_CONFIG


def test_a_pgdata_that_is_a_file_is_a_configuration_error_exit_2(tmp_path, monkeypatch, capsys) -> None:
    """TAPTOUCH_PGDATA is a setting (README, docs/operating.md "Checking settings": a file is
    refused); the message says to set it to a directory, yet the command exits 1."""
    not_a_dir = tmp_path / "pgdata"
    not_a_dir.write_text("x")
    monkeypatch.delenv("TAPTOUCH_DATABASE_URL", raising=False)
    monkeypatch.setenv("TAPTOUCH_PGDATA", str(not_a_dir))
    code = main(["-q", "db-url"])
    err = capsys.readouterr().err
    assert "set TAPTOUCH_PGDATA to a directory" in err
    assert code == EXIT_CONFIG


def test_a_server_that_cannot_start_for_want_of_resources_is_not_a_configuration_error(tmp_path, monkeypatch, capsys):
    """embedded_database_url turns every OSError of the start-up into EmbeddedSettingError (exit 2,
    "a configuration error"): a fork refused for want of processes (EAGAIN), a full disk, are not a
    setting to fix (docs/operating.md: a usage or configuration error exits 2, any other failure 1)."""
    import errno
    import subprocess

    from pipelines.cli import EXIT_FAILED, main

    def no_fork(*a, **k):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "run", no_fork)
    monkeypatch.delenv("TAPTOUCH_DATABASE_URL", raising=False)
    monkeypatch.setenv("TAPTOUCH_PGDATA", str(tmp_path / "pgdata"))
    code = main(["-q", "db-url"])
    err = capsys.readouterr().err
    assert "Resource temporarily unavailable" in err
    assert code == EXIT_FAILED, err
