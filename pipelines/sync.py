"""Sync jobs independent of Dagster: API -> loader, with parallel stores and per-store isolation.

The assets call these functions, and so do the benchmark and the reliability report, so every
measurement exercises the production code path.

Orders of one window: stores are fetched in parallel threads (bounded; they share one client, so
its token cache and request-rate limit are shared) while the calling thread validates and COPYs
pages into staging as they arrive (fetching and loading overlap). A bounded queue keeps memory
independent of the window size. A store that fails is dropped from the window's staging; the other
stores commit, and the failure is reported.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

import psycopg

from taptouch_resource import TaptouchAPIError, TaptouchClient, TaptouchError
from taptouch_resource import api

from .warehouse.loader import LoadCounts, OrderWindowLoad, load_inventory, load_stores, store_timezones

log = logging.getLogger(__name__)

DEFAULT_STORE_WORKERS = 4


@dataclass
class StoreFailure:
    store_id: int
    error: str
    transient: bool  # worth retrying the step (network, 5xx, 429); False for 403/404/422/auth

    def __str__(self) -> str:
        return f"store {self.store_id}: {self.error}"


@dataclass
class SyncResult:
    counts: LoadCounts = field(default_factory=LoadCounts)
    stores_ok: list[int] = field(default_factory=list)
    failures: list[StoreFailure] = field(default_factory=list)
    pages: int = 0
    records: int = 0
    seconds: float = 0.0
    per_store: dict[int, dict[str, int]] = field(default_factory=dict)

    def merge(self, other: "SyncResult") -> None:
        self.counts += other.counts
        self.stores_ok = sorted(set(self.stores_ok) | set(other.stores_ok))
        self.failures.extend(other.failures)
        self.pages += other.pages
        self.records += other.records
        self.seconds += other.seconds


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TaptouchAPIError):
        return exc.status == 0 or exc.status == 429 or exc.status >= 500
    if isinstance(exc, TaptouchError):
        return False  # auth, config, protocol: retrying the same thing will not help
    return True


def describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, TaptouchError) else f"{type(exc).__name__}: {exc}"


def day_window(day: date | str) -> tuple[datetime, datetime]:
    """[day 00:00Z, next day 00:00Z)."""
    d = date.fromisoformat(day) if isinstance(day, str) else day
    start = datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
    return start, start + timedelta(days=1)


def sync_stores(client: TaptouchClient, conn: psycopg.Connection, *, run_id: str | None = None) -> tuple[LoadCounts, list[dict]]:
    """Fetch every store the token may read and upsert them. Returns counts and the raw records."""
    records = list(client.list_stores())
    counts = load_stores(conn, records, run_id=run_id)
    log.info("stores: %d listed, %d inserted, %d updated, %d unchanged, %d quarantined",
             len(records), counts.inserted, counts.updated, counts.unchanged, counts.quarantined)
    return counts, records


def known_store_ids(conn: psycopg.Connection) -> list[int]:
    return sorted(store_timezones(conn))


_DONE = object()


def sync_orders_window(
    client: TaptouchClient,
    conn: psycopg.Connection,
    *,
    start: datetime,
    end: datetime,
    window: str,
    store_ids: list[int] | None = None,
    run_id: str | None = None,
    max_workers: int = DEFAULT_STORE_WORKERS,
    batch_size: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SyncResult:
    """Load every store's orders with ``updated_at`` in [start, end) as one transaction.

    Stores that fail are discarded from the window and listed in ``result.failures``; everything
    else commits. An error on the database side rolls the whole window back and propagates.
    """
    t0 = time.monotonic()
    say = progress or log.info
    timezones = store_timezones(conn)
    if store_ids is None:
        store_ids = sorted(timezones)
    result = SyncResult()
    for sid in [s for s in store_ids if s not in timezones]:
        result.failures.append(StoreFailure(
            sid, f"store {sid} is not in taptouch.stores (its store record was quarantined, or the stores asset "
                 f"has not run), so its time zone and the orders' business dates are unknown", transient=False))
    store_ids = [s for s in store_ids if s in timezones]
    if not store_ids:
        say(f"orders {window}: no stores to load")
        result.seconds = time.monotonic() - t0
        return result
    pages_q: queue.Queue = queue.Queue(maxsize=max(4, 2 * max_workers))
    stop = threading.Event()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                pages_q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def fetch(store_id: int) -> None:
        pages = records = 0
        try:
            for page in client.iter_order_pages(store_id, updated_from=start, updated_to=end):
                if stop.is_set():
                    return
                pages += 1
                records += len(page)
                put(("page", store_id, page))
            put(("done", store_id, (pages, records)))
        except BaseException as exc:  # reported per store, never silently
            put(("error", store_id, exc))

    kwargs = {"batch_size": batch_size} if batch_size else {}
    workers = max(1, min(max_workers, len(store_ids)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="taptouch-fetch") as pool:
        try:
            with OrderWindowLoad(conn, window=window, run_id=run_id, timezones=timezones, **kwargs) as load:
                for sid in store_ids:
                    pool.submit(fetch, sid)
                pending = set(store_ids)
                while pending:
                    kind, store_id, payload = pages_q.get()
                    if kind == "page":
                        load.add_page(store_id, payload)
                    elif kind == "done":
                        pending.discard(store_id)
                        pages, records = payload
                        result.pages += pages
                        result.records += records
                        result.stores_ok.append(store_id)
                        result.per_store[store_id] = {"pages": pages, "orders": records}
                        say(f"store {store_id}: {pages} pages, {records} orders ({window})")
                    else:
                        pending.discard(store_id)
                        load.discard_store(store_id)
                        failure = StoreFailure(store_id, describe(payload), is_transient(payload))
                        result.failures.append(failure)
                        log.error("orders %s: %s", window, failure)
                counts = load.finish()
        finally:
            stop.set()
    for sid, sc in load.per_store.items():
        if sid in result.per_store:
            result.per_store[sid].update(inserted=sc.inserted, updated=sc.updated, unchanged=sc.unchanged,
                                         quarantined=sc.quarantined)
    result.counts = counts
    result.stores_ok.sort()
    result.seconds = time.monotonic() - t0
    return result


def sync_inventory(
    client: TaptouchClient,
    conn: psycopg.Connection,
    *,
    store_ids: list[int] | None = None,
    run_id: str | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> SyncResult:
    """Replace each store's inventory levels and upsert today's snapshot (store-local date).

    Each store commits on its own: one store failing costs the others nothing.
    """
    t0 = time.monotonic()
    say = progress or log.info
    timezones = store_timezones(conn)
    store_ids = sorted(timezones) if store_ids is None else store_ids
    now = now or datetime.now(timezone.utc)
    result = SyncResult()
    for store_id in store_ids:
        try:
            records = list(client.iter_inventory(store_id))
            snapshot_date = api.local_date(now, timezones.get(store_id, "UTC"))
            counts = load_inventory(conn, store_id, records, snapshot_date=snapshot_date, run_id=run_id)
        except TaptouchError as exc:
            failure = StoreFailure(store_id, describe(exc), is_transient(exc))
            result.failures.append(failure)
            log.error("inventory: %s", failure)
            continue
        result.counts += counts
        result.records += len(records)
        result.stores_ok.append(store_id)
        result.per_store[store_id] = {"products": len(records), **counts.as_dict()}
        say(f"store {store_id}: {len(records)} inventory levels ({counts.deleted} delisted)")
    result.seconds = time.monotonic() - t0
    return result
