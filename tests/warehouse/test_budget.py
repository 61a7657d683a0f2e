"""The shared API budget (pipelines/warehouse/budget.py): one request rate per client id across
processes, through PostgreSQL; a 429 seen by one client slows the others; a failing database falls
back to the in-process limiter, loudly."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

import httpx
import psycopg
import pytest

from pipelines.warehouse.budget import DEFAULT_BURST, RequestMeter, SharedBudget, requests_of
from taptouch_resource import TaptouchClient
from taptouch_resource.errors import TaptouchRateLimitError
from taptouch_resource.retry import (
    MAX_RETRY_AFTER,
    MAX_WAIT,
    RateLimiter,
    RequestLimiter,
    Stopped,
    pause,
    stop_events,
    stop_on,
)
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
    with TaptouchClient(
        client_id=CLIENT_ID, client_secret=SECRET, base_url=base_url, page_size=15, limiter=budget
    ) as client:
        client.auth.get_token()
        stores = [s["id"] for s in client.list_stores()]
        barrier.wait(timeout=60)  # all four start loading at once
        start = datetime.combine(END - timedelta(days=2), dtime(), tzinfo=UTC)
        orders = sum(
            len(page)
            for store_id in stores
            for page in client.iter_order_pages(store_id, updated_from=start, updated_to=start + timedelta(days=2))
        )
        stats = client.stats.snapshot()
    results.put(
        {
            "requests": stats["requests"],
            "orders": orders,
            "waited_seconds": stats["waited_seconds"],
            "fallbacks": budget.fallbacks,
            "slots": budget.slots,
        }
    )
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
    print(
        f"\n{len(times)} requests from {PROCESSES} processes in {span:.2f}s; max {granted_peak} granted and "
        f"{peak} received in any 1 s window (budget {RATE:g}/s, burst {DEFAULT_BURST})"
    )


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
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
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


# ------------------------------------------------------------------------------------------------
# Every wait is bounded, an absurd row heals itself, and a stopping run's waits end.


class Waited(Exception):
    """A budget's wait, raised instead of slept (the seconds it would wait)."""


def must_wait(seconds: float) -> None:
    raise Waited(seconds)


def _row(db_url: str, client_id: str) -> dict:
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(
            "select extract(epoch from next_at - clock_timestamp())::float8 as next_ahead, "
            "extract(epoch from blocked_until - clock_timestamp())::float8 as blocked_ahead, requests "
            "from taptouch_meta.request_budget where client_id = %s",
            (client_id,),
        )
        names = [c.name for c in cur.description]
        return dict(zip(names, cur.fetchone(), strict=True))


def _set_row(db_url: str, client_id: str, assignments: str) -> None:
    """Write the budget row as a broken process, a hand edit or a clock that was ahead would."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"update taptouch_meta.request_budget set {assignments} where client_id = %s", (client_id,))


@pytest.mark.postgres
def test_a_far_future_slot_in_the_row_heals_itself_instead_of_parking_every_process(migrated_db, caplog):
    waits: list[float] = []
    budget = SharedBudget(migrated_db, "far-future", 10, sleep=waits.append)
    budget.acquire()  # the row exists
    _set_row(migrated_db, "far-future", "next_at = clock_timestamp() + interval '10 days'")
    other = SharedBudget(migrated_db, "far-future", 10, sleep=waits.append)  # another process
    with caplog.at_level(logging.WARNING, logger="pipelines.warehouse.budget"):
        first = other.acquire()
        second = budget.acquire()
    assert first <= 0.01 and second <= 0.2, waits  # not ten days, and not even MAX_WAIT
    assert max(waits) <= MAX_WAIT
    assert _row(migrated_db, "far-future")["next_ahead"] < 1.0  # the row is healed: slots near now again
    assert "reset to now" in caplog.text and "far-future" in caplog.text
    other.close(), budget.close()


@pytest.mark.postgres
def test_a_database_clock_stepping_back_an_hour_costs_nobody_an_hour(migrated_db, caplog):
    """The row was written by the clock before it stepped back an hour: its next slot, its last
    update and an ended 429 pause all lie an hour ahead of the clock now. The slots move back with
    the clock: the next request goes at once, the one after it 1/rate later, as before the step."""
    waits: list[float] = []
    budget = SharedBudget(migrated_db, "stepped", 10, sleep=waits.append)
    budget.acquire()
    _set_row(
        migrated_db,
        "stepped",
        "updated_at = clock_timestamp() + interval '1 hour', "
        "next_at = clock_timestamp() + interval '1 hour 0.1 second', "
        "blocked_until = clock_timestamp() + interval '1 hour' - interval '10 seconds'",
    )
    with caplog.at_level(logging.WARNING, logger="pipelines.warehouse.budget"):
        budget.acquire()
        budget.acquire()
    assert max(waits) <= 0.25, waits  # spaced 1/rate as before, not 3600 s
    assert "stepped back" in caplog.text
    row = _row(migrated_db, "stepped")
    assert row["next_ahead"] < 1.0 and row["blocked_ahead"] < 0  # the ended pause stays ended
    budget.close()


@pytest.mark.postgres
def test_a_clock_step_during_a_429_pause_keeps_the_pause_not_the_hour(migrated_db):
    """A pause of about one second, written by the clock an hour ahead: after the step the pause
    still lasts about one second, not an hour, and not the 15-minute cap."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # real time must pass for the database's pause to end
        waits.append(seconds)
        time.sleep(min(seconds, 1.5))

    budget = SharedBudget(migrated_db, "stepped-pause", 10, sleep=sleep)
    budget.acquire()
    waits.clear()
    _set_row(
        migrated_db,
        "stepped-pause",
        "updated_at = clock_timestamp() + interval '1 hour', "
        "blocked_until = clock_timestamp() + interval '1 hour 1 second', "
        "next_at = clock_timestamp() + interval '1 hour 1 second'",
    )
    started = time.monotonic()
    budget.acquire()
    assert 0.5 <= waits[0] <= 1.1 and max(waits) <= 1.1, waits
    assert time.monotonic() - started < 3
    budget.close()


