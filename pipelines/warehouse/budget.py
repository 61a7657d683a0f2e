"""One Taptouch API request budget per client id, shared by every process through the warehouse.

:class:`SharedBudget` is a :class:`taptouch_resource.retry.RequestLimiter` (``TaptouchClient(...,
limiter=budget)``) kept as one GCRA row per client id in ``taptouch_meta.request_budget``, timed by
the database's clock: one statement per request, the wait slept outside any transaction. A 429
pauses every process of the client id; every wait is bounded and stoppable; a wrong row heals
itself; when the database fails, the process limits itself alone. How and why, with the bounds and
the alternatives weighed: docs/operating.md, "Sharing the API budget".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress

import psycopg
import psycopg.errors

from pipelines.warehouse.db import libpq_url
from taptouch_resource.retry import MAX_RETRY_AFTER, MAX_WAIT, RateLimiter, RequestLimiter, check_stop, pause

log = logging.getLogger(__name__)

DEFAULT_BURST = 1
"""Requests that may go back to back after a pause (1: strictly spaced at ``1/rate``)."""
RETRY_DATABASE_AFTER = 30.0
"""Seconds between attempts to reach the database again after it failed (meanwhile: in-process)."""
CONNECT_TIMEOUT = 5
STATEMENT_TIMEOUT_MS = 5000
CLOCK_STEP = 2 * STATEMENT_TIMEOUT_MS / 1000
"""A row last updated further ahead of the database clock than this (seconds) was written before the
clock stepped back (a statement waits at most ``lock_timeout`` for the row, so an ordinary lead is
shorter): its times are moved back by the step."""

# Fragments of the two statements. In ``on conflict do update``, ``b`` is the row as it was and
# ``excluded.updated_at`` this statement's one reading of the clock. A row whose ``updated_at`` lies
# ahead of that reading by more than CLOCK_STEP was written before the database clock stepped back:
# its times are shifted back by the step (``_SKEW``), so a step of an hour costs nobody an hour. (A
# smaller lead is ordinary: a statement reads the clock before it waits for the row's lock, so the
# row may have been updated a little after that reading; shifting then would bunch slots.)
_NOW = "excluded.updated_at"
_SKEW = (
    f"case when b.updated_at > {_NOW} + %(clock_step)s * interval '1 second' then b.updated_at - {_NOW} "
    f"else interval '0' end"
)
_OLD_NEXT = f"(b.next_at - {_SKEW})"
_OLD_BLOCKED = f"(b.blocked_until - {_SKEW})"
_SECONDS = "* interval '1 second'"
_MAX_PAUSE = f"{_NOW} + %(max_pause)s {_SECONDS}"
_PAUSED = f"coalesce({_OLD_BLOCKED}, '-infinity') > {_NOW}"
_AHEAD = f"{_OLD_NEXT} - %(tau)s {_SECONDS}"
_QUEUED = f"{_AHEAD} > {_NOW} + %(max_wait)s {_SECONDS}"  # the queue is longer than one wait: no slot yet
# Longer than any queue can be: a wrong row. A slot is given only while the queue ends within
# max_wait, and a request waiting without one moves nothing, so a right row's next slot lies at most
# one interval (and burst) of its last writer further (the row's rate: processes sharing a client id
# may run at different rates), and a clock's jitter; outside a 429's pause, which comes first.
_FAR = (
    f"{_OLD_NEXT} > {_NOW} + (%(max_wait)s + %(clock_step)s + greatest(%(interval)s + %(tau)s, b.burst / b.rate))"
    f" {_SECONDS}"
)
_ACQUIRE = f"""
with clock as materialized (select clock_timestamp() as now)
insert into taptouch_meta.request_budget as b (client_id, rate, burst, next_at, requests, updated_at, last_slot)
select %(client_id)s, %(rate)s, %(burst)s, now + %(interval)s {_SECONDS}, 1, now, now from clock
on conflict (client_id) do update set
    blocked_until = case when {_OLD_BLOCKED} > {_MAX_PAUSE} then {_MAX_PAUSE} else {_OLD_BLOCKED} end,
    next_at = case when {_PAUSED} then {_OLD_NEXT}
                   when {_FAR} then {_NOW} + %(interval)s {_SECONDS}
                   when {_QUEUED} then {_OLD_NEXT}
                   else greatest({_OLD_NEXT}, {_NOW}) + %(interval)s {_SECONDS} end,
    last_slot = case when {_PAUSED} then null
                     when {_FAR} then {_NOW}
                     when {_QUEUED} then null
                     else greatest({_AHEAD}, {_NOW}) end,
    rate = case when {_PAUSED} or ({_QUEUED} and not {_FAR}) then b.rate else excluded.rate end,
    burst = case when {_PAUSED} or ({_QUEUED} and not {_FAR}) then b.burst else excluded.burst end,
    requests = b.requests + case when {_PAUSED} or ({_QUEUED} and not {_FAR}) then 0 else 1 end,
    updated_at = {_NOW}
