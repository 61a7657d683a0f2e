"""The embedded PostgreSQL admits only its owner: another local user (``nobody``) can neither
connect nor read the data directory, short and long data-directory paths alike, and starting it
changes the permissions of no parent directory.

The data directories live under a world-traversable (0755) directory on purpose, so nothing but
the server's own protections stands between ``nobody`` and the data. Needs root (to act as
``nobody``); the suite's CI runs as root."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from pipelines.warehouse.db import connect, embedded_database_url, stop_embedded_server

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.name != "posix" or os.geteuid() != 0 or not shutil.which("runuser"),
        reason="acting as another local user needs root and runuser",
    ),
]


def as_nobody(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True, timeout=60)


def psql() -> str:
    found = shutil.which("psql")
    if found:
        return found
    from pgserver._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "psql")


def modes(path: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, uid, gid) of ``path``'s every parent, up to /."""
    return {str(p): (stat.S_IMODE(p.stat().st_mode), p.stat().st_uid, p.stat().st_gid) for p in path.parents}


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A world-traversable directory under /tmp (0755), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="tt-sec-", dir="/tmp"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def started(pgdata: Path) -> tuple[str, dict[str, tuple[int, int, int]], dict[str, tuple[int, int, int]]]:
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    for p in [pgdata.parent, *pgdata.parent.parents]:
        if str(p).startswith("/tmp/tt-sec-"):
            os.chmod(p, 0o755)
    if pgdata.parent != Path("/tmp"):
        os.chmod(pgdata.parent, 0o711)  # traversable, not listable: pgserver would make it 0755
    before = modes(pgdata)
    url = embedded_database_url(pgdata)
    return url, before, modes(pgdata)


def check_only_the_owner_gets_in(pgdata: Path, url: str) -> None:
    query = parse_qs(urlsplit(url).query)
    socket_dir = Path(query["host"][0])
    passfile = Path(query["passfile"][0])
    me = os.geteuid()

    # files and directories: owner only
    assert stat.S_IMODE(pgdata.stat().st_mode) == 0o700 and pgdata.stat().st_uid == me
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700 and socket_dir.stat().st_uid == me
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600 and passfile.stat().st_uid == me
    assert stat.S_IMODE((socket_dir / ".s.PGSQL.5432").stat().st_mode) == 0o700
    lock = pgdata.with_name(pgdata.name + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600

    # the owner connects; password authentication, no TCP listener, no trust rule
    with connect(url) as conn:
        assert conn.execute("show listen_addresses").fetchone() == ("",)
        methods = {r[0] for r in conn.execute("select auth_method from pg_hba_file_rules")}
        assert methods == {"scram-sha-256"}
    # ...and without the password file even the owner is refused: a password is required
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@/taptouch?host={socket_dir}&passfile=/dev/null", connect_timeout=5)

    # nobody: cannot connect (neither with the URL nor guessing the password file), cannot read the data
    for target in (url, f"postgresql://postgres@/taptouch?host={socket_dir}"):
        denied = as_nobody(psql(), target, "-c", "select 1")
        assert denied.returncode != 0, denied.stdout
        assert "Permission denied" in denied.stderr or "password" in denied.stderr
    for probe in (
        ["ls", str(pgdata)],
        ["cat", str(pgdata / "PG_VERSION")],
        ["cat", str(passfile)],
        ["ls", str(socket_dir)],
    ):
        denied = as_nobody(*probe)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, probe


def test_another_local_user_cannot_connect_or_read_the_data(open_parent: Path) -> None:
    pgdata = open_parent / "warehouse" / "pgdata"
    try:
        url, before, after = started(pgdata)
        assert after == before, "starting the embedded server changed the permissions of a parent directory"
        assert Path(parse_qs(urlsplit(url).query)["host"][0]) == pgdata  # a short path: the socket stays inside
        check_only_the_owner_gets_in(pgdata, url)
    finally:
        stop_embedded_server(pgdata)


def test_a_long_data_directory_path_keeps_a_private_socket_directory(open_parent: Path) -> None:
    pgdata = open_parent / ("d" * 60) / ("e" * 60) / "pgdata"  # too long for a unix socket address
    try:
        url, before, after = started(pgdata)
        assert after == before
        socket_dir = Path(parse_qs(urlsplit(url).query)["host"][0])
        assert socket_dir != pgdata and len(str(socket_dir / ".s.PGSQL.5432")) < 100
        check_only_the_owner_gets_in(pgdata, url)
    finally:
        stop_embedded_server(pgdata)
    assert not socket_dir.exists()  # the private socket directory goes with the server


def test_db_url_raw_opens_psql_for_the_owner_only(open_parent: Path) -> None:
    pgdata = open_parent / "pgdata"
    try:
        started(pgdata)
        env = {**os.environ, "TAPTOUCH_PGDATA": str(pgdata)}
        env.pop("TAPTOUCH_DATABASE_URL", None)
        raw = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "db-url", "--raw"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert raw.returncode == 0, raw.stderr
        url = raw.stdout.strip()
        mine = subprocess.run([psql(), url, "-Atc", "select current_database()"], capture_output=True, text=True)
        assert mine.returncode == 0 and mine.stdout.strip() == "taptouch", mine.stderr
        theirs = as_nobody(psql(), url, "-Atc", "select current_database()")
        assert theirs.returncode != 0
    finally:
        stop_embedded_server(pgdata)


def test_a_data_directory_from_an_older_version_is_locked_down(open_parent: Path) -> None:
    """pgserver's own start (trust, as it was before) is converted: password required, the
    socket private, and the parents it opened up are not opened further."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
    pgdata = open_parent / "old" / "pgdata"
    pgdata.parent.mkdir()
    old = pgserver.get_server(pgdata, cleanup_mode=None)
    trust_url = old.get_uri()
    with psycopg.connect(trust_url) as conn:  # trust: anyone reaching the socket was a superuser
        assert conn.execute("select 1").fetchone() == (1,)
    try:
        url, before, after = started(pgdata)
        assert after == before
        check_only_the_owner_gets_in(pgdata, url)
    finally:
        stop_embedded_server(pgdata)
