"""The world of the model-based test (tests/pipeline/test_state_model.py).

A :class:`World` is one history's sandbox on a fake clock, the real client over the in-process
transport, one warehouse connection, and the bookkeeping the invariants need:

- **The fake clock** (``World.now``, whole Unix seconds) is the instant records are stamped with.
  The sandbox's ``clock`` reads it; the API's own clock (``status.timestamp``) is that plus
  ``faults.clock_skew``. Nothing sleeps: the client's ``sleep`` is a no-op.
- **Orders are born as the clock passes them.** The sandbox's orders whose ``updated_at`` lies
  after the start instant are hidden (``delete_order``) until the clock reaches it; ``new_order``
  publishes one early, created and stamped now. Orders the history deletes are tracked apart
  from unborn ones.
- **Every orders page served** reaches :meth:`World._on_page` (``Sandbox.on_page``): it is logged
  with the step's phase (which run, which window), and it is where edits and deletions *during a
  listing* and kills mid-run happen.

The invariants (:meth:`World.check_invariants`), after every step:

1. nothing moves backwards: no warehouse order's ``updated_at`` decreases, no order row vanishes;
2. no order that a listing returned to a run that succeeded for its store is marked deleted
   (unless the source deleted it after that listing);
3. no high-water mark (``taptouch.sync_marks.high_water``) that moved in a step passes the
   start of its listing on the API's clock (the ``status.timestamp`` of the store's first page),
   nor real time at that start (the fake clock: this machine's clock, the client's ``clock``, is
   the real one; the API's runs up to hours ahead or minutes behind under the ``skew`` fault);
4. no mark passes a record the warehouse lacks;
5.-7. the listing proofs (:meth:`World._check_proofs`): a window proven complete stays so; a
   proof holds every order the source served over what it covers; ``orders_proven`` finds no
   disagreement over an order the source never deleted.

:meth:`World.final_check` switches every fault off, lets the clock pass every instant at the
source, runs a full reload and two reconciliations ``TAPTOUCH_RECONCILE_CONFIRM_S`` apart (fake
clock), and compares the warehouse with the sandbox exactly (:func:`compare_exact`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from pipelines import settings, sync
from pipelines.reconcile import reconcile_orders
from pipelines.sync import (
    FULL_REFRESH,
    WINDOWS_IN_FLIGHT,
    OrderWindow,
    WindowCancelled,
    sync_orders_windows,
    sync_stores,
)
from pipelines.warehouse import deletions
from pipelines.warehouse import proofs as proof_checks
from pipelines.warehouse.loader import OrderWindowLoad
from taptouch_resource import TaptouchClient
from taptouch_sandbox import OrdersPage, Sandbox, SandboxConfig
from tests.support.windows import load_window, warehouse_run

from . import truth

DAY = 86_400
STORES = 2
DAYS = 3
ORDERS_PER_DAY = 12
PAGE_SIZE = 5
BATCH_SIZES = (3, 7, 5000)  # orders per COPY batch (World.batch_size)
RECONCILE_DAYS = 2  # the reconciliations within a history: orders age out of their window
MAX_DELETED_PER_STORE = 2  # deletions at the source a store holds at once (below the unusual-share guard)
CONFIRM_ENV = "TAPTOUCH_RECONCILE_CONFIRM_S"
RANGED = "ranged"  # the phase of a ranged run's pages (World.ranged): "ranged:<window key>"


class Killed(BaseException):
    """A run stopped part way, as a terminated worker's run does (not an ``Exception``: no retry
    layer may swallow it)."""


_INTERRUPT_ARMED = [False]  # World.ranged's interrupt: raise once, in the thread the signal reaches


def _interrupted(signum, frame) -> None:
    """SIGUSR1's handler while the model runs (World.ranged installs it): run termination, raised in
    the main thread as Dagster raises it; does nothing unless armed (a signal arriving late)."""
    if _INTERRUPT_ARMED[0]:
        _INTERRUPT_ARMED[0] = False
        raise Killed("the run was terminated")


class Violation(AssertionError):
    """An invariant broke."""


# How much later than the run's cancel a window may be seen to begin its merge: it checks the
# cancel, then calls finish(), and another thread may run between the two.
MERGE_START_SLACK_S = 0.1


@dataclass
class _MergeClock:
    """When a ranged run's cancel was first set, and when each window's merge began (monotonic)."""

    cancelled_at: float | None = None
    merging_at: dict[str, float] = field(default_factory=dict)


@contextmanager
def _merge_clock() -> Iterator[_MergeClock]:
    """Time a ranged run's cancel and its windows' merges (sync._WindowsInFlight, OrderWindowLoad.finish)."""
    clock = _MergeClock()

    class TimedCancel(threading.Event):
        def set(self) -> None:
            if clock.cancelled_at is None:
                clock.cancelled_at = time.monotonic()
            super().set()

    real_init, real_finish = sync._WindowsInFlight.__init__, OrderWindowLoad.finish

    def init(self, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        self.cancel = self.places.cancel = TimedCancel()

    def finish(self: OrderWindowLoad) -> Any:
        clock.merging_at.setdefault(self.window, time.monotonic())
        return real_finish(self)

    sync._WindowsInFlight.__init__, OrderWindowLoad.finish = init, finish  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        sync._WindowsInFlight.__init__, OrderWindowLoad.finish = real_init, real_finish  # type: ignore[method-assign]


def confirm_s() -> int:
    """``TAPTOUCH_RECONCILE_CONFIRM_S`` as the code reads it (pipelines.settings), default 3600."""
    read = getattr(settings, "reconcile_confirm_s", None)
    if read is not None:
        return int(read())
    raw = os.environ.get(CONFIRM_ENV, "").strip()
    return int(raw) if raw else 3600


def instant(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def epoch_of(iso: str) -> int:
    return math.ceil(datetime.fromisoformat(iso).timestamp())


def exact_epoch(iso: str) -> Decimal:
    """An instant as exact epoch seconds (as ``taptouch.exact_epoch`` stores a version)."""
    delta = datetime.fromisoformat(iso) - datetime(1970, 1, 1, tzinfo=UTC)
    return Decimal(delta.days * DAY + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)


def day_start(epoch: float) -> datetime:
    d = instant(epoch).date()
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def reset_warehouse(conn: psycopg.Connection) -> None:
    """Empty every table of schema ``taptouch`` (the cheapest fresh warehouse between histories:
    migrations and views stay)."""
    tables = [
        r[0]
        for r in conn.execute(
            "select format('%I.%I', schemaname, tablename) from pg_tables where schemaname = 'taptouch'"
        )
    ]
    if tables:
        conn.execute("truncate " + ", ".join(tables))


@dataclass
class Tally:
    """What a history did (the long mode's report)."""

    steps: int = 0
    runs: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)  # faults switched on, by kind
    pages_faulted: dict[str, int] = field(default_factory=dict)  # pages a fault shaped, by kind
    kills: int = 0
    edits: int = 0
    edits_during_listing: int = 0
    deletions: int = 0
    restores: int = 0
    births: int = 0
    overlaps: int = 0
    lost: int = 0
    wrong: int = 0

    def add(self, what: dict[str, int], key: str, n: int = 1) -> None:
        what[key] = what.get(key, 0) + n