@pytest.mark.postgres
def test_a_429_asking_for_ten_hours_pauses_every_process_for_fifteen_minutes_at_most(migrated_db):
    """The row's pause is capped; the waits around it, recorded by an injected sleep that moves the
    row's times back as the database clock would have moved forward, are each at most 15 minutes."""
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        _set_row(
            migrated_db,
            "ten-hours",
            f"blocked_until = blocked_until - interval '{seconds} seconds', "
            f"next_at = next_at - interval '{seconds} seconds'",
        )

    budget = SharedBudget(migrated_db, "ten-hours", 10, sleep=sleep)
    budget.acquire()
    waits.clear()
    budget.penalize(10 * 3600)
    assert MAX_RETRY_AFTER - 5 <= _row(migrated_db, "ten-hours")["blocked_ahead"] <= MAX_RETRY_AFTER
    budget.acquire()
    assert waits and max(waits) <= MAX_RETRY_AFTER and waits[0] >= MAX_RETRY_AFTER - 5, waits
    assert _row(migrated_db, "ten-hours")["blocked_ahead"] <= 0  # asked again at the pause's end
    budget.close()


def test_a_retry_after_of_ten_hours_is_waited_as_fifteen_minutes():
    """Through the client, the retry engine and the in-process limiter, against the sandbox: every
    recorded wait is at most MAX_RETRY_AFTER (15 min), the longest one is exactly that, and the
    request then succeeds."""
    sandbox = Sandbox(SandboxConfig(stores=1, days=1, end_date=END, orders_per_day=5))
    base, limited = sandbox.transport(), []

    def once_429(request: httpx.Request) -> httpx.Response:
        if "/stores" in request.url.path and not limited:
            limited.append(request)
            return httpx.Response(429, headers={"Retry-After": "36000"})
        return base.handle_request(request)

    waits: list[float] = []
    with TaptouchClient(
        client_id=CLIENT_ID,
        client_secret=SECRET,
        transport=httpx.MockTransport(once_429),
        sleep=waits.append,
        requests_per_second=10,
        retry_budget=3600,
    ) as client:
        stores = list(client.list_stores())
    assert stores and client.stats.rate_limited == 1 and len(limited) == 1
    assert max(waits) == MAX_RETRY_AFTER == 900.0 and all(w <= MAX_RETRY_AFTER for w in waits), waits


def test_a_backoff_never_waits_more_than_max_wait():
    from taptouch_resource.retry import Backoff, ClientStats, Retryable, with_retries

    waits: list[float] = []
    attempts = iter([Retryable("HTTP 503", RuntimeError("x")), Retryable("HTTP 503", RuntimeError("x"))])

    def attempt():
        error = next(attempts, None)
        if error:
            raise error
        return "ok"

    backoff = Backoff(max_retries=5, base=1000.0, cap=10_000.0, budget=10_000.0)
    assert with_retries(attempt, what="t", backoff=backoff, stats=ClientStats(), sleep=waits.append) == "ok"
    assert len(waits) == 2 and max(waits) <= MAX_WAIT