returning b.last_slot is null,
          extract(epoch from case when b.blocked_until > b.updated_at then b.blocked_until - b.updated_at
                                  when b.last_slot is null
                                  then least(b.next_at - %(tau)s {_SECONDS} - b.updated_at - %(max_wait)s {_SECONDS},
                                             %(max_wait)s {_SECONDS})
                                  else b.last_slot - b.updated_at end)::float8,
          extract(epoch from b.last_slot)::float8,
          (select extract(epoch from o.updated_at - b.updated_at)::float8
           from taptouch_meta.request_budget o where o.client_id = b.client_id),
          (select extract(epoch from o.next_at - b.updated_at)::float8 - %(tau)s
           from taptouch_meta.request_budget o where o.client_id = b.client_id)
"""
"""One request: (no slot, wait, slot, stepped_back, ahead). No slot during a 429's pause (at most
``max_pause`` from now: ``wait`` is the pause's rest) or while the queue is longer than ``max_wait``
(a low rate, many waiters: ``wait`` until the queue's end is ``max_wait`` away, at most
``max_wait``); the caller asks again after ``wait``. Otherwise the slot is ``wait`` from now, never
more than ``max_wait``. A row whose next slot lies further ahead than any queue reaches
(``max_wait``, one interval and burst of the row's last writer, and :data:`CLOCK_STEP`: a far-future
value, however it got there) is reset to now. Only a request given a slot writes its rate and
burst: one waiting without a slot leaves the row to the writer of its queue. The last two
(seconds the row's clock was ahead, seconds its next slot was ahead) are the row as this
statement's snapshot saw it, for the WARNING only."""

_PENALIZE = f"""
with clock as materialized (select clock_timestamp() as now)
insert into taptouch_meta.request_budget as b
    (client_id, rate, burst, next_at, blocked_until, rate_limited, updated_at)
select %(client_id)s, %(rate)s, %(burst)s, now + (%(seconds)s + %(tau)s) {_SECONDS}, now + %(seconds)s {_SECONDS},
       1, now from clock
on conflict (client_id) do update set
    blocked_until = least(greatest(coalesce({_OLD_BLOCKED}, '-infinity'), excluded.blocked_until), {_MAX_PAUSE}),
    next_at = greatest({_OLD_NEXT}, excluded.next_at),
    rate_limited = b.rate_limited + 1,
    updated_at = {_NOW}
"""


class SharedBudget:
    """``rate`` requests per second for ``client_id``, shared by every process using the database at
    ``database_url``. Thread-safe (one connection per process, used for one statement at a time).

    ``waited_seconds``: every request's wait here, added up over this process's threads (the wall
    clock a run waited: :class:`RequestMeter`); ``fallbacks``: how often the database
    failed and the in-process limiter took over. Prefer :meth:`for_client`, which shares one
    instance (and one connection) per process.
    """

    def __init__(
        self,
        database_url: str,
        client_id: str,
        rate_per_second: float,
        burst: int = DEFAULT_BURST,
        *,
        sleep: Callable[[float], None] = time.sleep,
        retry_database_after: float = RETRY_DATABASE_AFTER,
    ):
        if not rate_per_second or rate_per_second <= 0:
            raise ValueError(
                "SharedBudget needs a positive rate; use SharedBudget.for_client, which turns a "
                "rate of 0 or None into no limit."
            )
        if int(burst) < 1:
            raise ValueError(f"burst must be at least 1, got {burst}.")
        self._url = database_url
        self.client_id = client_id
        self.rate = float(rate_per_second)
        self.burst = int(burst)
        self._interval = 1.0 / self.rate
        self._tau = (self.burst - 1) * self._interval
        self._sleep = sleep
        self._retry_after = retry_database_after
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._pid = os.getpid()
        self._down_until = 0.0  # monotonic: use the fallback until then
        self._fallback = RateLimiter(self.rate, sleep=sleep)
        self._unshared_until = 0.0  # monotonic: the end of a 429's pause the database missed (it was down)
        self.waited_seconds = 0.0
        self.fallbacks = 0
        self.last_slot: float | None = None
        """The database's time (epoch seconds) of the last slot given to this process: the grant the
        bound is about, before this host's scheduler and network add their delay."""

    def __repr__(self) -> str:  # no URL (it may hold a password)
        return f"SharedBudget(client_id={self.client_id!r}, rate={self.rate}, burst={self.burst})"

    # ------------------------------------------------------------------ one per process
    _instances: dict[tuple, SharedBudget] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def for_client(
        cls, database_url: str, client_id: str, rate_per_second: float | None, burst: int = DEFAULT_BURST
    ) -> RequestLimiter:
        """The budget of ``client_id`` in the warehouse at ``database_url``, one instance per process
        (so all clients and threads of a process share its connection). ``rate_per_second`` None or
        <= 0 (``TAPTOUCH_REQUESTS_PER_SECOND=0``): no limit, an in-process limiter that never waits."""
        if not rate_per_second or rate_per_second <= 0:
            return RateLimiter(None)
        key = (os.getpid(), database_url, client_id, float(rate_per_second), int(burst))
        with cls._instances_lock:
            budget = cls._instances.get(key)
            if budget is None:
                budget = cls._instances[key] = cls(database_url, client_id, rate_per_second, burst)
            return budget

    # ------------------------------------------------------------------ RequestLimiter
    def acquire(self) -> float:
        """Wait for this request's slot in the shared budget; return the seconds waited. During a
        429's pause it waits for the pause's end (holding no slot) and asks again, and while the queue
        is longer than :data:`~taptouch_resource.retry.MAX_WAIT` (a low rate, many waiters) it waits
        without a slot until the queue's end is that near, so no single wait is longer than the
        larger of :data:`~taptouch_resource.retry.MAX_WAIT` and the pause. Every
        wait is a :func:`~taptouch_resource.retry.pause`: a stopping thread raises ``Stopped``."""
        waited = 0.0
        while True:
            check_stop()
            if self._unshared_until:
                self._share_pause()
            row = self._run(_ACQUIRE, {})
            if row is None:  # the database failed: this process limits itself
                wait = self._fallback.acquire()
                paused = False
            else:
                paused, wait, slot, stepped_back, ahead = row
                wait = min(max(0.0, float(wait)), MAX_RETRY_AFTER if paused else MAX_WAIT)
                self._report_heal(stepped_back, ahead, paused)
                if not paused:
                    self.last_slot = float(slot)
                with self._lock:
                    self.waited_seconds += wait
                pause(wait, self._sleep)
            waited += wait
            if not paused:
                return waited

    def _report_heal(self, stepped_back: float | None, ahead: float | None, paused: bool) -> None:
        if stepped_back is not None and stepped_back > CLOCK_STEP:
            log.warning(
                "shared API budget for client %s: the database clock stepped back %.0fs since the budget "
                "was last used; its slots and pause were moved back with it",
                self.client_id,
                stepped_back,
            )
        elif not paused and ahead is not None and ahead > MAX_WAIT:
            log.warning(
                "shared API budget for client %s: the next slot was %.0fs ahead, more than any queue makes "
                "it (the row was edited, or written by a clock that was ahead); reset to now",
                self.client_id,
                ahead,
            )

    def penalize(self, seconds: float) -> None:
        """A 429 asked for ``seconds`` of quiet: no process sharing the budget gets a slot before then."""
        if seconds <= 0:
            return
        seconds = min(float(seconds), MAX_RETRY_AFTER)
        self._fallback.penalize(seconds)  # this process at least, even if the database fails
        if self._run(_PENALIZE, {"seconds": float(seconds)}, fetch=False) is None:
            # shared once the database answers again (:meth:`_share_pause`): the fallback's own pause
            # ends with the fallback, and every process would otherwise send inside it
            with self._lock:
                self._unshared_until = max(self._unshared_until, time.monotonic() + seconds)
        log.info("Taptouch answered 429: every process using client %s waits %.2fs", self.client_id, seconds)

    def _share_pause(self) -> None:
        """The rest of a 429's pause that :meth:`penalize` could not write (the database was down),
        written now if the database answers."""
        with self._lock:
            until = self._unshared_until
        left = until - time.monotonic()
        if left <= 0 or self._run(_PENALIZE, {"seconds": left}, fetch=False) is not None:
            with self._lock:  # unless another thread's 429 was kept meanwhile
                if self._unshared_until == until:
                    self._unshared_until = 0.0

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ the database
    def _run(self, query: str, params: dict, *, fetch: bool = True) -> tuple | None:
        """Run one statement; None (after a WARNING) when the database fails or is still considered down
        (or, ``fetch``, returns no row: the statements here always return one)."""
        params = {
            "client_id": self.client_id,
            "rate": self.rate,
            "burst": self.burst,
            "interval": self._interval,
            "tau": self._tau,
            "max_wait": MAX_WAIT,
            "max_pause": MAX_RETRY_AFTER,
            "clock_step": CLOCK_STEP,
            **params,
        }
        with self._lock:
            if time.monotonic() < self._down_until:
                return None
            try:
                conn = self._connection()
                cursor = conn.execute(query, params)
                row = cursor.fetchone() if fetch else ()
            except psycopg.Error as exc:
                self._failed(exc)
                return None
            if self.fallbacks and self._down_until:
                log.warning(
                    "shared API budget for client %s: the database answers again; back to the shared budget",
                    self.client_id,
                )
                self._down_until = 0.0
            return None if row is None else tuple(row)

    def _connection(self) -> psycopg.Connection:
        if self._pid != os.getpid():  # forked: the parent's connection is not ours to use or close
            self._conn, self._pid = None, os.getpid()
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                libpq_url(self._url),
                autocommit=True,
                connect_timeout=CONNECT_TIMEOUT,
                application_name="taptouch-sync budget",
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS}",
            )
        return self._conn

    def _failed(self, exc: psycopg.Error) -> None:
        self.fallbacks += 1
        self._down_until = time.monotonic() + self._retry_after
        if self._conn is not None:
            with suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = (
            " Apply the migrations (taptouch-sync migrate)." if isinstance(exc, psycopg.errors.UndefinedTable) else ""
        )
        log.warning(
            "shared API budget for client %s unavailable (%s: %s).%s Falling back to this process's own limit of "
            "%g requests/s for %.0fs; meanwhile processes together may exceed the budget.",
            self.client_id,
            type(exc).__name__,
            detail,
            hint,
            self.rate,
            self._retry_after,
        )


