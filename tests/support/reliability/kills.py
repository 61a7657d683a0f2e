"""SIGKILL a load at random points, rerun it, and check the tables after every kill.

The sandbox is served over real HTTP from this process; the load runs in a child process
(:mod:`tests.support.reliability.kill_child`) that is killed with SIGKILL after a random delay. After each kill
the warehouse must be consistent: every order window is either wholly committed or absent (no
half-loaded window), and every order present equals the truth with exactly its children. After
the last kill the load runs to completion and the warehouse must equal the truth.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import psycopg

from pipelines.sync import day_window
from pipelines.warehouse.db import connect
from taptouch_sandbox import Faults, Sandbox, SandboxConfig

from .check import Diff, compare, reset

ROOT = Path(__file__).resolve().parents[3]  # the repository
END_DATE = date(2026, 11, 27)


@dataclass
class KillResult:
    kills: int = 0  # children killed before they finished
    completed_early: int = 0  # children that finished before their kill was due
    inconsistent: list[str] = field(default_factory=list)  # problems seen after a kill
    diff: Diff = field(default_factory=Diff)  # after the final, complete run
    windows_committed_at_kill: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.inconsistent and self.diff.ok


def _spawn(url: str, db_url: str, first: date, last: date) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.reliability.kill_child",
            url,
            db_url,
            first.isoformat(),
            last.isoformat(),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


@contextlib.contextmanager
def serve_quietly(sb: Sandbox):
    """``sb.serve()`` without the tracebacks a killed client's reset connections would print."""
    server = sb.make_server("127.0.0.1", 0)
    server.handle_error = lambda request, client_address: None
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _full_run(url: str, db_url: str, first: date, last: date) -> tuple[float, str, int]:
    child = _spawn(url, db_url, first, last)
    child.stdout.readline()
    t0 = time.monotonic()
    out, _ = child.communicate(timeout=600)
    return time.monotonic() - t0, out, child.returncode


def wait_for_backends_to_end(conn: psycopg.Connection, timeout: float = 30.0) -> None:
    """Wait until no other session is connected to this database: the killed load's backends.

    SIGKILL ends the client, not its PostgreSQL backends. A backend that had received the client's
    ``COMMIT`` before the kill still commits, a moment later; one inside a transaction rolls back
    when it notices the closed socket. Checking before they end would read the warehouse while a
    window is still committing (its orders then appear between two of the check's queries)."""
    deadline = time.monotonic() + timeout
    while True:
        conn.execute("select pg_stat_clear_snapshot()")  # a fresh view each time, even inside a transaction
        row = conn.execute(
            "select count(*) from pg_stat_activity where datname = current_database()"
            " and backend_type = 'client backend' and pid <> pg_backend_pid()"
        ).fetchone()
        if not row or not row[0]:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{row[0]} other sessions still connected to the database {timeout:.0f}s after the kill"
                " (the killed load's, or another client's: this check needs the database to itself)"
            )
        time.sleep(0.02)


def check_after_kill(conn: psycopg.Connection, sb: Sandbox, days: list[date]) -> tuple[list[str], int]:
    """Problems (half-loaded windows, orders that differ from the truth), and whole windows present."""
    wait_for_backends_to_end(conn)
    problems: list[str] = []
    cur = conn.cursor()
    cur.execute("select order_id from taptouch.orders")
    present = {r[0] for r in cur.fetchall()}
    committed = 0
    lo = hi = None
    for day in days:
        start, end = day_window(day)
        ids = {o["id"] for sid in sb.store_ids() for o in sb.orders_in_window(sid, start, end)}
        have = ids & present
        if have and have != ids:
            problems.append(f"window {day}: {len(have)} of {len(ids)} orders committed (half-loaded)")
        if have == ids and ids:  # windows with orders only
            committed += 1
            if ids:
                lo = start if lo is None else min(lo, start)
                hi = end if hi is None else max(hi, end)
    # the orders present must be exactly the truth, children included (windows commit in day order)
    if lo is not None:
        diff = compare(conn, sb, lo, hi, stores=False)
        if not diff.ok:
            problems.append(f"after a kill: {diff}")
    cur.close()
    return problems, committed


def run_kills(db_url: str, kills: int, *, seed: int = 0, say: Callable[[str], None] | None = None) -> KillResult:
    rng = random.Random(seed)
    say = say or (lambda s: None)
    sb = Sandbox(
        SandboxConfig(seed=seed, stores=3, days=5, end_date=END_DATE, orders_per_day=40), faults=Faults(latency=0.01)
    )
    first = END_DATE - timedelta(days=6)
    last = END_DATE + timedelta(days=2)
    days = [first + timedelta(days=i) for i in range((last - first).days)]
    result = KillResult()
    with serve_quietly(sb) as url, connect(db_url, autocommit=True) as conn:
        reset(conn)
        duration, _, _ = _full_run(url, db_url, first, last)  # how long a whole load takes
        say(f"a whole load takes {duration:.1f}s; killing at random points within it")
        reset(conn)
        while result.kills < kills:
            child = _spawn(url, db_url, first, last)
            try:
                line = child.stdout.readline()
                if line.strip() != "ready":
                    raise RuntimeError(f"the load did not start: {line!r}")
                delay = rng.uniform(0.0, duration)
                try:
                    child.wait(timeout=delay)
                    result.completed_early += 1
                except subprocess.TimeoutExpired:
                    child.send_signal(signal.SIGKILL)
                    child.wait()
                    result.kills += 1
            finally:
                if child.poll() is None:
                    child.kill()
                    child.wait()
                child.stdout.close()
            problems, committed = check_after_kill(conn, sb, days)
            result.inconsistent.extend(problems)
            result.windows_committed_at_kill.append(committed)
            say(
                f"kill {result.kills}: {committed}/{len(days)} windows committed, "
                f"{'consistent' if not problems else 'INCONSISTENT'}"
            )
            if rng.random() < 0.6:
                reset(conn)  # start over from empty now and then, so kills also land in first loads
        _, out, code = _full_run(url, db_url, first, last)
        if code != 0 or "done" not in out:
            result.inconsistent.append(f"the final rerun failed (exit {code})")
        start, _ = day_window(first)
        _, end = day_window(last - timedelta(days=1))
        result.diff = compare(conn, sb, start, end)
    return result
