"""The one retry engine (:func:`with_retries`, for the token endpoint and the API), ``Retry-After``
parsing, the request-rate limiter protocol and its in-process implementation, counters, and
:func:`pause`, the package's one way to wait (bounded, and cut short by :func:`stop_on`).
What is retried, and how every wait is bounded and stopped: docs/client.md, "Retries and waits".
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from email.utils import parsedate_to_datetime
from typing import Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
log = logging.getLogger(__name__)

# 429 with ``Retry-After: 0`` means "now", but a client that retries at once spins; wait this much.
MIN_RETRY_AFTER = 0.25
# A server asking for more than this is treated as "wait this long", so a bad header cannot park a run.
MAX_RETRY_AFTER = 900.0
# No wait that is not a server-imposed pause (a back-off, a queue for the request budget) is longer.
MAX_WAIT = 60.0
# 408 and the 52x of CDN proxies (origin unreachable or timing out) are as curable as a 503.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524})
# A 429 without a usable Retry-After waits at least this long (the backoff's first steps are shorter).
MIN_429_WAIT = 1.0
# 429s with a Retry-After waited out for one request (besides max_retries), within the time budget.
MAX_RATE_LIMITED_RETRIES = 30


class Stopped(Exception):
    """A wait ended early because the calling thread's stop event was set (its run is stopping)."""


_stops = threading.local()  # .events: the stop events of the calling thread, innermost last


@contextmanager
def stop_on(event: threading.Event) -> Iterator[threading.Event]:
    """Within the block, every :func:`pause` of the calling thread (so every wait of a client or a
    limiter it calls: budget, rate limit, retry back-off, 429) raises :class:`Stopped` as soon as
    ``event`` is set, and at once if it already is. Nests; scoped to this thread (a thread started
    inside the block needs its own ``stop_on``)."""
    events = getattr(_stops, "events", None)
    if events is None:
        events = _stops.events = []
    events.append(event)
    try:
        yield event
    finally:
        events.remove(event)


def stop_events() -> tuple[threading.Event, ...]:
    """The stop events that end the calling thread's waits (see :func:`stop_on`)."""
    return tuple(getattr(_stops, "events", ()))


def check_stop() -> None:
    """Raise :class:`Stopped` if a stop event of the calling thread is set."""
    if any(e.is_set() for e in stop_events()):
        raise Stopped("the run is stopping; the wait was cut short")


_POLL = 0.1  # with two or more stop events in scope, how often a pause looks at the outer ones


def pause(seconds: float, sleep: Callable[[float], None] | None = None) -> None:
    """The package's one way to wait: ``seconds`` (at most :data:`MAX_RETRY_AFTER`), ended early by
    the calling thread's stop events (:func:`stop_on`), raising :class:`Stopped`.

    ``sleep``: a test's injected clock, called with the seconds (then the stop events are looked at);
    ``None`` or ``time.sleep`` is the real clock, where the wait is a wait on the stop event, so a set
    event wakes it at once."""
    check_stop()
    seconds = min(max(float(seconds), 0.0), MAX_RETRY_AFTER) if seconds == seconds else 0.0
    if sleep is not None and sleep is not time.sleep:
        sleep(seconds)
        check_stop()
        return
    if seconds <= 0:
        return
    events = stop_events()
    if not events:
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if events[-1].wait(left if len(events) == 1 else min(left, _POLL)):
            break
        check_stop()
    check_stop()


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date. None if absent/invalid."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, MIN_RETRY_AFTER), MAX_RETRY_AFTER)


