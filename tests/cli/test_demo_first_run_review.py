"""A hostile review of a new user's first run (each a test): the demo interrupted with Ctrl-C,
the UI stopped while another command still uses the embedded PostgreSQL it started, and
``./dev``'s output where the README captures it (``psql "$(./dev taptouch-sync db-url --raw)"``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from pipelines.warehouse.db import libpq_url
from tests.cli.test_ui_stop import start_ui  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]


def _env(pgdata: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPTOUCH_") and k != "DAGSTER_HOME"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env.update(TAPTOUCH_PGDATA=str(pgdata), DAGSTER_HOME=str(home), **extra)
    return env


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(errors="replace")):
            return
        assert proc.poll() is None, f"exited early:\n{log.read_text(errors='replace')[-3000:]}"
        time.sleep(0.1)
    pytest.fail(f"no {pattern!r} within {within}s:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.slow
def test_ctrl_c_during_the_demos_orders_run_stops_the_demo(embedded_pgdata: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) while the orders run loads: the demo must
    stop. It sat silent for 30-60 s (the orders asset's RetryPolicy took the interrupt for a
    failure to retry, and the interrupt killed Dagster's log capture), then loaded everything,
    printed "Done" and exited 0. A re-run afterwards duplicates nothing."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "demo"],
            cwd=ROOT,
            env=_env(embedded_pgdata, home),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_for(log, r"orders \d{4}-\d\d-\d\d: \d+ inserted", demo, within=120)  # an orders partition is in
        pressed = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            code = demo.wait(timeout=20)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - pressed
        output = log.read_text(errors="replace")
        assert code is not None, f"the demo still runs {took:.0f}s after Ctrl-C:\n{output[-2000:]}"
        assert code != 0 and "Done in" not in output, f"Ctrl-C was ignored (exit {code}):\n{output[-2000:]}"
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()

    again = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "demo"],
        cwd=ROOT,
        env=_env(embedded_pgdata, home),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    url = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "db-url", "--raw"],
        cwd=ROOT,
        env=_env(embedded_pgdata, home),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with psycopg.connect(libpq_url(url)) as conn:
        total, distinct = conn.execute("select count(*), count(distinct order_id) from taptouch.orders").fetchone()
    assert total == distinct > 0


# --- ./dev's own output -------------------------------------------------------------------------


def _fake_project(tmp_path: Path, *, stamp_older: bool) -> Path:
    """A copy of ./dev next to a .venv whose python and taptouch-sync are stand-ins (pip a no-op,
    taptouch-sync printing a URL): the shared virtualenv is never touched."""
    project = tmp_path / "project"
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy(ROOT / "dev", project / "dev")
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    python = bin_dir / "python"
    python.write_text("#!/bin/sh\necho 'pip: Successfully installed everything'\nexit 0\n")
    tool = bin_dir / "taptouch-sync"
    tool.write_text("#!/bin/sh\necho 'postgresql://postgres@/taptouch?host=/tmp/x'\n")
    for exe in (python, tool):
        exe.chmod(0o755)
    stamp = project / ".venv" / ".installed"
    stamp.touch()
    if stamp_older:  # pyproject.toml changed since the install (a git pull): ./dev installs again
        old = time.time() - 3600
        os.utime(stamp, (old, old))
    return project


@pytest.mark.parametrize("stamp_older", [False, True], ids=["installed", "pyproject-changed"])
def test_dev_prints_only_the_url_on_stdout_for_db_url_raw(tmp_path: Path, stamp_older: bool) -> None:
    """The README: psql "$(./dev taptouch-sync db-url --raw)". When ./dev (re)installs first (a
    fresh clone, or pyproject.toml changed by a pull), its "==> installing ..." went to stdout,
    into the URL psql was given."""
    project = _fake_project(tmp_path, stamp_older=stamp_older)
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(
        ["bash", str(project / "dev"), "taptouch-sync", "db-url", "--raw"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "postgresql://postgres@/taptouch?host=/tmp/x\n", done.stdout


# --- the UI stopping the embedded PostgreSQL under another command ---------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_the_ui_leaves_its_embedded_postgresql_running_while_another_command_uses_it(
    start_ui,  # noqa: F811
    embedded_pgdata,
):
    """`./dev ui` started the embedded PostgreSQL; in another shell the user sourced ui.env and
    runs a command (the README's psql, a `./dev demo`, a materialize) on it. Ctrl-C to the UI then
    shut the server down under that command (its connection: "terminating connection due to
    administrator command")."""
    ui = start_ui(embedded=embedded_pgdata)
    url = ui.env_values()["TAPTOUCH_DATABASE_URL"]
    with psycopg.connect(libpq_url(url), autocommit=True) as other_command:
        other_command.execute("select 1")
        ui.stop(signal.SIGTERM)
        assert ui.top.returncode == 0, ui.output()
        still = other_command.execute("select current_database()").fetchone()
        assert still == ("taptouch",)
    assert "left running" in ui.output()
