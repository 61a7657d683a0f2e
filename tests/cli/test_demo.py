"""The README's first command: ``taptouch-sync demo`` loads everything, and running it again is safe
(the second run reports 0 inserted, 0 updated in its summary, not only in the log)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _demo(env: dict) -> str:
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "demo", "--days", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_the_demo_loads_and_a_rerun_changes_nothing(database_url, tmp_path):
    env = {**os.environ, "TAPTOUCH_DATABASE_URL": database_url, "DAGSTER_HOME": str(tmp_path / "home"),
           "PYTHONPATH": str(ROOT)}
    for name in ("TAPTOUCH_CLIENT_ID", "TAPTOUCH_CLIENT_SECRET", "TAPTOUCH_BASE_URL", "TAPTOUCH_ACCOUNTS"):
        env.pop(name, None)
    first = re.search(r"This run's orders: (\d+) inserted, (\d+) updated", _demo(env))
    assert first and int(first.group(1)) > 0
    with psycopg.connect(database_url) as conn:
        orders = conn.execute("select count(*) from taptouch.orders").fetchone()[0]
    assert orders == int(first.group(1))
    second = _demo(env)
    assert "This run's orders: 0 inserted, 0 updated" in second
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from taptouch.orders").fetchone()[0] == orders
