"""Database faults and concurrency, through ``pipelines.sync.sync_orders_window``.

- :func:`terminate_mid_merge`: the merge is blocked on a row lock inside ``insert ... on conflict``
  and its backend is terminated (``pg_terminate_backend``): the sync raises a clear
  ``psycopg.OperationalError``, the tables are as before, and a rerun loads everything.
- :func:`statement_timeout`: the same merge under ``PostgresResource(statement_timeout_ms=...)``
  is cancelled (``QueryCanceled``); rollback; a rerun works.
- :func:`concurrent_runs`: two runs of the same window at once, and a backfill of daily windows
  overlapping "hourly" runs of a shifted window, each on its own connection: no error, no
  duplicate, the warehouse equals the truth.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import psycopg

from pipelines.sync import day_window, sync_stores
from pipelines.warehouse.db import connect
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.windows import load_window

from .check import Diff, compare, reset

END_DATE = date(2026, 11, 27)


def make_sandbox(seed: int = 3, **kw) -> Sandbox:
    cfg = dict(seed=seed, stores=2, days=3, end_date=END_DATE, orders_per_day=30)
    cfg.update(kw)
    return Sandbox(SandboxConfig(**cfg))


def make_client(sb: Sandbox, **kw) -> TaptouchClient:
    return TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
        **kw,
    )


def full_range() -> tuple[datetime, datetime]:
    start, _ = day_window(END_DATE - timedelta(days=5))
    _, end = day_window(END_DATE + timedelta(days=2))
    return start, end


def days() -> list[date]:
    return [END_DATE - timedelta(days=5) + timedelta(days=i) for i in range(8)]


def load_all(client: TaptouchClient, conn: psycopg.Connection) -> None:
    sync_stores(client, conn)
    for d in days():
        s, e = day_window(d)
        r = load_window(client, conn, d.isoformat(), s, e)
        assert not r.failures, r.failures


def snapshot(conn: psycopg.Connection) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(
            "select o.order_id, o.updated_at, o.total, o.status, count(i.item_id) from taptouch.orders o"
            " left join taptouch.order_items i using (order_id) group by 1 order by 1"
        )
        return cur.fetchall()


@dataclass
class FaultOutcome:
    kind: str
    edited_order_id: int = 0  # the order republished (as "refunded") whose merge the fault hits
    edited_updated_at: datetime | None = None  # the new version's updated_at
    error: str = ""  # "ExceptionType: first line" of what the failed sync raised
    rows_before: list[tuple] = field(default_factory=list)  # snapshot() before the failed run
    rows_after_failure: list[tuple] = field(default_factory=list)  # snapshot() right after it
    diff: Diff = field(default_factory=Diff)  # the warehouse against the truth after a rerun

    @property
    def unchanged(self) -> bool:  # the failed run left the tables as they were
        return self.rows_after_failure == self.rows_before

    @property
    def retry_ok(self) -> bool:  # a rerun made the warehouse equal the truth
        return self.diff.ok

    @property
    def ok(self) -> bool:
        return bool(self.error) and self.unchanged and self.retry_ok


def _blocked_merge(db_url: str, sb: Sandbox, victim: psycopg.Connection, *, terminate: bool) -> FaultOutcome:
    """Load, publish a new version, lock its row elsewhere, sync its window on ``victim``."""
    outcome = FaultOutcome("terminate_mid_merge" if terminate else "statement_timeout")
    client = make_client(sb)
    with connect(db_url, autocommit=True) as conn:
        reset(conn)
        load_all(client, conn)
        oid = next(iter(sb.orders(sb.store_ids()[0])))["id"]
        new = sb.edit_order(oid, status="refunded")
        outcome.edited_order_id, outcome.edited_updated_at = oid, datetime.fromisoformat(new["updated_at"])
        day = datetime.fromisoformat(new["updated_at"]).astimezone(UTC).date()
        outcome.rows_before = snapshot(conn)
        blocker = connect(db_url, autocommit=False)
        blocker.execute("select 1 from taptouch.orders where order_id = %s for update", (oid,))
        errors: list[BaseException] = []

        def run() -> None:
            s, e = day_window(day)
            try:
                load_window(client, victim, day.isoformat(), s, e)
            except BaseException as exc:  # noqa: BLE001 - inspected below
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        pid = victim.info.backend_pid
        if terminate:
            for _ in range(200):  # until the merge waits on the row lock, inside the insert
                row = conn.execute(
                    "select wait_event_type, left(query, 60) from pg_stat_activity where pid = %s", (pid,)
                ).fetchone()
                if row and row[0] == "Lock" and "taptouch.orders" in row[1]:
                    break
                time.sleep(0.02)
            conn.execute("select pg_terminate_backend(%s)", (pid,))
        t.join(60)
        blocker.rollback()
        blocker.close()
        if errors:
            outcome.error = f"{type(errors[0]).__name__}: {str(errors[0]).strip().splitlines()[0]}"
        outcome.rows_after_failure = snapshot(conn)
        s, e = day_window(day)
        with connect(db_url, autocommit=True) as again:
            load_window(client, again, day.isoformat(), s, e)
        outcome.diff = compare(conn, sb, *full_range())
    client.close()
    return outcome


def terminate_mid_merge(db_url: str, seed: int = 3) -> FaultOutcome:
    victim = connect(db_url, autocommit=True)
    try:
        return _blocked_merge(db_url, make_sandbox(seed), victim, terminate=True)
    finally:
        victim.close()


def statement_timeout(db_url: str, seed: int = 4, timeout_ms: int = 500) -> FaultOutcome:
    victim = PostgresResource(database_url=db_url, statement_timeout_ms=timeout_ms).connect()
    victim.autocommit = True
    try:
        return _blocked_merge(db_url, make_sandbox(seed), victim, terminate=False)
    finally:
        victim.close()


@dataclass
class ConcurrencyOutcome:
    runs: int = 0
    errors: list[str] = field(default_factory=list)
    inserted: int = 0
    diff: Diff = field(default_factory=Diff)

    @property
    def ok(self) -> bool:
        return not self.errors and self.diff.ok


def concurrent_runs(db_url: str, seed: int = 5) -> ConcurrencyOutcome:
    """Two runs of each daily window at once, then a backfill racing shifted 'hourly' windows
    while orders are edited. Every run has its own connection and client."""
    rng = random.Random(seed)
    sb = make_sandbox(seed)
    out = ConcurrencyOutcome()
    lock = threading.Lock()

    def run(start: datetime, end: datetime, label: str) -> None:
        client = make_client(sb, page_size=rng.choice([7, 50]))
        try:
            with connect(db_url, autocommit=True) as c:
                r = load_window(client, c, label, start, end, batch_size=rng.choice([5, 500]))
            with lock:
                out.runs += 1
                out.inserted += r.counts.inserted
                out.errors.extend(str(f) for f in r.failures)
        except Exception as exc:  # noqa: BLE001 - any error surfaced to the user is a failure here
            with lock:
                out.errors.append(f"{label}: {type(exc).__name__}: {exc}")
        finally:
            client.close()

    with connect(db_url, autocommit=True) as conn:
        reset(conn)
        sync_stores(make_client(sb), conn)
        # 1. the same partition twice at once
        threads = []
        for d in days():
            s, e = day_window(d)
            threads += [threading.Thread(target=run, args=(s, e, d.isoformat())) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        first_inserted = out.inserted
        # 2. a backfill (daily windows) racing hourly runs over shifted, overlapping windows, with edits
        oids = [o["id"] for sid in sb.store_ids() for o in sb.orders(sid)]
        for oid in rng.sample(oids, 5):
            sb.edit_order(oid, status=rng.choice(["refunded", "voided"]))
        threads = []
        for d in days():
            s, e = day_window(d)
            threads.append(threading.Thread(target=run, args=(s, e, d.isoformat())))
            hs = s + timedelta(hours=rng.randint(1, 23))
            threads.append(
                threading.Thread(
                    target=run, args=(hs, hs + timedelta(hours=rng.choice([1, 6, 25])), f"hourly {hs.isoformat()}")
                )
            )
        rng.shuffle(threads)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out.inserted = first_inserted
        out.diff = compare(conn, sb, *full_range())
    return out