class World:
    def __init__(self, db_url: str, seed: int, *, log: Callable[[str], None] | None = None):
        today = datetime.now(UTC).date()
        # well in the past: the fake clock (and the reconciliation's ``now``) never reaches real time
        self.end_date: date = today - timedelta(days=14)
        first_day = self.end_date - timedelta(days=DAYS - 1)
        # the first UTC day holding orders: a store east of UTC opens its first local day on the UTC day before
        self.first_utc = datetime(first_day.year, first_day.month, first_day.day, tzinfo=UTC) - timedelta(days=1)
        self.now: int = (
            int(datetime(self.end_date.year, self.end_date.month, self.end_date.day, 6, tzinfo=UTC).timestamp()) - DAY
        )
        self.latest_allowed = int(datetime.now(UTC).timestamp()) - 2 * DAY
        self.sb = Sandbox(
            SandboxConfig(seed=seed, stores=STORES, days=DAYS, end_date=self.end_date, orders_per_day=ORDERS_PER_DAY),
            clock=lambda: self.now,
        )
        self.client = TaptouchClient(
            client_id=self.sb.config.client_id,
            client_secret=self.sb.config.client_secret,
            transport=self.sb.transport(),
            requests_per_second=None,
            sleep=lambda s: None,
            page_size=PAGE_SIZE,
            clock=lambda: self.now,  # this machine's clock is the real one (the API's may be skewed)
        )
        self.say = log or (lambda s: None)
        # orders per COPY batch, by history: tiny batches COPY while the next pages are decoded and
        # look up the versions held on the load's second connection (the loader's overlap)
        self.batch_size = BATCH_SIZES[seed % len(BATCH_SIZES)]
        self.tally = Tally()
        self.db_url = db_url
        self.conn = psycopg.connect(db_url, autocommit=True)
        reset_warehouse(self.conn)
        sync_stores(self.client, self.conn)
        self.store_ids = self.sb.store_ids()
        self.store_of: dict[int, int] = {}
        self.unborn: dict[int, int] = {}  # order id -> the instant it is born (its updated_at)
        for sid in self.store_ids:
            for o in list(self.sb.orders(sid)):
                self.store_of[o["id"]] = sid
                at = epoch_of(o["updated_at"])
                if at > self.now:
                    self.unborn[o["id"]] = at
        for oid in self.unborn:
            self.sb.delete_order(oid)
        self.deleted: dict[int, int] = {}  # deleted at the source by the history -> when
        self.ever_deleted: set[int] = set()
        self.restored: dict[int, int] = {}  # re-listed at the source (visible again with an old version) -> step
        self.proofs_complete: set[tuple[int, str]] = set()  # (store, window) once proven complete
        self.proof_started: dict[tuple[int, str], datetime | None] = {}  # when it was last written, as last seen
        self.proof_step: dict[tuple[int, str], int] = {}  # the step it last changed in
        self.proof_exempt: dict[tuple[int, str], datetime] = {}  # proofs from a listing lied to twice
        self.seen_live: set[int] = set()  # returned to a successful run since the source last deleted it
        self.wh_version: dict[int, datetime] = {}
        self.marks: dict[tuple, datetime] = {}
        self.mark_step: dict[tuple, int] = {}  # the step a mark last moved in
        self.visible_step: dict[int, int] = {}  # the step an order's current version became visible (0: from the start)
        self.step_pages: list[OrdersPage] = []  # the orders pages served during the current step
        self.mark_key_cols = self._mark_key_columns()
        self.step_now = self.now
        # listing-time actions, armed by rules and spent by _on_page
        self.phase = "idle"
        self.events: list[tuple[str, str, Any]] = []
        self.events_lock = threading.Lock()
        self.listing_edits = 0
        self.listing_deletes = 0
        self.kill_after: int | None = None  # pages until the kill fires
        self.kill_action: Callable[[], None] | None = None
        # a run inside another's (World.overlapped): its stores' successes wait for the outer's end
        self.deferred: dict[str, set[int]] | None = None
        self.pending_ok: dict[str, set[int]] = {}
        self.sb.on_page = self._on_page
        # the deletion judgement's clock is the fake one too: the orders loads time their candidates
        # by it, as the reconciliations (whose ``now`` it is) judge them
        self._real_clock = deletions.clock
        deletions.clock = lambda: instant(self.now)

    def close(self) -> None:
        deletions.clock = self._real_clock
        self.sb.on_page = None
        self.client.close()
        self.conn.close()

    # ------------------------------------------------------------------ the source
    @property
    def live(self) -> list[int]:
        return sorted(oid for oid in self.store_of if oid not in self.unborn and oid not in self.deleted)

    def version(self, oid: int) -> int:
        return epoch_of(self.sb.order(oid)["updated_at"])

    def advance(self, seconds: int) -> None:
        self.now = min(self.now + seconds, self.latest_allowed)
        born = sorted(oid for oid, at in self.unborn.items() if at <= self.now)
        for oid in born:
            del self.unborn[oid]
            self.sb.restore_order(oid)
            self.visible_step[oid] = self.tally.steps
        self.tally.births += len(born)

    def new_order(self, store_id: int) -> int | None:
        """Publish the store's next unborn order now: created and stamped at the fake clock."""
        waiting = sorted((at, oid) for oid, at in self.unborn.items() if self.store_of[oid] == store_id)
        if not waiting:
            return None
        oid = waiting[0][1]
        del self.unborn[oid]
        self.sb.restore_order(oid)
        at = instant(self.now).isoformat()
        changes: dict[str, Any] = {"created_at": at, "updated_at": at}
        if self.sb.order(oid)["completed_at"] is not None:
            changes["completed_at"] = at
        self.sb.edit_order(oid, **changes)
        self.visible_step[oid] = self.tally.steps
        self.tally.births += 1
        return oid

    EDITS = ("refunded", "partially_refunded", "voided", "completed", "items", "touch")

    def edit(self, oid: int, variant: int, *, at: int | None = None) -> str:
        """A new version of a live order, stamped ``at`` (default now), never before its previous one."""
        kind = self.EDITS[variant % len(self.EDITS)]
        old = self.sb.order(oid)
        stamp = max(self.now if at is None else at, epoch_of(old["updated_at"]) + 1)
        changes: dict[str, Any] = {"updated_at": instant(stamp)}
        if kind == "items":
            items = [dict(i) for i in old["items"]]
            items[0]["quantity"] = items[0]["quantity"] + 1
            changes["items"] = items
        elif kind != "touch":
            changes["status"] = kind
        self.sb.edit_order(oid, **changes)
        self.visible_step[oid] = self.tally.steps
        self.tally.edits += 1
        return f"{kind}@{instant(stamp):%d %H:%M:%S}"

    def can_delete(self, oid: int) -> bool:
        sid = self.store_of[oid]
        return sum(1 for d in self.deleted if self.store_of[d] == sid) < MAX_DELETED_PER_STORE

    def delete(self, oid: int) -> None:
        self.sb.delete_order(oid)
        self.deleted[oid] = self.now
        self.ever_deleted.add(oid)
        self.tally.deletions += 1
        if self.phase == "idle":
            self.seen_live.discard(oid)
        else:  # during a listing: ordered after the pages served before it (see _account)
            with self.events_lock:
                self.events.append(("delete", self.phase, oid))

    def restore(self, oid: int) -> None:
        self.sb.restore_order(oid)
        self.visible_step[oid] = self.tally.steps
        del self.deleted[oid]
        self.restored[oid] = self.tally.steps
        self.tally.restores += 1

    # ------------------------------------------------------------------ during a listing
    def _on_page(self, page: OrdersPage) -> None:
        phase = self.phase
        if phase == RANGED and page.updated_from is not None:  # windows in flight: the page's own window
            phase = f"{RANGED}:{instant(page.updated_from).date().isoformat()}"
        with self.events_lock:
            self.events.append(("page", phase, page))
        if page.fault:
            self.tally.add(self.tally.pages_faulted, page.fault)
        if self.listing_edits > 0 and page.ids and len(page.ids) == page.count:
            oid = page.ids[0]
            if oid in self.store_of and oid not in self.deleted and oid not in self.unborn:
                self.listing_edits -= 1
                self.tally.edits_during_listing += 1
                self.edit(oid, 5)
        if self.listing_deletes > 0 and page.ids:
            oid = page.ids[0]
            if oid not in self.deleted and self.can_delete(oid):
                self.listing_deletes -= 1
                self.delete(oid)
        with self.events_lock:  # (a run that ends clears the kill under this lock: none fires after it)
            if self.kill_after is not None:
                self.kill_after -= 1
                if self.kill_after <= 0 and self.kill_action is not None:
                    action, self.kill_action, self.kill_after = self.kill_action, None, None
                    self.tally.kills += 1
                    action()

    # ------------------------------------------------------------------ runs (the real code)
    def _windows(self, full: bool) -> list[tuple[datetime, datetime, str]]:
        if full:
            latest = max([self.now] + [self.version(oid) for oid in self.store_of if oid not in self.unborn])
            days = (day_start(latest) - self.first_utc).days + 1
            starts = [self.first_utc + timedelta(days=i) for i in range(days)]
        else:  # the hourly schedule: today; yesterday too in the first hours of a UTC day
            today = day_start(self.now)
            starts = ([today - timedelta(days=1)] if instant(self.now).hour < 4 else []) + [today]
        return [(s, s + timedelta(days=1), s.date().isoformat()) for s in starts]

    def sync(
        self,
        *,
        full: bool,
        kill: str | None = None,
        conn: psycopg.Connection | None = None,
        tag: str = "",
        meanwhile: tuple[int, Callable[[], str]] | None = None,
    ) -> str:
        """The hourly incremental run (``full=False``: lookback from the marks) or a full reload of
        every day. ``kill``: "cancel" stops the run after a few pages (run termination: the window
        rolls back), "merge" raises just before the merge. ``conn``: the run's connection (default
        the world's); ``tag`` names its pages' phase apart from another run's. ``meanwhile`` =
        (i, run): once window i (modulo the windows) has fetched and staged everything, ``run()``
        runs whole before that window merges (:meth:`overlapped`). Returns a summary."""
        lookback = None if full else settings.lookback()
        name = tag + ("full" if full else "hourly")
        self.tally.add(self.tally.runs, name + ("-killed" if kill else ""))
        out = []
        windows = self._windows(full)
        for i, (start, end, key) in enumerate(windows):
            cancel = threading.Event() if kill == "cancel" else None
            before_merge = None
            if kill == "cancel":
                self.kill_after, self.kill_action = 2, cancel.set
            elif kill == "merge":

                def before_merge() -> None:
                    self.tally.kills += 1
                    raise Killed("killed just before the merge")

            elif meanwhile is not None and i == meanwhile[0] % len(windows):

                def before_merge(phase: str = f"{name}:{key}", key: str = key) -> None:
                    out.append(f"{key} staged; meanwhile {meanwhile[1]()}; then {key} merges")
                    self.phase = phase

            self.phase = f"{name}:{key}"
            try:
                result = load_window(
                    self.client,
                    self.conn if conn is None else conn,
                    key,
                    start,
                    end,
                    lookback=lookback,
                    cancel=cancel,
                    before_merge=before_merge,
                    batch_size=self.batch_size,
                )
            except (Killed, WindowCancelled) as exc:
                out.append(f"{key}: killed ({type(exc).__name__})")
                self._account({})
                break
            finally:
                self.kill_after = self.kill_action = None
                self.phase = "idle"
            ok = set(result.stores_ok) - {f.store_id for f in result.failures}
            self._account({f"{name}:{key}": ok})
            failed = ",".join(str(f.store_id) for f in result.failures)
            out.append(
                f"{key}: {result.records} read, +{result.counts.inserted} ~{result.counts.updated}"
                + (f", failed {failed}" if failed else "")
            )
            if kill:
                break  # the kill did not fire (too few pages): the run simply finished
        return "; ".join(out)

    def ranged(self, *, kill: str | None = None, after: int = 1) -> str:
        """A full reload of every day as one ranged run of the ``orders`` asset loads it
        (:func:`sync_orders_windows`: two windows fetch and stage at once, each on a connection of
        its own, the merges commit in window order). ``kill``: "interrupt" sends SIGUSR1 to the
        calling thread once ``after`` pages were served, whose handler raises there (as Dagster's
        run termination does, also while the thread waits for a window); "window" fails the
        window whose store listing is the ``after``-th to end (modulo the listings of DAYS
        windows; it fires unless store failures leave fewer listings ending).

        Afterwards (:meth:`_check_ranged_commits`): after an interrupt, no window after the first
        one not reported committed unless its merge began before the run set its cancel (timed by
        :func:`_merge_clock`: a window merging when the run acts on its termination commits); after a
        window failed, neither it nor any window more than ``WINDOWS_IN_FLIGHT`` after it
        committed (those already fetching or staged may). Only the windows the run reported are
        accounted for invariant 2 (the ids a successful listing returned)."""
        self.tally.add(self.tally.runs, RANGED + ("-killed" if kill else ""))
        listings_ended = [0]
        failed_window: list[str] = []
        fail_at = (after - 1) % (STORES * DAYS) + 1

        def progress(message: str) -> None:  # on the windows' threads, as a store's listing ends
            if kill == "window" and message.startswith("store "):
                with self.events_lock:
                    listings_ended[0] += 1
                    fail = listings_ended[0] == fail_at
                    self.tally.kills += fail
                if fail:
                    failed_window.append(message.rsplit("(", 1)[1].rstrip(")"))  # "... (<window key>)"
                    raise Killed("a window failed while the run loaded others")

        run = dataclasses.replace(
            warehouse_run(self.conn, FULL_REFRESH, batch_size=self.batch_size, store_workers=2), progress=progress
        )
        windows = [OrderWindow(key, start, end) for start, end, key in self._windows(True)]
        logged = self._orders_logged()
        if signal.getsignal(signal.SIGUSR1) is not _interrupted:
            signal.signal(signal.SIGUSR1, _interrupted)  # left installed: a late signal does nothing
        if kill == "interrupt":
            main = threading.main_thread().ident
            self.kill_after, self.kill_action = after, lambda: signal.pthread_kill(main, signal.SIGUSR1)
            _INTERRUPT_ARMED[0] = True
        self.phase = RANGED
        ok: dict[str, set[int]] = {}
        out = [f"after page {after}" if kill == "interrupt" else f"at listing {fail_at}" if kill else "whole"]
        try:
            with (
                _merge_clock() as clock,
                closing(
                    sync_orders_windows(
                        self.client, lambda: psycopg.connect(self.db_url, autocommit=True), windows, run
                    )
                ) as results,
            ):
                for window, result in results:
                    ok[f"{RANGED}:{window.key}"] = set(result.stores_ok) - {f.store_id for f in result.failures}
                    failed = ",".join(str(f.store_id) for f in result.failures)
                    out.append(
                        f"{window.key}: +{result.counts.inserted} ~{result.counts.updated}"
                        + (f", failed {failed}" if failed else "")
                    )
        except (Killed, WindowCancelled) as exc:
            out.append(f"killed ({exc})")
        finally:
            _INTERRUPT_ARMED[0] = False  # an interrupt still on its way does nothing now
            with self.events_lock:
                unfired = self.kill_action is not None
                self.kill_after = self.kill_action = None
            self.phase = "idle"
        if (kill == "interrupt" and unfired) or (kill == "window" and not failed_window):
            out.append("the kill did not fire")
        self._account(ok)
        self._check_ranged_commits(
            windows, logged, kill, [w for w in windows if f"{RANGED}:{w.key}" in ok], failed_window, clock
        )
        return "; ".join(out)

    def _orders_logged(self) -> dict[str, int]:
        """window key -> rows of taptouch.sync_log for orders (a window's commit writes one per store)."""
        rows = self.conn.execute(
            "select \"window\", count(*) from taptouch.sync_log where entity = 'orders' group by 1"
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def _check_ranged_commits(
        self,
        windows: list[OrderWindow],
        before: dict[str, int],
        kill: str | None,
        reported: list[OrderWindow],
        failed_window: list[str],
        clock: _MergeClock,
    ) -> None:
        after = self._orders_logged()
        committed = [i for i, w in enumerate(windows) if after.get(w.key, 0) > before.get(w.key, 0)]
        keys = [w.key for w in windows]
        problems = []
        if kill == "interrupt" and len(reported) < len(windows):
            # the windows are reported in order; one committed but not yet reported may be followed
            # by one whose merge had begun before the run acted on the termination (set its cancel)
            first_unreported = len(reported)
            cancelled = clock.cancelled_at
            late = [
                keys[i]
                for i in committed
                if i > first_unreported
                and (cancelled is None or clock.merging_at.get(keys[i], math.inf) > cancelled + MERGE_START_SLACK_S)
            ]
            if late:
                problems.append(
                    f"windows {late} committed after the run was terminated: their merges began after it"
                    f" (only {keys[first_unreported]} and merges already begun may)"
                )
        if kill == "window" and failed_window:
            f = keys.index(failed_window[0])
            late = [keys[i] for i in committed if i == f or i > f + WINDOWS_IN_FLIGHT]
            if late:
                problems.append(f"windows {late} committed although window {keys[f]} failed")
        if problems:
            raise Violation("; ".join(problems))

    def overlapped(self, outer: str, inner: str, at: int) -> str:
        """Two runs of one window overlapping, as a backfill and the hourly run do: the ``outer``
        run ("hourly" or "full") fetches and stages its window ``at`` (modulo its windows), then the
        ``inner`` run ("hourly", "full" or "reconcile") runs whole on a connection of its own and
        commits, then the outer run merges what it listed before the inner one listed. The steps'
        pages are accounted once both ended, in the order they were served."""
        self.tally.overlaps += 1

        def run_inner() -> str:
            with psycopg.connect(self.db_url, autocommit=True, options="-c lock_timeout=30s") as conn:
                self.deferred = {}
                try:
                    if inner == "reconcile":
                        return "reconcile: " + self.reconcile(conn=conn)
                    return f"{inner} run: " + self.sync(full=inner == "full", conn=conn, tag="inner-")
                finally:
                    self.pending_ok.update(self.deferred)
                    self.deferred = None

        return self.sync(full=outer == "full", meanwhile=(at, run_inner))

    def reconcile(
        self, *, days: int = RECONCILE_DAYS, kill: bool = False, conn: psycopg.Connection | None = None
    ) -> str:
        self.tally.add(self.tally.runs, "reconcile" + ("-killed" if kill else ""))
        if kill:

            def stop() -> None:
                raise Killed("killed while listing")

            self.kill_after, self.kill_action = 3, stop
        self.phase = "reconcile"
        try:
            result = reconcile_orders(  # as the asset calls it: late records within the run's lookback
                self.client,
                self.conn if conn is None else conn,
                days=days,
                now=instant(self.now),
                late=settings.lookback(),
            )
        except Killed:
            self._account({})
            return "killed"
        finally:
            self.kill_after = self.kill_action = None
            self.phase = "idle"
        failed = {f[0] if isinstance(f, tuple) else getattr(f, "store_id", None) for f in result.failures}
        ok = {s.store_id for s in result.stores} - failed
        self._account({"reconcile": ok})
        return f"{result.listed} listed, {result.deleted} deleted, {result.restored} restored" + (
            f", failed {sorted(failed)}" if failed else ""
        )

    def _account(self, ok: dict[str, set[int]]) -> None:
        """Replay the step's events: ids a listing returned to a run that succeeded for that store
        (phase -> stores) are known live; a deletion at the source forgets that."""
        if self.deferred is not None:  # a run inside another's (overlapped): accounted when the outer ends
            self.deferred.update(ok)
            return
        ok, self.pending_ok = {**self.pending_ok, **ok}, {}
        with self.events_lock:
            events, self.events = self.events, []
        self.step_pages.extend(e[2] for e in events if e[0] == "page")
        for kind, phase, what in events:
            if kind == "page" and what.store_id in ok.get(phase, ()):
                self.seen_live.update(what.ids)
            elif kind == "delete":
                self.seen_live.discard(what)

    def begin_step(self) -> None:
        self.tally.steps += 1
        self.step_pages = []
        self.step_now = self.now  # this machine's clock when the step's listings start
        self._account({})

    # ------------------------------------------------------------------ invariants
    def _mark_key_columns(self) -> list[str]:
        cols = [
            r[0]
            for r in self.conn.execute(
                "select column_name from information_schema.columns where table_schema = 'taptouch'"
                " and table_name = 'sync_marks' order by ordinal_position"
            )
        ]
        return [
            c
            for c in cols
            if c not in ("high_water", "full_loaded_at", "updated_at", "started_at") and not c.endswith("_at")
        ]

    def check_invariants(self) -> None:
        problems: list[str] = []
        rows = self.conn.execute("select order_id, updated_at, deleted_at from taptouch.orders").fetchall()
        held = {r[0]: (r[1], r[2]) for r in rows}
        # 1. nothing moves backwards
        for oid, before in self.wh_version.items():
            now = held.get(oid)
            if now is None:
                problems.append(f"order {oid} vanished from the warehouse (held {before.isoformat()})")
            elif now[0] < before:
                problems.append(f"order {oid} moved backwards: {now[0].isoformat()} < {before.isoformat()}")
        for oid, (at, _) in held.items():
            if oid in self.unborn:
                problems.append(f"order {oid} is in the warehouse but the API never served it")
            if oid not in self.wh_version or at > self.wh_version[oid]:
                self.wh_version[oid] = at
        # 2. no order a successful listing returned is marked deleted
        wrongly = sorted(
            oid for oid, (_, deleted_at) in held.items() if deleted_at is not None and oid in self.seen_live
        )
        # 2b. no order the source never deleted is marked deleted (whether or not a run listed it since)
        for oid in sorted(
            oid for oid, (_, deleted_at) in held.items() if deleted_at is not None and oid not in self.ever_deleted
        ):
            problems.append(f"order {oid} is marked deleted although the source never deleted it")
        for oid in wrongly:
            problems.append(
                f"order {oid} is marked deleted although a listing returned it "
                f"(source: {'deleted' if oid in self.deleted else 'live'})"
            )
        # 3. no mark that moved passes its listing's start (the API's clock at the store's first page)
        cols = self.mark_key_cols
        marks = {
            tuple(r[:-1]): r[-1]
            for r in self.conn.execute(
                sql.SQL("select {}, high_water from taptouch.sync_marks").format(
                    sql.SQL(", ").join(map(sql.Identifier, cols))
                )
            )
        }
        sid_at = cols.index("store_id")
        for key, mark in marks.items():
            if mark is None or self.marks.get(key) == mark:
                continue
            firsts = [p.timestamp for p in self.step_pages if p.store_id == key[sid_at]]
            if not firsts:
                problems.append(f"mark {key} moved to {mark.isoformat()} without a listing of its store")
            elif mark > instant(min(firsts)):
                problems.append(
                    f"mark {key} = {mark.isoformat()} passes its listing's start "
                    f"{instant(min(firsts)).isoformat()} (API clock)"
                )
            elif mark >= instant(self.step_now):
                # an API clock running ahead: edits real time has not reached would fall behind the
                # mark, where no incremental run asks again (the listing counts from this machine's)
                problems.append(
                    f"mark {key} = {mark.isoformat()} passes real time at its listing's start "
                    f"{instant(self.step_now).isoformat()} (this machine's clock)"
                )
            self.mark_step[key] = self.tally.steps
        previous, self.marks = self.marks, marks
        # 4. no mark passes a record the warehouse lacks: the next incremental run asks only from
        # mark - lookback, so every order visible before the mark moved, in the range its listing
        # asked for ([old mark - lookback or window start, new mark - lookback)), must be held at its
        # version (a skipped record would otherwise wait for a full reload). An order that appears
        # with an instant older than the range asked for (a re-listing at the source, a late
        # replica) is the reconciliation's and the daily full reload's to catch (docs/operating.md).
        lookback = settings.lookback()
        win_at = cols.index("window") if "window" in cols else None
        for key, mark in marks.items():
            try:
                start = datetime.fromisoformat(key[win_at]).replace(tzinfo=UTC) if win_at is not None else None
            except (TypeError, ValueError):
                continue
            if mark is None or start is None or key not in self.mark_step or previous.get(key) == mark:
                continue
            asked_from = start if previous.get(key) is None else max(start, previous[key] - lookback)
            limit = min(mark - lookback, start + timedelta(days=1))
            moved = self.mark_step[key]
            for oid in self.live:
                if self.store_of[oid] != key[sid_at] or self.visible_step.get(oid, 0) >= moved:
                    continue
                at = datetime.fromisoformat(self.sb.order(oid)["updated_at"])
                got = held.get(oid)
                if asked_from <= at < limit and (got is None or got[0] < at):
                    problems.append(
                        f"mark {key} = {mark.isoformat()} passed order {oid} ({at.isoformat()}), which "
                        f"the warehouse {'lacks' if got is None else 'holds older'}"
                    )
        problems += self._check_proofs(held)
        problems += self._check_deletion_log_and_aggregates()
        if problems:
            raise Violation("; ".join(problems[:8]) + (f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""))

    def _check_deletion_log_and_aggregates(self) -> list[str]:
        """8. taptouch.deletion_log agrees with taptouch.orders.deleted_at: every order marked deleted has
        its log row (that deleted_at, not restored), and every log row not restored is the order's
        deletion in force. 9. the sales aggregates equal a recomputation from the orders."""
        problems: list[str] = []
        for oid, deleted_at, logged in self.conn.execute(
            "select o.order_id, o.deleted_at, l.deleted_at from taptouch.orders o full join"
            " (select * from taptouch.deletion_log where restored_at is null) l using (order_id)"
            " where o.deleted_at is distinct from l.deleted_at"
        ):
            problems.append(f"deletion_log: order {oid} deleted_at {deleted_at} but the log's open row says {logged}")
        from pipelines.warehouse import aggregates

        with self.conn.transaction(), self.conn.cursor() as cur:
            found = aggregates.mismatches(cur)
        for table, rows in found.items():
            problems.append(f"aggregates: {table} differs from the orders: {rows[:3]}")
        return problems

    def _check_proofs(self, held: dict[int, tuple[datetime, datetime | None]]) -> list[str]:
        """5. A window once proven complete stays complete. 6. A proof holds every order of its store
        that the source served, at its version, over what it covers: [covered_from, the listing's
        start) within the window (an order re-listed at the source, visible again with an old
        version, is the reconciliation's to find). 7. The check ``orders_proven`` finds no set
        disagreeing with the warehouse (``missing``, ``extra``) unless the source changed the order
        since the proof's listing started (the warehouse is then ahead of or behind the proof, and
        the next listing of the window tells)."""
        problems: list[str] = []
        proofs = self.conn.execute(
            'select proof_id, store_id, "window", window_start, window_end, complete, covered_from,'
            " least(coalesce(api_started_at, listed_at), listed_at), listed_from, proved_at from taptouch.listing_proofs"
        ).fetchall()
        sets: dict[int, dict[int, Decimal]] = {}
        for proof_id, oid, v in self.conn.execute(
            "select proof_id, order_id, updated_at_exact from taptouch.listing_proof_orders"
        ):
            sets.setdefault(proof_id, {})[oid] = v
        # the same request answered falsely twice (an empty or cut page, and its confirmation, both
        # by the fault): the client cannot tell that from the listing's end, so the proofs of that
        # store's windows the request reached are not held to the source in this step (the
        # reconciliation, confirmed over time, is)
        asked: dict[tuple, int] = {}
        for page in self.step_pages:
            if page.fault in ("empty", "partial"):
                q = (page.store_id, page.updated_from, page.updated_to, page.index)
                asked[q] = asked.get(q, 0) + 1
        lied_twice = [q for q, n in asked.items() if n >= 2]
        for proof_id, sid, key, w_start, w_end, complete, covered_from, started, listed_from, proved_at in proofs:
            if complete:
                self.proofs_complete.add((sid, key))
            elif (sid, key) in self.proofs_complete:
                problems.append(f"proof of store {sid}, window {key} fell back to incomplete")
            previous = self.proof_started.get((sid, key))
            if previous != proved_at:  # written in this step (the clock may stand still)
                self.proof_started[(sid, key)] = proved_at
                self.proof_step[(sid, key)] = self.tally.steps
                # a proof that keeps coverage from before its own listing's range (an incremental
                # listing extends the one before) inherits what that one missed: exempt if it was
                inherited = (
                    previous is not None
                    and self.proof_exempt.get((sid, key)) == previous
                    and covered_from is not None
                    and listed_from is not None
                    and covered_from < listed_from
                )
                if inherited or any(
                    q[0] == sid
                    and (q[1] is None or q[1] < w_end.timestamp())
                    and (q[2] is None or q[2] > w_start.timestamp())
                    for q in lied_twice
                ):
                    self.tally.add(self.tally.faults, "lied twice")
                    self.proof_exempt[(sid, key)] = proved_at
            if covered_from is None or started is None or self.proof_exempt.get((sid, key)) == proved_at:
                continue
            lo, hi = max(w_start, covered_from), min(w_end, started)
            got = sets.get(proof_id, {})
            for oid in self.live:
                if self.store_of[oid] != sid:
                    continue
                v = exact_epoch(self.sb.order(oid)["updated_at"])
                # re-listed at the source with an old version: the proof's latest listing must hold
                # it if it was visible when that listing ran and lies in what it re-read
                restored = self.restored.get(oid)
                if restored is not None and (
                    restored >= self.proof_step[(sid, key)] or listed_from is None or v < listed_from.timestamp()
                ):
                    continue
                if lo.timestamp() <= v < hi.timestamp() and got.get(oid) != v:
                    problems.append(
                        f"proof of store {sid}, window {key} (covers {lo.isoformat()} to {hi.isoformat()}) "
                        f"lacks order {oid} v{v}" + ("" if oid not in got else f" (holds v{got[oid]})")
                    )
        # the check's disagreements over orders the source never deleted (a deletion is the
        # reconciliation's to judge: until then the warehouse holds an order a listing no longer returns)
        never_deleted = set(self.live) - self.ever_deleted
        keys = sorted({p[2] for p in proofs})
        written = {(p[1], p[2]): p[-1] for p in proofs}
        for problem in proof_checks.window_problems(self.conn, keys, self.store_ids):
            named = {int(m) for m in re.findall(r"(\d+) v", problem.detail.split(": ", 2)[-1])}
            if (
                problem.kind != "unproven"
                and self.proof_exempt.get((problem.store_id, problem.window))
                != written.get((problem.store_id, problem.window))
                and named & never_deleted
            ):
                problems.append(f"orders_proven: {problem}")
        return problems

    # ------------------------------------------------------------------ the end of a history
    def final_check(self) -> list[str]:
        """Faults off, the clock past every instant at the source, a full reload, two
        reconciliations TAPTOUCH_RECONCILE_CONFIRM_S apart; then the warehouse must equal the sandbox."""
        self.sb.faults.reset()
        self.listing_edits = self.listing_deletes = 0
        latest = max(self.version(oid) for oid in self.store_of)
        self.advance(max(0, latest + 60 - self.now))
        if self.now <= latest:
            return [f"the fake clock cannot pass {instant(latest)} before real time (raise the margin)"]
        self.begin_step()
        full = self.sync(full=True)
        self.check_invariants()
        days = (instant(self.now) - self.first_utc).days + 2
        self.begin_step()
        r1 = self.reconcile(days=days)
        self.check_invariants()
        self.advance(confirm_s() + 1)
        self.begin_step()
        r2 = self.reconcile(days=days)
        self.check_invariants()
        self.say(f"final: full reload {full}; reconcile {r1}; again {r2}")
        window_start = self.now - days * DAY
        problems, lost, wrong = compare_exact(
            self.conn, self.sb, {oid for oid, _ in self.deleted.items() if self.version(oid) >= window_start}
        )
        self.tally.lost += lost
        self.tally.wrong += wrong
        return problems


def _children(order: dict) -> dict[str, set]:
    return {
        "order_items": {(i["id"], Decimal(i["total"])) for i in order["items"]},
        "order_payments": {(p["id"], Decimal(p["amount"])) for p in order["payments"]},
        "order_refunds": {(r["id"], Decimal(r["amount"])) for r in order["refunds"]},
    }


CHILD_SQL = {
    "order_items": "select order_id, item_id, total from taptouch.order_items",
    "order_payments": "select order_id, payment_id, amount from taptouch.order_payments",
    "order_refunds": "select order_id, refund_id, amount from taptouch.order_refunds",
}


def compare_exact(conn: psycopg.Connection, sb: Sandbox, deleted_in_window: set[int]) -> tuple[list[str], int, int]:
    """The warehouse against the sandbox: (problems, lost, wrong).

    Lost: an order the API lists that the warehouse lacks or holds as deleted. Wrong: a live
    warehouse order the API does not list, another version or content (``raw``), other child rows,
    an order deleted at the source inside the reconciliation window still live, a
    ``daily_store_sales`` row that differs."""
    problems: list[str] = []
    lost = wrong = 0
    want = truth.orders_by_id(sb)
    rows = conn.execute("select order_id, updated_at, deleted_at, raw::text from taptouch.orders").fetchall()
    held = {r[0]: r[1:] for r in rows}
    for oid, o in sorted(want.items()):
        got = held.get(oid)
        if got is None or got[1] is not None:
            lost += 1
            problems.append(f"lost: order {oid} ({'missing' if got is None else 'marked deleted'})")
        elif got[0] != datetime.fromisoformat(o["updated_at"]):
            wrong += 1
            problems.append(f"wrong: order {oid} version {got[0].isoformat()} != {o['updated_at']}")
        elif json.loads(got[2], parse_float=Decimal) != o:
            wrong += 1
            problems.append(f"wrong: order {oid} raw differs from the API's record")
    for oid, (_, deleted_at, _) in sorted(held.items()):
        if oid not in want and deleted_at is None:
            wrong += 1
            problems.append(
                f"wrong: order {oid} is live in the warehouse but the API does not list it"
                + (" (deleted inside the reconciliation window)" if oid in deleted_in_window else "")
            )
    for table, query in CHILD_SQL.items():
        got_rows: dict[int, set] = {}
        for oid, key, amount in conn.execute(query):
            got_rows.setdefault(oid, set()).add((key, amount))
        for oid, o in want.items():
            if oid in held and got_rows.get(oid, set()) != _children(o)[table]:
                wrong += 1
                problems.append(
                    f"wrong: {table} of order {oid}: {sorted(got_rows.get(oid, set()))} != "
                    f"{sorted(_children(o)[table])}"
                )
    sales_cols = ("order_count", "gross_sales", "discounts", "refunds", "net_sales", "tax", "avg_order_value")
    got_sales = {
        (r[0], r[1]): dict(zip(sales_cols, r[2:], strict=False))
        for r in conn.execute(
            f"select store_id, business_date, {', '.join(sales_cols)} from analytics.daily_store_sales"
        )
    }  # noqa: S608
    want_sales = truth.daily_store_sales(sb)
    for key in sorted(got_sales.keys() | want_sales.keys(), key=str):
        if got_sales.get(key) != want_sales.get(key):
            wrong += 1
            problems.append(f"wrong: daily_store_sales {key}: {got_sales.get(key)} != {want_sales.get(key)}")
    return problems, lost, wrong
