"""A terminated run stops within 5 seconds of its worker receiving SIGTERM, also
while its fetch threads wait on the shared request budget or on a 429's Retry-After.

A real Dagster run (:mod:`tests.support.stop_child`, a run worker that handles SIGTERM as Dagster's
entry points do) loads from the sandbox over HTTP. The sandbox answers the fetches with 429 and a
Retry-After of 10 minutes: one fetch thread waits in the retry engine, the others in the shared
budget's pause. Then the worker gets SIGTERM and must be gone within 5 seconds (it used to sleep
out the whole wait: the fetch threads are joined while the run unwinds)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest

from taptouch_sandbox import Sandbox, SandboxConfig

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 5.0


def _spawn(mode: str, url: str, db_url: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TAPTOUCH_STORE_WORKERS": "3",
    }
    env.pop("TAPTOUCH_REQUESTS_PER_SECOND", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.stop_child", mode, url, db_url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


class _LimitedFetches(Sandbox):
    """The sandbox, answering every orders and inventory request 429 with a Retry-After of 10
    minutes (the store listing and tokens go through)."""

    def handle(self, method, path, query, headers, body):
        if "/orders" in path or "/inventory" in path:
            with self._lock:
                self.stats.responses_by_status[429] = self.stats.responses_by_status.get(429, 0) + 1
            return self._envelope_error(
                429, {"code": "rate_limited", "message": "Too many requests; slow down."}, [("Retry-After", "600")]
            )
        return super().handle(method, path, query, headers, body)


class _StalledFetches(Sandbox):
    """The sandbox, never answering an orders request (it holds it for two minutes, longer than the
    client's read timeout): the fetch threads are busy in a request when the run is stopped."""

    released = None

    def handle(self, method, path, query, headers, body):
        if "/orders" in path:
            with self._lock:
                self.stats.responses_by_status[429] = self.stats.responses_by_status.get(429, 0) + 1  # "reached"
            self.released.wait(120)
            return self._envelope_error(503, {"code": "stalled", "message": "gave up"})
        return super().handle(method, path, query, headers, body)


def _terminate_while_waiting(mode: str, sandbox: Sandbox, url: str, db_url: str) -> float:
    """Start the run, wait until its fetches got their 429 (Retry-After 600 s) and wait on it (or
    are stuck in a request the server does not answer), SIGTERM the run worker; return how long it
    took to be gone."""
    child = _spawn(mode, url, db_url)
    try:
        assert child.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while sandbox.stats.responses_by_status.get(429, 0) < 1 and time.monotonic() < deadline:
            assert child.poll() is None, child.communicate()
            time.sleep(0.05)
        assert sandbox.stats.responses_by_status.get(429, 0) >= 1, "the run never reached the fetches"
        time.sleep(1.0)  # the fetch threads are now in the 429 wait and the budget's pause (or the request)
        assert child.poll() is None
        limited = sandbox.stats.responses_by_status[429]
        sent_at = time.monotonic()
        child.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=STOP_WITHIN_S)
        took = time.monotonic() - sent_at
        assert sandbox.stats.responses_by_status[429] == limited  # nothing was retried while stopping
        return took
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)


@pytest.fixture
def sandbox_url():
    sb = _LimitedFetches(SandboxConfig(seed=3, stores=3, days=2, end_date=date(2026, 11, 27), orders_per_day=20))
    with sb.serve() as url:
        yield sb, url


@pytest.mark.slow
@pytest.mark.postgres
def test_a_run_whose_fetch_threads_wait_with_stop_on_stops_within_5_s_of_sigterm(sandbox_url, migrated_db):
    """The mechanism, on a real run: fetch threads inside ``stop_on`` waiting on a 429 and on the
    shared budget's pause; the step's main thread sets the stop event as Dagster interrupts it."""
    sandbox, url = sandbox_url
    took = _terminate_while_waiting("threads", sandbox, url, migrated_db)
    assert took < STOP_WITHIN_S, f"the run worker was still there {took:.1f}s after SIGTERM"


@pytest.mark.slow
@pytest.mark.postgres
def test_a_terminated_orders_run_stops_within_5_s_while_waiting_on_a_429_and_the_budget(sandbox_url, migrated_db):
    sandbox, url = sandbox_url
    took = _terminate_while_waiting("orders", sandbox, url, migrated_db)
    assert took < STOP_WITHIN_S, f"the run worker was still there {took:.1f}s after SIGTERM"


@pytest.mark.slow
@pytest.mark.postgres
def test_a_terminated_orders_run_stops_within_5_s_while_a_request_hangs(migrated_db):
    """The fetch threads are inside a request the server does not answer (for longer than the read
    timeout): the stopping window does not wait for them."""
    import threading

    sb = _StalledFetches(SandboxConfig(seed=3, stores=3, days=2, end_date=date(2026, 11, 27), orders_per_day=20))
    sb.released = threading.Event()
    with sb.serve() as url:
        try:
            took = _terminate_while_waiting("orders", sb, url, migrated_db)
        finally:
            sb.released.set()
    assert took < STOP_WITHIN_S, f"the run worker was still there {took:.1f}s after SIGTERM"
