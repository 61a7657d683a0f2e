"""A hostile review of a new user's first run on the embedded PostgreSQL (each a test).

* a ``PGPASSWORD`` in the user's environment (someone who works with PostgreSQL often exports one)
  must not lock them out of the embedded server, whose URL names its own password file;
* a ``postmaster.pid`` left by a server that was killed (SIGKILL, a power cut, a container
  restart), whose pid now belongs to another process, is not a running server: the next command
  starts the server, and stopping "the server" never signals that other process;
* a server that cannot start says why (e.g. a data directory of another PostgreSQL version).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipelines.warehouse import embedded
from pipelines.warehouse.db import EmbeddedServerError, connect, embedded_database_url, stop_embedded_server

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _child_env(pgdata: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAPTOUCH_", "PG"))}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env["TAPTOUCH_PGDATA"] = str(pgdata)
    env.update(extra)
    return env


def _cli(pgdata: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=ROOT,
        env=_child_env(pgdata, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _psql() -> str:
    return str(Path(embedded._bin("psql")))


# --- PGPASSWORD ------------------------------------------------------------------------------------


def test_a_pgpassword_in_the_environment_does_not_lock_the_user_out(embedded_pgdata: Path) -> None:
    """libpq prefers PGPASSWORD to the URL's passfile: a user who exports one for their own
    PostgreSQL got `password authentication failed for user "postgres"` from `./dev demo`."""
    started = _cli(embedded_pgdata, "db-url", "--raw")  # the server of an earlier demo
    assert started.returncode == 0, started.stderr

    again = _cli(embedded_pgdata, "db-url", "--raw", PGPASSWORD="the-password-of-my-other-postgres")
    assert again.returncode == 0, again.stderr
    url = again.stdout.strip()
    # the URL it prints works in the user's shell, PGPASSWORD and all (README: psql "$(... db-url --raw)")
    done = subprocess.run(
        [_psql(), url, "-Atc", "select current_database()"],
        env={**_child_env(embedded_pgdata), "PGPASSWORD": "the-password-of-my-other-postgres"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0 and done.stdout.strip() == "taptouch", done.stderr


def test_the_embedded_server_first_started_under_pgpassword(embedded_pgdata: Path, monkeypatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "not-the-embedded-one")
    url = embedded_database_url(embedded_pgdata)
    with connect(url) as conn:
        assert conn.execute("select current_database()").fetchone() == ("taptouch",)


# --- a stale postmaster.pid whose pid was reused ---------------------------------------------------


def _unrelated_process() -> psutil.Process:
    """A long-lived process of this user that is not our child (init reaps it), as any program
    that happens to get the dead postmaster's pid after a reboot."""
    out = subprocess.run(
        ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True
    ).stdout
    return psutil.Process(int(out.strip()))


def _kill_server_hard(pgdata: Path) -> None:
    """SIGKILL the postmaster (a power cut, an OOM kill): postmaster.pid stays behind."""
    pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    post = psutil.Process(pid)
    children = post.children(recursive=True)
    post.kill()
    for child in children:  # they notice the postmaster's death and exit; do not wait on it
        child.kill()
    psutil.wait_procs([post, *children], timeout=20)
    embedded._embedded_urls.clear()  # this process never saw the server go: a new process would not either


def _pid_file_names(pgdata: Path, pid: int) -> None:
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    lines[0] = str(pid)
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")


@pytest.fixture
def crashed_server(embedded_pgdata: Path):
    """A data directory whose server was killed and whose postmaster.pid names a live process of
    this user that is not PostgreSQL."""
    embedded_database_url(embedded_pgdata)
    _kill_server_hard(embedded_pgdata)
    other = _unrelated_process()
    _pid_file_names(embedded_pgdata, other.pid)
    yield embedded_pgdata, other
    if other.is_running():
        other.kill()


def test_a_crashed_servers_pid_file_naming_another_process_does_not_block_the_next_start(crashed_server) -> None:
    pgdata, other = crashed_server
    done = _cli(pgdata, "db-url", "--raw")
    assert done.returncode == 0, done.stderr  # was: Connection refused, on every command, for ever
    subprocess.run([_psql(), done.stdout.strip(), "-Atc", "select 1"], check=True, capture_output=True, timeout=30)
    assert other.is_running() and other.status() != psutil.STATUS_ZOMBIE


def test_stopping_the_server_never_signals_the_process_that_got_its_old_pid(crashed_server) -> None:
    pgdata, other = crashed_server
    started = time.monotonic()
    stop_embedded_server(pgdata)
    assert time.monotonic() - started < 20
    time.sleep(0.5)
    assert other.is_running() and other.status() != psutil.STATUS_ZOMBIE, (
        "stop_embedded_server sent SIGINT to an unrelated process"
    )


# --- a server that cannot start ------------------------------------------------------------------


def test_a_server_that_cannot_start_says_why_and_where_its_log_is(embedded_pgdata: Path) -> None:
    """A data directory of another PostgreSQL version (pgserver upgraded, or one copied from
    another machine): the error said only `pg_ctl: could not start server / Examine the log
    output.`, naming neither the reason nor the log."""
    embedded_database_url(embedded_pgdata)
    stop_embedded_server(embedded_pgdata)
    (embedded_pgdata / "PG_VERSION").write_text("15\n")
    embedded._embedded_urls.clear()
    with pytest.raises(EmbeddedServerError) as raised:
        embedded_database_url(embedded_pgdata)
    message = str(raised.value)
    assert "incompatible" in message, message
    assert str(embedded_pgdata / "log") in message, message