@pytest.mark.postgres
def test_a_thread_waiting_on_the_shared_budget_stops_at_once_when_its_run_stops(migrated_db):
    """A long (but legitimate) queue for the budget: the thread waiting for its slot inside
    ``stop_on(event)`` raises Stopped within a fraction of a second of ``event.set()``."""
    budget = SharedBudget(migrated_db, "stoppable", 10)
    budget.acquire()
    _set_row(migrated_db, "stoppable", "next_at = clock_timestamp() + interval '50 seconds'")
    stop, outcome = threading.Event(), {}

    def fetch():
        with stop_on(stop):
            try:
                budget.acquire()
                outcome["result"] = "acquired"
            except Stopped:
                outcome["result"] = "stopped"

    thread = threading.Thread(target=fetch)
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive()  # waiting for its slot, 50 s ahead
    stopped_at = time.monotonic()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and time.monotonic() - stopped_at < 0.5
    assert outcome == {"result": "stopped"}
    budget.close()


def test_a_thread_in_a_429_wait_stops_at_once_when_its_run_stops():
    """The retry engine's wait for a 429's Retry-After (10 minutes, real clock) and the limiter's
    pause both end when the thread's stop event is set; without a stop event a pause is a sleep."""
    sandbox = Sandbox(SandboxConfig(stores=1, days=1, end_date=END, orders_per_day=5))
    client = TaptouchClient(
        client_id=CLIENT_ID, client_secret=SECRET, transport=sandbox.transport(), requests_per_second=10
    )
    client.auth.get_token()
    sandbox.faults.retry_after, sandbox.faults.rate_limit_every = "600", 1
    stop, outcomes = threading.Event(), []

    def fetch():
        with stop_on(stop):
            try:
                list(client.list_stores())
                outcomes.append("listed")
            except Stopped:
                outcomes.append("stopped")

    threads = [threading.Thread(target=fetch) for _ in range(3)]  # one in the retry wait, two in the pause
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while client.stats.rate_limited == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert client.stats.rate_limited >= 1 and all(t.is_alive() for t in threads)
    stopped_at = time.monotonic()
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert time.monotonic() - stopped_at < 0.5 and outcomes == ["stopped"] * 3
    client.close()


def test_pause_without_a_stop_event_sleeps_and_nested_scopes_all_stop():
    started = time.monotonic()
    pause(0.05)
    assert time.monotonic() - started >= 0.05
    outer, inner = threading.Event(), threading.Event()
    with stop_on(outer), stop_on(inner):
        assert stop_events() == (outer, inner)
        threading.Timer(0.2, outer.set).start()  # the outer scope's event stops an inner wait too
        started = time.monotonic()
        with pytest.raises(Stopped):
            pause(30)
        assert time.monotonic() - started < 1.0
    assert stop_events() == ()
    with stop_on(outer), pytest.raises(Stopped):  # already set: no wait, no request
        RateLimiter(10).acquire()


# ------------------------------------------------------------------------------ the budget's figures


