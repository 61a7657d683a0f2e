"""A hostile review of f364165's stale postmaster.pid removal (a test)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pipelines.warehouse import embedded
from pipelines.warehouse.db import embedded_database_url

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

_INNER = """
import os, sys, time
from pathlib import Path
from pipelines.warehouse.db import embedded_database_url
pgdata = Path(sys.argv[1])
embedded_database_url(pgdata)
print(int((pgdata / "postmaster.pid").read_text().split()[0]), flush=True)
time.sleep(600)
"""


def _occupy_outer_pid(pid: int) -> subprocess.Popen | None:
    """A process of this (outer) pid namespace with number ``pid`` (None: one already has it)."""
    try:
        os.kill(pid, 0)
        return None
    except ProcessLookupError:
        pass
    for _ in range(50):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(["sleep", "600"])
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.skip(f"could not get pid {pid} in this namespace")


@pytest.mark.skipif(not shutil.which("unshare") or os.geteuid() != 0, reason="needs unshare -p (root)")
def test_a_live_server_of_another_pid_namespace_keeps_its_pid_file(embedded_pgdata: Path) -> None:
    """The data directory is shared with a container (its own pid namespace: a devcontainer, a
    `docker run -v`), where the embedded server runs. Its postmaster.pid names the postmaster's
    pid in that namespace; here, that number is some other process, whose /proc cwd is not the
    data directory. _runs_in took that for a killed server's stale file and deleted the pid file of
    the live server (PostgreSQL then shuts that server down, "lock file is invalid", and a second
    postmaster may start on the same data directory), instead of using the server that answers on
    the socket the file names."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAPTOUCH_", "PG"))}
    env["PYTHONPATH"] = str(ROOT)
    inner = subprocess.Popen(
        ["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c", _INNER, str(embedded_pgdata)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    outer = None
    try:
        line = inner.stdout.readline()
        assert line.strip().isdigit(), f"the server in the other namespace did not start: {line!r}"
        inner_pid = int(line)
        outer = _occupy_outer_pid(inner_pid)
        pid_file = embedded_pgdata / "postmaster.pid"
        before = pid_file.read_text()

        error = None
        try:
            url = embedded_database_url(embedded_pgdata)
        except Exception as exc:  # noqa: BLE001
            error = exc
        assert pid_file.exists() and pid_file.read_text() == before, (
            f"the live server's postmaster.pid was removed or replaced ({error!r})"
        )
        assert error is None, error
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone() == ("taptouch",)
    finally:
        embedded._embedded_urls.clear()
        inner.kill()  # the namespace's init: every process in it (the server) dies with it
        inner.wait()
        (embedded_pgdata / "postmaster.pid").unlink(missing_ok=True)  # its server died with it: signal nothing
        if outer is not None:
            outer.kill()
            outer.wait()
        time.sleep(1)
