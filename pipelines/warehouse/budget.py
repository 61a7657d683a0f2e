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
from typing import Callable

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
_SKEW = (f"case when b.updated_at > {_NOW} + %(clock_step)s * interval '1 second' then b.updated_at - {_NOW} "
         f"else interval '0' end")
_OLD_NEXT = f"(b.next_at - {_SKEW})"
_OLD_BLOCKED = f"(b.blocked_until - {_SKEW})"
_SECONDS = "* interval '1 second'"
_MAX_PAUSE = f"{_NOW} + %(max_pause)s {_SECONDS}"
_PAUSED = f"coalesce({_OLD_BLOCKED}, '-infinity') > {_NOW}"

_ACQUIRE = f"""
with clock as materialized (select clock_timestamp() as now)
insert into taptouch_meta.request_budget as b (client_id, rate, burst, next_at, requests, updated_at)
select %(client_id)s, %(rate)s, %(burst)s, now + %(interval)s {_SECONDS}, 1, now from clock
on conflict (client_id) do update set
    blocked_until = case when {_OLD_BLOCKED} > {_MAX_PAUSE} then {_MAX_PAUSE} else {_OLD_BLOCKED} end,
    next_at = case when {_PAUSED} then {_OLD_NEXT}
                   when {_OLD_NEXT} - %(tau)s {_SECONDS} > {_NOW} + %(max_wait)s {_SECONDS}
                   then {_NOW} + %(interval)s {_SECONDS}
                   else greatest({_OLD_NEXT}, {_NOW}) + %(interval)s {_SECONDS} end,
    rate = excluded.rate,
    burst = excluded.burst,
    requests = b.requests + case when {_PAUSED} then 0 else 1 end,
    updated_at = {_NOW}
returning coalesce(b.blocked_until > b.updated_at, false),
          extract(epoch from case when b.blocked_until > b.updated_at then b.blocked_until
                                  else greatest(b.next_at - (%(interval)s + %(tau)s) {_SECONDS}, b.updated_at) end
                             - b.updated_at)::float8,
          extract(epoch from greatest(b.next_at - (%(interval)s + %(tau)s) {_SECONDS}, b.updated_at))::float8,
          (select extract(epoch from o.updated_at - b.updated_at)::float8
           from taptouch_meta.request_budget o where o.client_id = b.client_id),
          (select extract(epoch from o.next_at - b.updated_at)::float8 - %(tau)s
           from taptouch_meta.request_budget o where o.client_id = b.client_id)
"""
"""One request: (paused, wait, slot, stepped_back, ahead). Paused (a 429's pause, at most
``max_pause`` from now): no slot is given, ``wait`` is the pause's rest, and the caller asks again
at its end. Otherwise the slot is ``wait`` from now, never more than ``max_wait``: a row whose next
slot lies further ahead (a far-future value, however it got there) is reset to now. The last two
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

    ``waited_seconds``: total wait spent here by this process; ``fallbacks``: how often the database
    failed and the in-process limiter took over. Prefer :meth:`for_client`, which shares one
    instance (and one connection) per process.
    """

    def __init__(self, database_url: str, client_id: str, rate_per_second: float, burst: int = DEFAULT_BURST, *,
                 sleep: Callable[[float], None] = time.sleep, retry_database_after: float = RETRY_DATABASE_AFTER):
        if not rate_per_second or rate_per_second <= 0:
            raise ValueError("SharedBudget needs a positive rate; use SharedBudget.for_client, which turns a "
                             "rate of 0 or None into no limit.")
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
        self.waited_seconds = 0.0
        self.fallbacks = 0
        self.last_slot: float | None = None
        """The database's time (epoch seconds) of the last slot given to this process: the grant the
        bound is about, before this host's scheduler and network add their delay."""

    def __repr__(self) -> str:  # no URL (it may hold a password)
        return f"SharedBudget(client_id={self.client_id!r}, rate={self.rate}, burst={self.burst})"

    # ------------------------------------------------------------------ one per process
    _instances: dict[tuple, "SharedBudget"] = {}
    _instances_lock = threading.Lock()

    @classmethod
    def for_client(cls, database_url: str, client_id: str, rate_per_second: float | None,
                   burst: int = DEFAULT_BURST) -> RequestLimiter:
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
        429's pause it waits for the pause's end (holding no slot) and asks again, so no single wait
        is longer than the larger of :data:`~taptouch_resource.retry.MAX_WAIT` and the pause. Every
        wait is a :func:`~taptouch_resource.retry.pause`: a stopping thread raises ``Stopped``."""
        waited = 0.0
        while True:
            check_stop()
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
            log.warning("shared API budget for client %s: the database clock stepped back %.0fs since the budget "
                        "was last used; its slots and pause were moved back with it", self.client_id, stepped_back)
        elif not paused and ahead is not None and ahead > MAX_WAIT:
            log.warning("shared API budget for client %s: the next slot was %.0fs ahead, more than the %.0fs any "
                        "queue takes (the row was edited, or written by a clock that was ahead); reset to now",
                        self.client_id, ahead, MAX_WAIT)

    def penalize(self, seconds: float) -> None:
        """A 429 asked for ``seconds`` of quiet: no process sharing the budget gets a slot before then."""
        if seconds <= 0:
            return
        seconds = min(float(seconds), MAX_RETRY_AFTER)
        self._fallback.penalize(seconds)  # this process at least, even if the database fails
        self._run(_PENALIZE, {"seconds": float(seconds)}, fetch=False)
        log.info("Taptouch answered 429: every process using client %s waits %.2fs", self.client_id, seconds)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------------ the database
    def _run(self, query: str, params: dict, *, fetch: bool = True) -> tuple | None:
        """Run one statement; None (after a WARNING) when the database fails or is still considered down."""
        params = {"client_id": self.client_id, "rate": self.rate, "burst": self.burst, "interval": self._interval,
                  "tau": self._tau, "max_wait": MAX_WAIT, "max_pause": MAX_RETRY_AFTER, "clock_step": CLOCK_STEP,
                  **params}
        with self._lock:
            if time.monotonic() < self._down_until:
                return None
            try:
                conn = self._connection()
                row = conn.execute(query, params).fetchone() if fetch else conn.execute(query, params)
            except psycopg.Error as exc:
                self._failed(exc)
                return None
            if self.fallbacks and self._down_until:
                log.warning("shared API budget for client %s: the database answers again; back to the shared "
                            "budget", self.client_id)
                self._down_until = 0.0
            return tuple(row) if fetch else ()

    def _connection(self) -> psycopg.Connection:
        if self._pid != os.getpid():  # forked: the parent's connection is not ours to use or close
            self._conn, self._pid = None, os.getpid()
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                libpq_url(self._url), autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                application_name="taptouch-sync budget",
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={STATEMENT_TIMEOUT_MS}")
        return self._conn

    def _failed(self, exc: psycopg.Error) -> None:
        self.fallbacks += 1
        self._down_until = time.monotonic() + self._retry_after
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = (" Apply the migrations (taptouch-sync migrate)." if isinstance(exc, psycopg.errors.UndefinedTable)
                else "")
        log.warning(
            "shared API budget for client %s unavailable (%s: %s).%s Falling back to this process's own limit of "
            "%g requests/s for %.0fs; meanwhile processes together may exceed the budget.",
            self.client_id, type(exc).__name__, detail, hint, self.rate, self._retry_after)