class _FixedWait:
    """A limiter whose every request waits ``seconds`` (really: threads overlap in time)."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def acquire(self) -> float:
        time.sleep(self.seconds)
        return self.seconds

    def penalize(self, seconds: float) -> None:
        pass


def test_the_meter_counts_overlapping_waits_of_several_threads_once():
    meter = RequestMeter(_FixedWait(0.3))
    barrier = threading.Barrier(4)

    def one_request(label: str) -> None:
        barrier.wait()
        with requests_of(label):
            meter.acquire()

    threads = [threading.Thread(target=one_request, args=(label,)) for label in ("a", "a", "a", "b")]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    every = meter.figures()
    assert every["requests"] == 4
    assert every["summed_wait_s"] == pytest.approx(1.2)  # what each waited, added up: 4 x 0.3
    assert 0.29 <= every["wait_s"] <= elapsed < 1.0  # the wall clock: about 0.3, never the 1.2
    a, b = meter.figures("a"), meter.figures("b")
    assert (a["requests"], b["requests"], meter.figures("c")["requests"]) == (3, 1, 0)
    assert a["summed_wait_s"] == pytest.approx(0.9) and 0.29 <= a["wait_s"] <= elapsed
    meter.acquire()  # no label: counted in the total only, and its wait comes after the others
    assert meter.figures()["requests"] == 5 and meter.figures("a")["requests"] == 3
    assert meter.figures()["wait_s"] == pytest.approx(every["wait_s"] + 0.3, abs=0.05)


def test_the_meters_wall_time_is_the_union_of_the_waits():
    clock = [0.0]
    meter = RequestMeter(_Scripted(clock), clock=lambda: clock[0])
    for end, wait in [(1.0, 1.0), (5.0, 1.0), (7.0, 5.0), (7.5, 0.0), (8.0, 0.25)]:
        clock[0] = end
        meter.limiter.next_wait = wait
        meter.acquire()
    # [0, 1] and [4, 5] and [2, 7] and [7.75, 8]: [0, 1] + [2, 7] + [7.75, 8] = 6.25 (summed: 7.25)
    assert meter.figures() == {"requests": 5, "wait_s": 6.25, "summed_wait_s": 7.25}


class _Scripted:
    def __init__(self, clock):
        self.next_wait = 0.0

    def acquire(self) -> float:
        return self.next_wait

    def penalize(self, seconds: float) -> None:
        pass


@pytest.mark.postgres
def test_a_runs_budget_wait_is_wall_time_and_its_requests_are_recorded(migrated_db):
    """Three fetch threads (one per store) at 10 requests/s queue for the budget together, each
    waiting most of the time: the partition's ``budget_wait_s`` is the wall time some request
    waited, at most its duration (the waits summed over the threads, reported before, were about
    three times it); ``taptouch_meta.api_usage`` holds the step, with the store listing's request."""
    import dagster as dg

    from pipelines.definitions import defs
    from pipelines.warehouse.resource import PostgresResource
    from taptouch_resource import TaptouchResource

    sandbox = Sandbox(SandboxConfig(stores=3, days=2, end_date=END, orders_per_day=30))
    with sandbox.serve() as url:
        res = {
            "taptouch": TaptouchResource(
                client_id=CLIENT_ID,
                client_secret=SECRET,
                base_url=url,
                page_size=10,
                requests_per_second=10,
                store_workers=3,
            ),
            "warehouse": PostgresResource(database_url=migrated_db),
        }
        result = dg.materialize(
            [defs.get_assets_def("orders")], resources=res, partition_key=(END - timedelta(days=1)).isoformat()
        )
    assert result.success
    md = {k: v.value for k, v in result.asset_materializations_for_node("orders")[0].metadata.items()}
    assert md["api_requests"] >= 9 and 0.3 < md["budget_wait_s"] <= md["duration_s"]
    with psycopg.connect(migrated_db) as conn:
        rows = conn.execute(
            "select run_id, asset, requests, budget_wait_s,"
            " extract(epoch from ended_at - started_at)::float8 from taptouch_meta.api_usage"
        ).fetchall()
    assert [r[:3] for r in rows] == [(result.run_id, "orders", md["api_requests"] + 1)]
    assert md["budget_wait_s"] <= rows[0][3] <= rows[0][4]


def test_the_in_process_limiter_spaces_a_rate_below_one_request_a_minute():
    """0.01 requests/s: one request every 100 s, though no single wait may pass MAX_WAIT (60 s): a
    request whose slot lies further ahead waits without one and asks again."""
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(0.01, clock=lambda: now[0], sleep=sleep)
    sent = []
    for _ in range(5):
        limiter.acquire()
        sent.append(now[0])
    assert sent == pytest.approx([0, 100, 200, 300, 400])
    assert max(waits) <= MAX_WAIT


