"""The world of the order-history tests: a sandbox whose days lie in the past, a warehouse loaded
through the production path, a simulated clock for the loads, and the truth the history and its
views must equal (tests/warehouse/test_order_history.py, tests/cli/test_forget_customer.py).

After run k the versions that run first saw (and the orders it marked deleted) are stamped with the
simulated instant T_k, so "as of the end of the next business day" is exercised on past days.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg

from pipelines.reconcile import reconcile_orders
from pipelines.settings import RunSettings
from pipelines.sync import FULL_REFRESH, OrdersRun, OrderWindow, sync_orders_window, sync_stores
from pipelines.warehouse.db import libpq_url
from pipelines.warehouse.loader import store_timezones
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig

from . import truth
from .state_model import reset_warehouse

D = Decimal
SALES = truth.SALES_STATUSES
DAYS = 3


def epoch(iso: str) -> Decimal:
    """The exact version of an ISO instant (the sandbox sends whole seconds)."""
    return D(int(datetime.fromisoformat(iso).timestamp()))


def refunds_of(order: dict) -> Decimal:
    return sum((D(str(r["amount"])) for r in order["refunds"]), D("0.00"))


class World:
    """One sandbox (its days three or more days in the past), a warehouse, and the truth: every
    version the runs listed, with the run and simulated instant that first saw it."""

    def __init__(self, url: str, seed: int = 3, day_start: timedelta = timedelta(0)):
        """``day_start``: TAPTOUCH_BUSINESS_DAY_START of the runs (the stores' business days start then)."""
        self.day_start = day_start
        self.url = url
        end = datetime.now(UTC).date() - timedelta(days=4)
        self.sb = Sandbox(SandboxConfig(seed=seed, stores=2, days=DAYS, orders_per_day=8, end_date=end))
        self.client = TaptouchClient(
            client_id="sandbox-client",
            client_secret="sandbox-secret",
            transport=self.sb.transport(),
            page_size=500,
            requests_per_second=None,
        )
        self.conn = psycopg.connect(libpq_url(url), autocommit=True)
        reset_warehouse(self.conn)
        sync_stores(self.client, self.conn, day_start=day_start)
        self.tz = {s["id"]: ZoneInfo(s["timezone"]) for s in self.sb.stores()}
        first = end - timedelta(days=DAYS)
        self.windows = [OrderWindow.day(first + timedelta(days=i)) for i in range(DAYS + 6)]
        self.t0 = datetime(first.year, first.month, first.day, 12, tzinfo=UTC)
        self.runs = 0
        self.seen: dict[tuple[int, Decimal], dict] = {}  # (order_id, version) -> record, run, instant
        self.deleted_at: dict[int, datetime] = {}  # order id -> simulated instant it was marked deleted
        self.pending_deletes: set[int] = set()
        self.edits = 0

    def close(self) -> None:
        self.conn.close()

    def live(self) -> list[dict]:
        return sorted(truth.orders_by_id(self.sb).values(), key=lambda o: o["id"])

    def now_of(self, k: int) -> datetime:
        return self.t0 + timedelta(hours=13 * k)

    def edit(self, order: dict, **changes) -> None:
        self.edits += 1
        at = max(datetime.fromisoformat(order["updated_at"]), self.now_of(self.runs)) + timedelta(minutes=self.edits)
        self.sb.edit_order(order["id"], updated_at=at, **changes)

    def run(self) -> None:
        """Load every window in full as run ``run-k``, confirm deletions, stamp the simulated clock."""
        k, run_id = self.runs, f"run-{self.runs}"
        orders_run = OrdersRun(
            timezones=store_timezones(self.conn),
            mode=FULL_REFRESH,
            settings=RunSettings(business_day_start=self.day_start),
            run_id=run_id,
        )
        for window in self.windows:
            result = sync_orders_window(self.client, self.conn, window, orders_run)
            assert not result.failures, result.failures
        at = self.now_of(k)
        if self.pending_deletes:
            # a deletion is confirmed by the second listing that misses the order (the first records it
            # as a candidate): a window's bounded listing may not have recorded it (the share guard
            # of a small store's day whose edited orders moved to a later window), so two reconciliations
            for _ in range(2):
                reconcile_orders(self.client, self.conn, days=30, confirm_s=0, run_id=run_id)
            live = self.conn.execute(
                "select order_id from taptouch.orders where order_id = any(%s) and deleted_at is null",
                (sorted(self.pending_deletes),),
            ).fetchall()
            assert not live, f"the reconciliation did not mark {live} deleted"
            for table in ("orders", "deletion_log"):  # (the log keeps each deletion's time)
                self.conn.execute(
                    f"update taptouch.{table} set deleted_at = %s where order_id = any(%s)",
                    (at, sorted(self.pending_deletes)),
                )
            for oid in self.pending_deletes:
                self.deleted_at[oid] = at
            self.pending_deletes = set()
        self.conn.execute(
            "update taptouch.order_history set first_seen_at = %s where first_seen_run_id = %s", (at, run_id)
        )
        for order in self.live():
            key = (order["id"], epoch(order["updated_at"]))
            self.seen.setdefault(key, {"record": order, "run_id": run_id, "at": at})
        self.runs += 1

    # ---------------------------------------------------------------------------------- truth
    def versions(self) -> dict[int, list[tuple[Decimal, dict]]]:
        out: dict[int, list[tuple[Decimal, dict]]] = defaultdict(list)
        for (oid, version), seen in sorted(self.seen.items()):
            out[oid].append((version, seen))
        return out

    def business_date(self, order: dict) -> date:
        """The local date of the local wall-clock time of created_at minus the day start."""
        local = datetime.fromisoformat(order["created_at"]).astimezone(self.tz[order["store_id"]])
        return (local.replace(tzinfo=None) - self.day_start).date()

    def day_end(self, store_id: int, day: date) -> datetime:
        """The day start (local wall-clock time) on the day after ``day``: the instant ``day`` ends."""
        nxt = datetime.combine(day + timedelta(days=1), datetime.min.time()) + self.day_start
        return nxt.replace(tzinfo=self.tz[store_id])

    def current(self) -> dict[int, dict]:
        """Every order the warehouse holds, as its newest version seen."""
        return {oid: vs[-1][1]["record"] for oid, vs in self.versions().items()}


def expected_history(w: World) -> set[tuple]:
    return {
        (
            oid,
            version,
            s["run_id"],
            s["at"],
            s["record"]["status"],
            D(str(s["record"]["total"])),
            refunds_of(s["record"]),
        )
        for (oid, version), s in w.seen.items()
    }


def expected_changes(w: World) -> set[tuple]:
    rows = set()
    for oid, vs in w.versions().items():
        current = vs[-1][1]["record"]
        store_id, day = current["store_id"], w.business_date(current)
        ends = w.day_end(store_id, day)
        prev = None
        for version, s in vs:
            r = s["record"]
            upd = datetime.fromisoformat(r["updated_at"])
            refunds, total = refunds_of(r), D(str(r["total"]))
            before_refunds = refunds_of(prev) if prev else D(0)
            rows.add(
                (
                    oid,
                    version,
                    epoch(prev["updated_at"]) if prev else None,
                    store_id,
                    day,
                    prev["status"] if prev else None,
                    r["status"],
                    prev is not None and prev["status"] != r["status"],
                    total - D(str(prev["total"])) if prev else None,
                    prev is not None and prev["items"] != r["items"],
                    refunds - before_refunds,
                    refunds > before_refunds and upd >= ends,
                    r["status"] == "voided" and (prev is None or prev["status"] != "voided") and upd >= ends,
                )
            )
            prev = r
    return rows


def _net(order: dict) -> tuple[int, Decimal]:
    if order["status"] not in SALES:
        return 0, D(0)
    return 1, D(str(order["total"])) - refunds_of(order)


def expected_restatements(w: World) -> dict[tuple[int, date], tuple]:
    """(store, business date) -> (first orders, first net, next-day orders, next-day net, now orders, now net).
    Each version counts at its own store and business date: the first seen on its date; at the end
    of the day after a version's date, the version the warehouse knew newest then."""
    now = datetime.now(UTC)
    acc: dict[tuple[int, date], list] = defaultdict(lambda: [0, D(0), 0, D(0), 0, D(0), False])

    def key_of(record: dict) -> tuple[int, date]:
        return record["store_id"], w.business_date(record)

    for oid, vs in w.versions().items():
        for _, s in vs:  # a day with a sale in any version has a row
            acc[key_of(s["record"])][6] |= _net(s["record"])[0] > 0
        first = min(vs, key=lambda v: (v[1]["at"], v[0]))[1]["record"]
        n, net = _net(first)
        acc[key_of(first)][0] += n
        acc[key_of(first)][1] += net
        for i, (_, s) in enumerate(vs):
            key = key_of(s["record"])
            next_end = w.day_end(key[0], key[1] + timedelta(days=1))
            assert next_end <= now  # every day of the sandbox lies in the past
            newest_then = s["at"] < next_end and all(later[1]["at"] >= next_end for later in vs[i + 1 :])
            if newest_then and not (oid in w.deleted_at and w.deleted_at[oid] < next_end):
                n, net = _net(s["record"])
                acc[key][2] += n
                acc[key][3] += net
        current = vs[-1][1]["record"]
        if oid not in w.deleted_at:
            n, net = _net(current)
            acc[key_of(current)][4] += n
            acc[key_of(current)][5] += net
            acc[key_of(current)][6] |= n > 0
    return {k: tuple(v[:6]) for k, v in acc.items() if v[6]}