@dataclass
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog), capped, with a total budget."""

    max_retries: int = 5
    base: float = 0.5
    cap: float = 30.0
    budget: float = 600.0  # seconds of waiting allowed for one request, all retries together
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        """Wait before retry number ``attempt`` (1-based)."""
        return self.rng.uniform(0, min(self.cap, self.base * (2 ** (attempt - 1))))


class Retryable(Exception):
    """Raised by one attempt to ask :func:`with_retries` for another. ``failure`` is raised when no
    retry is left; ``wait`` is what the server asked for (``Retry-After``), else the backoff decides;
    ``rate_limited`` marks a 429 (its backoff wait is at least :data:`MIN_429_WAIT`)."""

    def __init__(self, reason: str, failure: Exception, *, wait: float | None = None, rate_limited: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.failure = failure
        self.wait = wait
        self.rate_limited = rate_limited


def with_retries(
    attempt: Callable[[], T],
    *,
    what: str,
    backoff: Backoff,
    stats: ClientStats,
    sleep: Callable[[float], None] | None = time.sleep,
) -> T:
    """``attempt()`` until it returns; on :class:`Retryable`, wait and try again within the budget.
    Each wait is a :func:`pause` (a server's ``Retry-After`` at most :data:`MAX_RETRY_AFTER`, a
    back-off at most :data:`MAX_WAIT`), so a stopping thread's retry raises :class:`Stopped`."""
    tries = limited = 0  # failures, and 429s the server said when to retry (Retry-After)
    waited = 0.0
    while True:
        check_stop()
        try:
            return attempt()
        except Retryable as retry:
            wait = retry.wait
            # a 429 with Retry-After is the server pacing the client, not a failure: a burst of them
            # is waited out within the time budget (and at most MAX_RATE_LIMITED_RETRIES of them), so
            # that "Retry-After: 0" answered a few times in a row does not spend the retries in a second
            # (max_retries=0: no retry at all)
            paced = (
                retry.rate_limited
                and wait is not None
                and backoff.max_retries > 0
                and limited < MAX_RATE_LIMITED_RETRIES
            )
            if paced:
                limited += 1
            else:
                tries += 1
            if wait is None:
                wait = min(backoff.delay(tries), MAX_WAIT)
                if retry.rate_limited:
                    wait = max(wait, MIN_429_WAIT)
            wait = min(max(wait, 0.0), MAX_RETRY_AFTER)
            if tries > backoff.max_retries or waited + wait > backoff.budget:
                raise retry.failure from None
            waited += wait
            stats.add(retries=1)
            log.info("%s: %s; retry %d/%d in %.2fs", what, retry.reason, tries + limited, backoff.max_retries, wait)
            pause(wait, sleep)


@runtime_checkable
class RequestLimiter(Protocol):
    """What :class:`~taptouch_resource.client.TaptouchClient` asks before every API request.

    Two implementations: :class:`RateLimiter` (this process only, the default) and
    ``pipelines.warehouse.budget.SharedBudget`` (one budget per client id across every process,
    coordinated through the warehouse PostgreSQL). Both are safe to share between threads.
    """

    def acquire(self) -> float:
        """Block until the next request may be sent; return the seconds spent waiting."""
        ...

    def penalize(self, seconds: float) -> None:
        """The server answered 429 asking for ``seconds`` of quiet: nobody sharing this limiter
        sends a request before then."""
        ...


class RateLimiter:
    """At most ``rate`` requests per second across every thread using it (a spaced schedule).

    Each caller reserves the next free slot under a lock, then sleeps outside it, so threads queue
    fairly and the lock is never held while waiting. A 429 (:meth:`penalize`, at most
    :data:`MAX_RETRY_AFTER`) pauses every thread of the process, not only the one that got it: while
    it lasts nobody reserves a slot, each caller waits for its end and then queues as usual, so no
    single wait is longer than the larger of the pause and :data:`MAX_WAIT`. A queue longer than
    :data:`MAX_WAIT` (a low rate, many threads) is joined in waits of at most that: a caller whose
    slot would lie further ahead waits without one and asks again. Every wait is a
    :func:`pause` (a stopping thread's wait raises :class:`Stopped`). ``rate`` None or <= 0: off (no
    waiting, and 429s are left to the retry engine). ``waited_seconds`` is the total wait spent here.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = time.sleep,
    ):
        self.interval = 0.0 if not rate or rate <= 0 else 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0
        self._blocked_until = 0.0
        self.waited_seconds = 0.0

    def acquire(self) -> float:
        if not self.interval:
            return 0.0
        check_stop()
        waited, now = 0.0, self._clock()
        while True:
            with self._lock:
                now = max(self._clock(), now)  # (a test's clock may not move while it "sleeps")
                blocked = min(self._blocked_until - now, MAX_RETRY_AFTER)
                queue = self._next - now
                if blocked > 0:  # paused: wait for the pause's end holding no slot, then queue
                    wait = blocked
                elif queue > MAX_WAIT:  # a longer queue (a low rate, many threads): no slot yet
                    wait = min(queue - MAX_WAIT, MAX_WAIT)
                else:  # reserve the next slot
                    slot = max(now, self._next)
                    self._next = slot + self.interval
                    wait = slot - now
                self.waited_seconds += wait
            waited += wait
            if wait > 0:
                pause(wait, self._sleep)
            if blocked <= 0 and queue <= MAX_WAIT:
                return waited
            now += wait

    def penalize(self, seconds: float) -> None:
        if not self.interval or seconds <= 0:
            return
        with self._lock:
            until = self._clock() + min(seconds, MAX_RETRY_AFTER)
            self._blocked_until = max(self._blocked_until, until)
            self._next = max(self._next, until)


@dataclass
class ClientStats:
    """Counters for one client (thread-safe increments). Shown in logs and asset metadata."""

    requests: int = 0
    pages: int = 0
    records: int = 0
    retries: int = 0
    rate_limited: int = 0
    server_errors: int = 0
    network_errors: int = 0
    token_requests: int = 0
    unauthorized: int = 0
    waited_seconds: float = 0.0  # spent waiting for the request-rate limiter (in-process or shared budget)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
