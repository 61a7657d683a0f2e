"""The shared API budget (pipelines/warehouse/budget.py): one request rate per client id across
processes, through PostgreSQL; a 429 seen by one client slows the others; a failing database falls
back to the in-process limiter, loudly."""

from __future__ import annotations

import logging
import multiprocessing
import time
from datetime import date, datetime, time as dtime, timedelta, timezone

import pytest

from pipelines.warehouse.budget import DEFAULT_BURST, SharedBudget
from taptouch_resource import TaptouchClient
from taptouch_resource.errors import TaptouchRateLimitError
from taptouch_resource.retry import RateLimiter, RequestLimiter
from taptouch_sandbox import Sandbox, SandboxConfig

CLIENT_ID, SECRET = "sandbox-client", "sandbox-secret"
END = date(2026, 11, 27)
RATE = 20.0
PROCESSES = 4
LATE_ALLOWANCE_S = 0.25
"""How late a request may leave after its slot on this loaded 2-core machine (four loading processes,
the sandbox and PostgreSQL share the cores): at the server, a late request bunches with on-time
ones, up to RATE x this many more in one second (docs/operating.md, "Sharing the API budget")."""


def max_in_one_second(times: list[float]) -> int:
    """The most arrivals in any half-open window [t, t + 1 s), to the microsecond (PostgreSQL's
    resolution: two slots 1.000000 s apart are in different windows, whatever float rounding says)."""
    times = sorted(round(t * 1_000_000) for t in times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - 1_000_000:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class _RecordingBudget(SharedBudget):
    """The shared budget, keeping each slot the database granted (its clock, epoch seconds)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.slots: list[float] = []

    def acquire(self) -> float:
        wait = super().acquire()
        self.slots.append(self.last_slot)
        return wait


def _load(base_url: str, database_url: str, barrier, results) -> None:
    """One process: every store's orders of two days, pages of 15, through the shared budget."""
    budget = _RecordingBudget(database_url, CLIENT_ID, RATE)
    with TaptouchClient(client_id=CLIENT_ID, client_secret=SECRET, base_url=base_url, page_size=15,
                        limiter=budget) as client:
        client.auth.get_token()
        stores = [s["id"] for s in client.list_stores()]
        barrier.wait(timeout=60)  # all four start loading at once
        start = datetime.combine(END - timedelta(days=2), dtime(), tzinfo=timezone.utc)
        orders = sum(len(page) for store_id in stores
                     for page in client.iter_order_pages(store_id, updated_from=start,
                                                         updated_to=start + timedelta(days=2)))
        stats = client.stats.snapshot()
    results.put({"requests": stats["requests"], "orders": orders, "waited_seconds": stats["waited_seconds"],
                 "fallbacks": budget.fallbacks, "slots": budget.slots})
    budget.close()


@pytest.mark.slow
@pytest.mark.postgres
def test_four_processes_share_one_budget(migrated_db):
    sandbox = Sandbox(SandboxConfig(stores=3, days=3, end_date=END, orders_per_day=40))
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    with sandbox.serve() as url:
        procs = [ctx.Process(target=_load, args=(url, migrated_db, barrier, results)) for _ in range(PROCESSES)]
        for p in procs:
            p.start()
        try:
            reports = [results.get(timeout=60) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
        assert all(p.exitcode == 0 for p in procs)
    times = list(sandbox.stats.api_request_times)
    assert len(times) == sum(r["requests"] for r in reports) == sandbox.stats.api_requests
    assert len(times) >= 60 and all(r["fallbacks"] == 0 for r in reports)
    assert len({r["orders"] for r in reports}) == 1 and reports[0]["orders"] > 0  # each loaded the same data
    # The grants (the database's clock): never more than rate + burst - 1 in a half-open second,
    # whichever process asked; the slots of the first requests (token, stores) are counted too.
    slots = [slot for r in reports for slot in r["slots"]]
    assert len(slots) == len(times) and None not in slots
    granted_peak = max_in_one_second(slots)
    assert granted_peak <= RATE + DEFAULT_BURST - 1, (granted_peak, RATE)
    # At the server: the same, plus the requests that left late bunching with on-time ones.
    peak = max_in_one_second(times)
    assert peak <= RATE + DEFAULT_BURST + RATE * LATE_ALLOWANCE_S, (peak, RATE)
    # ... and the processes did share it: together about RATE per second, not 4 x RATE.
    span = max(times) - min(times)
    assert span >= (len(times) - DEFAULT_BURST - PROCESSES) / RATE * 0.9
    assert sum(r["waited_seconds"] for r in reports) > 0
    print(f"\n{len(times)} requests from {PROCESSES} processes in {span:.2f}s; max {granted_peak} granted and "
          f"{peak} received in any 1 s window (budget {RATE:g}/s, burst {DEFAULT_BURST})")


@pytest.mark.postgres
def test_slots_are_spaced_one_interval_apart_whichever_connection_asks(migrated_db):
    """The grant itself, without sleeping: two processes' budgets (two connections) asking in turn
    get slots exactly 1/rate apart on the database's clock, so a second never holds more than rate."""
    budgets = [SharedBudget(migrated_db, "spacing-client", RATE, sleep=lambda s: None) for _ in range(2)]
    slots = []
    for i in range(3 * int(RATE)):
        budgets[i % 2].acquire()
        slots.append(budgets[i % 2].last_slot)
    for budget in budgets:
        budget.close()
    gaps = [b - a for a, b in zip(slots, slots[1:])]
    assert all(gap == pytest.approx(1 / RATE, abs=1e-5) for gap in gaps), gaps
    assert max_in_one_second(slots) == RATE


@pytest.mark.postgres
def test_a_429_seen_by_one_client_makes_another_wait(migrated_db):
    sandbox = Sandbox(SandboxConfig(stores=1, days=1, end_date=END, orders_per_day=5))
    # Two budgets (as in two processes: each its own connection), one client id.
    first = SharedBudget(migrated_db, CLIENT_ID, 50)
    second = SharedBudget(migrated_db, CLIENT_ID, 50)
    with sandbox.serve() as url:
        kw = dict(client_id=CLIENT_ID, client_secret=SECRET, base_url=url, max_retries=0)
        with TaptouchClient(limiter=first, **kw) as a, TaptouchClient(limiter=second, **kw) as b:
            a.auth.get_token(), b.auth.get_token()
            list(b.list_stores())  # b is not waiting for anything yet
            sandbox.faults.retry_after, sandbox.faults.rate_limit_every = "2", 1
            with pytest.raises(TaptouchRateLimitError):
                list(a.list_stores())
            limited_at = sandbox.stats.api_request_times[-1]
            sandbox.faults.reset()
            list(b.list_stores())
            assert sandbox.stats.api_request_times[-1] >= limited_at + 1.9
            assert b.stats.waited_seconds >= 1.8
            assert a.stats.rate_limited == 1 and b.stats.rate_limited == 0
    second.close(), first.close()


def test_an_unreachable_database_falls_back_to_the_process_limit_with_a_warning(caplog):
    budget = SharedBudget("postgresql://nobody@127.0.0.1:1/none", CLIENT_ID, 20, retry_database_after=60)
    with caplog.at_level(logging.WARNING, logger="pipelines.warehouse.budget"):
        started = time.monotonic()
        for _ in range(5):
            budget.acquire()
        elapsed = time.monotonic() - started
    assert budget.fallbacks == 1  # one warning per outage, not one per request
    assert [r for r in caplog.records if "unavailable" in r.getMessage() and "Falling back" in r.getMessage()]
    assert 0.15 <= elapsed < 2  # still limited, in-process: 4 waits of 1/20 s


@pytest.mark.postgres
def test_a_missing_table_says_to_migrate(database_url, caplog):
    budget = SharedBudget(database_url, CLIENT_ID, 100)
    with caplog.at_level(logging.WARNING, logger="pipelines.warehouse.budget"):
        budget.acquire()
    assert budget.fallbacks == 1 and "taptouch-sync migrate" in caplog.text
    budget.close()


@pytest.mark.postgres
def test_for_client_is_one_instance_per_process_and_rate_zero_is_off(migrated_db):
    one = SharedBudget.for_client(migrated_db, CLIENT_ID, 10)
    assert SharedBudget.for_client(migrated_db, CLIENT_ID, 10) is one
    assert isinstance(one, RequestLimiter) and isinstance(RateLimiter(5), RequestLimiter)
    off = SharedBudget.for_client(migrated_db, CLIENT_ID, 0)
    assert isinstance(off, RateLimiter) and off.acquire() == 0.0


def test_in_process_limiter_pauses_every_thread_after_a_429():
    now = [0.0]
    limiter = RateLimiter(10, clock=lambda: now[0], sleep=lambda s: None)
    assert limiter.acquire() == 0.0
    limiter.penalize(3.0)
    assert limiter.acquire() == pytest.approx(3.0)
    assert limiter.waited_seconds == pytest.approx(3.0)