# ------------------------------------------------------------------------------------------------
# what a run's requests cost: counted and timed where they wait, and recorded per run

_label = threading.local()
KEEP_WAITS_S = 2 * 3600.0
"""Waits that ended longer ago than this are only a sum: no wait of one request lasts that long
(each is at most a 429's 15-minute pause plus a 60-s queue, repeated only while new 429s come)."""


class _WallWait:
    """The wall-clock time covered by a set of waits (overlapping waits of several threads count
    once), with how many requests waited and their waits summed."""

    def __init__(self) -> None:
        self.requests = 0
        self.summed_s = 0.0
        self._closed_s = 0.0  # length of the waits too old to overlap a new one
        self._recent: list[list[float]] = []  # disjoint [start, end], sorted

    def add(self, start: float, end: float) -> None:
        self.requests += 1
        self.summed_s += end - start
        if end <= start:
            return
        # every wait ends "now": only the tail of the sorted list can overlap it
        while self._recent and self._recent[-1][1] >= start:
            start = min(start, self._recent.pop()[0])
        self._recent.append([start, end])
        while self._recent and self._recent[0][1] < end - KEEP_WAITS_S:
            old = self._recent.pop(0)
            self._closed_s += old[1] - old[0]

    @property
    def wall_s(self) -> float:
        return self._closed_s + sum(e - s for s, e in self._recent)