@pytest.mark.postgres
def test_a_queue_longer_than_one_wait_stays_spaced(migrated_db, monkeypatch):
    """More requests waiting than one MAX_WAIT holds (a low rate, several threads and processes):
    each still gets its own slot, one interval after the last, never a slot "reset to now" beside
    another. MAX_WAIT is cut to 1 s here so that the queue is long within seconds."""
    from pipelines.warehouse import budget as budget_module
    from taptouch_resource import retry

    monkeypatch.setattr(budget_module, "MAX_WAIT", 1.0)
    monkeypatch.setattr(retry, "MAX_WAIT", 1.0)
    interval = 1.5  # longer than a wait: every request but the first queues past MAX_WAIT
    budgets = [_RecordingBudget(migrated_db, "long-queue", 1 / interval) for _ in range(4)]  # four "processes"
    waits: list[float] = []

    def ask(budget: SharedBudget) -> None:
        waits.append(budget.acquire())

    threads = [threading.Thread(target=ask, args=(budget,)) for budget in budgets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    slots = sorted(s for b in budgets for s in b.slots)
    for b in budgets:
        b.close()
    assert len(slots) == 4
    gaps = [b - a for a, b in zip(slots, slots[1:], strict=False)]
    assert all(gap == pytest.approx(interval, abs=1e-3) for gap in gaps), gaps
    assert max(waits) == pytest.approx(3 * interval, abs=0.5)
    assert _row(migrated_db, "long-queue")["requests"] == 4  # a request that waited without a slot counts once


@pytest.mark.postgres
def test_a_slot_further_than_any_queue_reaches_heals_at_once(migrated_db, caplog):
    """A slot is given only while the queue ends within MAX_WAIT, so a right row's next slot is never
    more than one interval further (outside a 429's pause): a row 75 s ahead at 10 requests/s is
    wrong (a hand edit, a clock that was ahead) and is reset at the next request, not waited out."""

    def sleep(seconds: float) -> None:
        assert seconds < 1.0, f"waited {seconds}s for a wrong row"

    budget = SharedBudget(migrated_db, "wrong-row", 10, sleep=sleep)
    budget.acquire()
    _set_row(migrated_db, "wrong-row", "next_at = clock_timestamp() + interval '75 seconds'")
    with caplog.at_level(logging.WARNING, logger="pipelines.warehouse.budget"):
        assert budget.acquire() < 1.0
    assert "reset to now" in caplog.text
    assert _row(migrated_db, "wrong-row")["next_ahead"] < 1.0
    budget.close()


@pytest.mark.postgres
def test_processes_at_different_rates_share_a_client_ids_queue(migrated_db, caplog):
    """Two processes of one client id at 0.05 and 1 requests/s (an account's own rate): the slow one
    queues slots 20 s apart, 80 s ahead at most; the fast one then waits behind them, and the row is
    no wrong row to reset (its last writer's interval is 20 s, not 1)."""

    slow = SharedBudget(migrated_db, "mixed", 0.05, sleep=lambda s: None)
    for _ in range(4):
        slow.acquire()
    fast = SharedBudget(migrated_db, "mixed", 1.0, sleep=must_wait)
    with caplog.at_level(logging.WARNING, logger="pipelines.warehouse.budget"), pytest.raises(Waited) as waited:
        fast.acquire()
    assert waited.value.args[0] == pytest.approx(20, abs=1)  # until the queue's end is MAX_WAIT away
    assert "reset to now" not in caplog.text
    slow.close(), fast.close()


@pytest.mark.postgres
def test_a_request_that_gets_no_slot_leaves_the_rows_rate_to_its_last_writer(migrated_db):
    """The fast process's request that waits without a slot must not make the row its own (1/s):
    the next fast request would then take the slow process's 80 s queue for a wrong row and reset it
    to now, bunching the slots the slow one holds."""

    slow = SharedBudget(migrated_db, "mixed-again", 0.05, sleep=lambda s: None)
    for _ in range(4):
        slow.acquire()
    queue_end = _row(migrated_db, "mixed-again")["next_ahead"]
    assert queue_end > 60
    fast = SharedBudget(migrated_db, "mixed-again", 1.0, sleep=must_wait)
    for _ in range(2):
        with pytest.raises(Waited) as waited:
            fast.acquire()
        assert waited.value.args[0] == pytest.approx(20, abs=1)
    assert _row(migrated_db, "mixed-again")["next_ahead"] == pytest.approx(queue_end, abs=2)  # not reset
    slow.close(), fast.close()


def test_a_429_seen_while_the_database_blipped_is_still_honoured_when_it_is_back(migrated_db):
    """A 429 arrives while the budget's database is down (the pause is this process's alone); once
    the database answers again, the rest of the pause is written there, so neither this process
    nor another sends inside it (before, the shared row knew no pause and the first request went out
    0.4 s into a 60-s Retry-After; that another process then waits is
    test_a_429_seen_by_one_client_makes_another_wait's)."""
    slept: list[float] = []
    budget = SharedBudget(migrated_db, "blip-client", 10, sleep=slept.append, retry_database_after=0.3)
    try:
        budget.acquire()
        with psycopg.connect(migrated_db, autocommit=True) as admin:  # the budget's connection drops
            admin.execute("select pg_terminate_backend(%s)", (budget._conn.info.backend_pid,))
        budget.acquire()  # falls back to the in-process limiter for 0.3 s
        assert budget.fallbacks == 1
        budget.penalize(60)  # Taptouch: 429, Retry-After: 60
        time.sleep(0.4)  # the database is asked again (it is up)
        waited = budget.acquire()
        assert budget.fallbacks == 1  # the shared budget answered
        assert waited >= 55, f"a request {waited:.2f}s into a 60-s Retry-After pause"
    finally:
        budget.close()