class RequestMeter:
    """A :class:`~taptouch_resource.retry.RequestLimiter` in front of another (the shared budget):
    it counts the requests that pass and measures the **wall-clock** time they spent waiting there,
    in total and per label (:func:`requests_of`: the orders window a fetch thread works for). Waits
    of several threads at the same moment count once, so ``wait_s`` never exceeds the time the run
    took; ``summed_wait_s`` is the sum over requests (what each request waited, added up)."""

    def __init__(self, limiter: RequestLimiter, clock: Callable[[], float] = time.monotonic):
        self.limiter = limiter
        self._clock = clock
        self._lock = threading.Lock()
        self._all = _WallWait()
        self._by_label: dict[str, _WallWait] = {}

    def acquire(self) -> float:
        waited = self.limiter.acquire()
        label = getattr(_label, "name", None)
        with self._lock:  # the clock read under the lock: the waits arrive in the order they end
            end = self._clock()
            self._all.add(end - waited, end)
            if label is not None:
                self._by_label.setdefault(label, _WallWait()).add(end - waited, end)
        return waited

    def penalize(self, seconds: float) -> None:
        self.limiter.penalize(seconds)

    def figures(self, label: str | None = None) -> dict[str, float]:
        """``requests``, ``wait_s`` (wall clock) and ``summed_wait_s`` of every request, or of the
        requests made under ``label``."""
        with self._lock:
            meter = self._all if label is None else self._by_label.get(label, _WallWait())
            return {"requests": meter.requests, "wait_s": meter.wall_s, "summed_wait_s": meter.summed_s}


@contextmanager
def requests_of(name: str) -> Iterator[None]:
    """``with requests_of("2026-12-02"):`` the requests this thread makes are counted under that
    label by every :class:`RequestMeter` they pass (threads do not inherit it)."""
    before = getattr(_label, "name", None)
    _label.name = name
    try:
        yield
    finally:
        _label.name = before


_RECORD_USAGE = """
insert into taptouch_meta.api_usage (run_id, asset, account, client_id, started_at, requests, retries,
                                     rate_limited, token_requests, budget_wait_s)
values (%s, %s, %s, %s, now() - %s * interval '1 second', %s, %s, %s, %s, %s)
"""


def record_usage(
    conn: psycopg.Connection,
    *,
    run_id: str | None,
    asset: str,
    account: str,
    client_id: str,
    seconds: float,
    api: Mapping[str, float],
    wait_s: float,
) -> bool:
    """One row of ``taptouch_meta.api_usage`` for a run's step: what its client asked of the API
    (``api``: the client's counters over the step) and how long it waited for the budget. A
    database error costs only the row (a WARNING), never the run. Returns whether it was written."""
    try:
        conn.execute(
            _RECORD_USAGE,
            (
                run_id,
                asset,
                account,
                client_id,
                seconds,
                int(api["requests"]),
                int(api["retries"]),
                int(api["rate_limited"]),
                int(api["token_requests"]),
                round(wait_s, 3),
            ),
        )
    except psycopg.Error as exc:
        log.warning(
            "API usage of %s (run %s) not recorded in taptouch_meta.api_usage: %s",
            asset,
            run_id,
            (str(exc).strip().splitlines() or [type(exc).__name__])[0],
        )
        return False
    return True
