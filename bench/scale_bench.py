"""Scale benchmark: a chain's years of history in the warehouse, and what an hour, a day, a
reconciliation and the analysts' queries cost at each size.

    ./dev python bench/scale_bench.py --sizes 0 1000000 10000000 --json /tmp/scale.json

The warehouse is a database of its own (``--database``, default ``taptouch_scale``) on the server
of ``--database-url`` (an admin URL; default ``$TAPTOUCH_DATABASE_URL``, else
``postgresql://postgres@127.0.0.1:5432/postgres``), migrated (``pipelines.warehouse.migrations``)
and given the analytics views (``pipelines.warehouse.views.apply_views``) as the project does.

Build: the sandbox's own generator (``taptouch_sandbox.data.OrderData``: 200 stores, about 68
orders per store and local day, so two years hold about 10 million orders) serves each order's
exact JSON text; the texts go through the loader's merge path (``OrderWindowLoad``) one local day
of every store per window, newest day first, until the warehouse holds at least the size asked.
Every order whose id is a multiple of 499 (``--deleted-every``) is then soft-deleted (``deleted_at`` set), as the reconciliation leaves an
order deleted at the source. ``--build-workers`` processes (default 2) build days at once: one's staging overlaps another's merge. The build is resumable: the days built are recorded in
``scale_bench.built_days`` and a later run (same ``--database``) goes on from there; ``--fresh``
starts over.

At each size, in this order: the analysts' queries (``--query-runs`` each, p50/p95, the slowest's
``EXPLAIN (ANALYZE, BUFFERS)`` kept), storage per order, an hourly window (one store: a previous
hour of ``--hourly-orders`` untimed, then ``--hourly-orders`` new orders and ``--hourly-edits``
edits of the previous hour's, timed, then the orders asset's money and aggregates checks over that
run's windows; ``--repeats`` times, median), a busy day's window
(``--busy-day-orders`` new orders over up to 4 stores), the reconciliation of one store
(``pipelines.reconcile.reconcile_orders``, 7 days, against the in-process sandbox holding the same
orders), and last a day of edits (24 hourly windows of every store: a new day of orders, and new
versions of a tenth of them and of a tenth of the last built day) with the bloat it leaves.

CPU etiquette: the backends of the bench's connections get the bench's own niceness
(``nice -n 19 ./dev python bench/scale_bench.py ...`` slows the server's work for it too) when the
server runs on this machine and allows it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from pipelines.warehouse import aggregates  # noqa: E402
from pipelines.warehouse.db import first_value, libpq_url, one_row, with_database  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_DATABASE = "taptouch_scale"
END_DATE = date(2026, 11, 30)  # the newest built local day; the month and quarter queried end here
PAGE_SIZE = 500
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
MONTH = (date(2026, 11, 1), date(2026, 12, 1))
QUARTER = (date(2026, 9, 1), date(2026, 12, 1))
STATE_DDL = """
create schema if not exists scale_bench;
create table if not exists scale_bench.built_days (
    business_day date primary key, orders integer not null, seconds real not null,
    built_at timestamptz not null default now());
create table if not exists scale_bench.future_days (used integer not null);
insert into scale_bench.future_days select 0 where not exists (select from scale_bench.future_days);
"""


@dataclass(frozen=True)
class Scale:
    """What the run builds and measures (the command line)."""

    stores: int = 200
    orders_per_day: int = 66  # the sandbox's mean per store and day before its weekday factors
    seed: int = 1
    hourly_orders: int = 500
    hourly_edits: int = 50
    busy_day_orders: int = 20_000
    query_runs: int = 20
    repeats: int = 3
    reconcile_days: int = 7
    deleted_every: int = 499  # built orders whose id is a multiple of this are soft-deleted (about 0.2%)


# ------------------------------------------------------------------------------------------------
# processes and clocks


def follow_niceness(conn: psycopg.Connection) -> None:
    """Give the connection's backend this process's niceness (when local and permitted)."""
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    if mine <= 0:
        return
    with contextlib.suppress(OSError):  # another machine's backend, or not ours to renice
        os.setpriority(os.PRIO_PROCESS, conn.info.backend_pid, mine)


def backend_cpu_s(conn: psycopg.Connection) -> float | None:
    """CPU seconds (user + system) the connection's backend used so far, when it runs here."""
    try:
        fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stopwatch:
    """Wall, this process's CPU and the backend's CPU between ``start`` and ``stop``."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.wall0, self.cpu0, self.server0 = time.perf_counter(), time.process_time(), backend_cpu_s(conn)

    def lap(self) -> float:
        return time.perf_counter() - self.wall0

    def stop(self) -> dict:
        server = backend_cpu_s(self.conn)
        return {
            "wall_s": round(self.lap(), 4),
            "client_cpu_s": round(time.process_time() - self.cpu0, 4),
            "server_cpu_s": None if server is None or self.server0 is None else round(server - self.server0, 4),
        }


def connect(url: str) -> psycopg.Connection:
    conn = psycopg.connect(libpq_url(url), autocommit=True)
    follow_niceness(conn)
    return conn


# ------------------------------------------------------------------------------------------------
# the data: the sandbox's generator


def generator(scale: Scale, end: date, orders_per_day: int | None = None, days: int = 1):
    from taptouch_sandbox import SandboxConfig
    from taptouch_sandbox.data import OrderData

    config = SandboxConfig(
        seed=scale.seed,
        stores=scale.stores,
        days=days,
        end_date=end,
        orders_per_day=orders_per_day or scale.orders_per_day,
    )
    return OrderData(config, end)


def day_ids(data, store_idx: int, day: date, limit: int | None = None) -> list[int]:
    """The ids of a store's orders created on a local day, in the generator's order."""
    ids: list[int] = []
    ordinal = day.toordinal()
    while limit is None or len(ids) < limit:
        oid = data.order_id(store_idx, ordinal, len(ids))
        if data.decode_id(oid) is None:
            break
        ids.append(oid)
    return ids


def pages(data, store_id: int, ids: list[int]) -> list[tuple[int, list[bytes]]]:
    """The orders as the API pages them: (store, up to PAGE_SIZE exact JSON texts)."""
    texts = [data.order_text(oid).encode() for oid in ids]
    return [(store_id, texts[i : i + PAGE_SIZE]) for i in range(0, len(texts), PAGE_SIZE)]


def load_window(conn: psycopg.Connection, window: str, store_pages: list[tuple[int, list[bytes]]]) -> dict:
    """One window through the loader's own path, timed: staging, then the merge (``finish``, after
    ``close_staging`` where the loader has it)."""
    from pipelines.warehouse.loader import OrderWindowLoad, store_timezones

    zones = store_timezones(conn)  # as the asset passes its run's store listing's zones
    watch = Stopwatch(conn)
    with OrderWindowLoad(conn, window=window, run_id="scale-bench", timezones=zones) as load:
        for store_id, page in store_pages:
            load.add_page(store_id, page)
        close_staging = getattr(load, "close_staging", None)  # loaders before it: finish() does it
        if close_staging is not None:
            close_staging()
        staged = watch.lap()
        counts = load.finish()
    out = watch.stop()
    out.update(
        merge_s=round(out["wall_s"] - staged, 4),
        orders=sum(len(p) for _, p in store_pages),
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        quarantined=counts.quarantined,
    )
    return out


def next_future_day(conn: psycopg.Connection) -> date:
    """A local day after the build's newest, never used before (measurement orders get fresh ids)."""
    used = first_value(conn.execute("update scale_bench.future_days set used = used + 1 returning used"))
    return END_DATE + timedelta(days=used)


# ------------------------------------------------------------------------------------------------
# database and build


def prepare_database(admin_url: str, name: str, *, fresh: bool) -> str:
    """The bench's database (created when missing; dropped first with ``fresh``), migrated, with the
    analytics views and the bench's own bookkeeping. Returns its URL."""
    from pipelines.warehouse.migrations import migrate
    from pipelines.warehouse.views import apply_views

    with psycopg.connect(libpq_url(admin_url), autocommit=True) as admin:
        if fresh:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        if not admin.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
            admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = with_database(admin_url, name)
    migrate(url)
    with connect(url) as conn:
        apply_views(conn)
        conn.execute(STATE_DDL)
        with contextlib.suppress(psycopg.Error):  # not on the server: the bloat figures are n_dead_tup only
            conn.execute("create extension if not exists pgstattuple")
    return url


def load_chain_stores(conn: psycopg.Connection, scale: Scale) -> list[int]:
    """The chain's store records through the loader; returns the store ids."""
    from pipelines.warehouse.loader import load_stores

    data = generator(scale, END_DATE)
    load_stores(conn, [s.text.encode() for s in data.stores])
    return data.store_ids()


def built(conn: psycopg.Connection) -> tuple[set[date], int]:
    """(the local days built, orders built)."""
    rows = conn.execute("select business_day, orders from scale_bench.built_days").fetchall()
    return {day for day, _ in rows}, sum(n for _, n in rows)


def build_day(conn: psycopg.Connection, data, day: date, deleted_every: int) -> int:
    """One local day of every store: one window through the loader, then its deletions."""
    store_pages: list[tuple[int, list[bytes]]] = []
    deleted: list[int] = []
    for store in data.stores:
        ids = day_ids(data, store.idx, day)
        store_pages += pages(data, store.id, ids)
        deleted += [oid for oid in ids if oid % deleted_every == 0]
    started = time.perf_counter()
    result = load_window(conn, f"scale-build-{day}", store_pages)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "update taptouch.orders set deleted_at = %s where order_id = any(%s)",
            (datetime.combine(day + timedelta(days=2), dtime(3), UTC), deleted),
        )
        aggregates.refresh_orders(cur, deleted)  # as the reconciliation does for the orders it deletes
        conn.execute(
            "insert into scale_bench.built_days (business_day, orders, seconds) values (%s, %s, %s)"
            " on conflict (business_day) do nothing",
            (day, result["orders"], time.perf_counter() - started),
        )
    return result["orders"]


def prove_built_windows(conn: psycopg.Connection) -> dict:
    """A complete listing proof (``taptouch.listing_proofs``, as the orders asset writes one per
    store and window it listed whole) for every store and UTC window the warehouse holds orders of
    and has no proof for: the build loads through ``OrderWindowLoad`` alone, without the asset's
    listing, and ``day_complete`` should be measured on a warehouse whose days are proven. The
    proofs' sets (``listing_proof_orders``) are not written (only the check ``orders_proven`` reads
    them). Written with the coverage trigger off, then ``taptouch.business_day_coverage`` refreshed
    per store (one set-based pass each), as migration 0020 does."""
    watch = Stopwatch(conn)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("alter table taptouch.listing_proofs disable trigger business_day_coverage")
        cur.execute(
            """
            insert into taptouch.listing_proofs (store_id, "window", window_start, window_end, complete,
                covered_from, listed_from, listed_at, settled_at, listed_orders, first_updated_at,
                last_updated_at, proved_by, proved_at, account)
            select o.store_id, to_char(o.utc_day, 'YYYY-MM-DD'), o.utc_day::timestamp at time zone 'UTC',
                   (o.utc_day + 1)::timestamp at time zone 'UTC', true, o.utc_day::timestamp at time zone 'UTC',
                   o.utc_day::timestamp at time zone 'UTC', now(), now() - interval '5 minutes', o.orders,
                   o.first_at, o.last_at, 'scale-bench', now(), s.account
            from (select store_id, (updated_at at time zone 'UTC')::date as utc_day, count(*) as orders,
                         min(updated_at) as first_at, max(updated_at) as last_at
                  from taptouch.orders group by 1, 2) as o
            join taptouch.stores as s using (store_id)
            where o.utc_day < current_date
            on conflict (store_id, "window") do nothing
            """
        )
        written = cur.rowcount
        cur.execute("alter table taptouch.listing_proofs enable trigger business_day_coverage")
        if written:
            cur.execute("select taptouch.refresh_business_day_coverage(store_id, null, null) from taptouch.stores")
    out = watch.stop()
    out["proofs_written"] = written
    return out


_WORKER: dict[str, Any] = {}


def _worker_start(url: str, scale: Scale) -> None:
    """A build worker's process: its own connection and generator, kept for its life."""
    _WORKER.update(conn=connect(url), data=generator(scale, END_DATE, days=3650), deleted_every=scale.deleted_every)


def _worker_build(day: date) -> int:
    return build_day(_WORKER["conn"], _WORKER["data"], day, _WORKER["deleted_every"])


def days_to_build(done: set[date]) -> Iterator[date]:
    """The local days not built yet, newest first (a build interrupted with days in flight may
    leave gaps; a later run fills them first)."""
    day = END_DATE
    while True:
        if day not in done:
            yield day
        day -= timedelta(days=1)


def _grow_in_parallel(
    url: str,
    scale: Scale,
    target: int,
    workers: int,
    todo: Iterator[date],
    done: set[date],
    orders: int,
    report: Callable[[int], None],
) -> int:
    """:func:`grow`'s days built by ``workers`` processes; returns the orders built."""
    if orders >= target:
        return orders
    per_day = scale.stores * scale.orders_per_day  # an estimate (weekdays differ), to stop handing out
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start, initargs=(url, scale)) as pool:
        running: dict[Future[int], date] = {}
        while running or orders < target:
            while len(running) < workers and orders + per_day * len(running) < target:
                day = next(todo)
                running[pool.submit(_worker_build, day)] = day
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                orders += future.result()  # a worker's failure stops the build (the days done stay)
                done.add(running.pop(future))
            report(orders)
    return orders


def grow(conn: psycopg.Connection, url: str, scale: Scale, target: int, workers: int = 1) -> dict:
    """Build days (newest first, from where an earlier run stopped) until ``target`` orders are in.

    With ``workers`` > 1 that many processes build days at once, each one window (one local day of
    every store) at a time through its own connection: one's staging (the generator and the client's
    record boundary, in Python) overlaps another's merge (the loader's merges take the orders merge
    lock, so they never run at the same time). Days are handed out while the orders built plus a
    day's estimate for each day in flight stay under ``target``."""
    done, orders = built(conn)
    start_orders, watch, last_report = orders, Stopwatch(conn), time.perf_counter()
    todo = days_to_build(done)

    def report(orders: int) -> None:
        nonlocal last_report
        if time.perf_counter() - last_report > 60:
            last_report = time.perf_counter()
            print(
                f"  built {orders:,} orders ({len(done)} days), {(orders - start_orders) / watch.lap():,.0f} orders/s",
                file=sys.stderr,
                flush=True,
            )

    if workers <= 1:
        data = generator(scale, END_DATE, days=3650)
        while orders < target:
            day = next(todo)
            orders += build_day(conn, data, day, scale.deleted_every)
            done.add(day)
            report(orders)
    else:
        orders = _grow_in_parallel(url, scale, target, workers, todo, done, orders, report)
    out = watch.stop()
    added = orders - start_orders
    vacuum = time.perf_counter()
    # always, not only after building: a build stopped part-way (resumable) never reached it, and
    # where autovacuum is off (this machine's CI server) the planner would see stale statistics, and
    # no page of the sales aggregates would be all-visible (analytics.product_sales reads a store's
    # dates from migration 0022's covering index alone only where its pages are)
    conn.execute(
        "vacuum (analyze) taptouch.orders, taptouch.order_items, taptouch.order_payments,"
        " taptouch.order_refunds, taptouch.stores, taptouch.order_history, "
        + ", ".join(f"taptouch.{table}" for table in aggregates.TABLES)
    )
    out.update(
        days=len(done),
        workers=workers,
        orders_built=orders,
        orders_added=added,
        orders_per_s=round(added / out["wall_s"]) if added else None,
        vacuum_analyze_s=round(time.perf_counter() - vacuum, 2),
    )
    return out


# ------------------------------------------------------------------------------------------------
# the analysts' queries


QUERIES = {
    "store_month_daily": (
        "select business_date, order_count, net_sales from analytics.daily_store_sales"
        " where store_id = %(store)s and business_date >= %(m0)s and business_date < %(m1)s order by business_date"
    ),
    "chain_month_daily": (
        "select business_date, sum(order_count), sum(net_sales) from analytics.daily_store_sales"
        " where business_date >= %(m0)s and business_date < %(m1)s group by business_date order by business_date"
    ),
    "store_quarter_top_products": (
        "select product_id, product_name, sum(units) as units, sum(net_item_sales) as sales"
        " from analytics.product_sales where store_id = %(store)s and business_date >= %(q0)s"
        " and business_date < %(q1)s group by product_id, product_name order by sales desc limit 20"
    ),
    "store_month_hourly": (
        "select local_hour, sum(order_count), sum(net_sales) from analytics.hourly_sales"
        " where store_id = %(store)s and business_date >= %(m0)s and business_date < %(m1)s"
        " group by local_hour order by local_hour"
    ),
    "month_payment_mix": (
        "select method, sum(payment_count), sum(amount) from analytics.payment_mix"
        " where business_date >= %(m0)s and business_date < %(m1)s group by method order by 3 desc"
    ),
}


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def measure_query(conn: psycopg.Connection, query: str, store_ids: list[int], runs: int) -> dict:
    """``runs`` timed runs (run i asks for store i of the chain), p50/p95 (nearest rank), and the
    plan of the slowest run's parameters under EXPLAIN (ANALYZE, BUFFERS)."""
    times: list[tuple[float, dict]] = []
    for i in range(runs):
        params = {
            "store": store_ids[i % len(store_ids)],
            "m0": MONTH[0],
            "m1": MONTH[1],
            "q0": QUARTER[0],
            "q1": QUARTER[1],
        }
        started = time.perf_counter()
        rows = conn.execute(query, params).fetchall()
        times.append(((time.perf_counter() - started) * 1000, params))
        if i == 0:
            first_rows = len(rows)
    slowest = max(times, key=lambda t: t[0])[1]
    plan = conn.execute("explain (analyze, buffers) " + query, slowest).fetchall()
    ms = [t for t, _ in times]
    return {
        "p50_ms": round(nearest_rank(ms, 0.5), 2),
        "p95_ms": round(nearest_rank(ms, 0.95), 2),
        "runs_ms": [round(t, 2) for t in ms],
        "rows": first_rows,
        "slowest_params": {k: str(v) for k, v in slowest.items()},
        "explain_slowest": "\n".join(r[0] for r in plan),
    }


# ------------------------------------------------------------------------------------------------
# storage and bloat


def storage(conn: psycopg.Connection) -> dict:
    """Bytes per order of every non-empty taptouch table: its heap, TOAST and indexes."""
    orders = first_value(conn.execute("select count(*) from taptouch.orders"))
    rows = conn.execute(
        "select c.relname, pg_relation_size(c.oid),"
        " coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), pg_indexes_size(c.oid)"
        " from pg_class c join pg_namespace n on n.oid = c.relnamespace"
        " where n.nspname = 'taptouch' and c.relkind = 'r' order by 1"
    ).fetchall()
    tables = {
        name: {"heap": heap, "toast": toast, "indexes": idx}
        for name, heap, toast, idx in rows
        if heap + toast > 8192 * 2 or name.startswith("order")
    }
    per = {part: sum(t[part] for t in tables.values()) for part in ("heap", "toast", "indexes")}
    per_order = {part: round(v / orders, 1) if orders else None for part, v in per.items()}
    per_order["total"] = round(sum(per.values()) / orders, 1) if orders else None
    return {"orders": orders, "bytes": tables, "bytes_per_order": per_order}


BLOAT_TABLES = ("orders", "order_items", "order_payments", "order_refunds")


def table_stats(conn: psycopg.Connection) -> dict:
    """n_live_tup, n_dead_tup and autovacuum count of the order tables (statistics flushed first)."""
    conn.execute("select pg_stat_force_next_flush()")
    time.sleep(1.5)
    conn.execute("select pg_stat_clear_snapshot()")
    rows = conn.execute(
        "select relname, n_live_tup, n_dead_tup, autovacuum_count from pg_stat_user_tables"
        " where schemaname = 'taptouch' and relname = any(%s)",
        (list(BLOAT_TABLES),),
    ).fetchall()
    return {r[0]: {"live": r[1], "dead": r[2], "autovacuums": r[3]} for r in rows}


def dead_share(conn: psycopg.Connection) -> dict:
    """pgstattuple_approx of the order tables: dead tuples and free space, % of the table (empty
    when the extension is not installed)."""
    out: dict = {}
    if not conn.execute("select 1 from pg_extension where extname = 'pgstattuple'").fetchone():
        return out
    for table in BLOAT_TABLES:
        row = one_row(
            conn.execute(
                "select dead_tuple_percent, approx_free_percent, table_len from pgstattuple_approx(%s::regclass)",
                (f"taptouch.{table}",),
            )
        )
        out[table] = {"dead_pct": round(row[0], 2), "free_pct": round(row[1], 2), "bytes": row[2]}
    return out


def edited_text(data, oid: int, hour: int) -> bytes:
    """A new version of an order, edited ``hour`` hours after its day began: a refund on a sale,
    else the order touched (updated_at moves on)."""
    status = data.order(oid)["status"]
    changes: dict[str, Any] = {"status": "partially_refunded"} if status == "completed" else {}
    changes["updated_at"] = datetime.combine(date.fromordinal(data.decode_id(oid)[1]), dtime(0), UTC) + timedelta(
        days=1, hours=hour
    )
    data.edit_order(oid, changes)
    return data.order_text(oid).encode()


# ------------------------------------------------------------------------------------------------
# the measured windows


def hourly_window(conn: psycopg.Connection, scale: Scale, store_id: int, store_idx: int) -> dict:
    """One store's previous hour (untimed), then an hour of new orders and edits of that previous
    hour's orders, timed."""
    day = next_future_day(conn)
    n = scale.hourly_orders
    data = generator(scale, day, orders_per_day=min(8000, math.ceil(2 * n / 0.76) + 1))
    ids = day_ids(data, store_idx, day, limit=2 * n)
    previous, new = ids[:n], ids[n:]
    load_window(conn, f"scale-hour-before-{day}", pages(data, store_id, previous))
    edits = [edited_text(data, oid, 1) for oid in previous[: scale.hourly_edits]]
    store_pages = pages(data, store_id, new)
    store_pages += [(store_id, edits[i : i + PAGE_SIZE]) for i in range(0, len(edits), PAGE_SIZE)]
    out = load_window(conn, f"scale-hour-{day}", store_pages)
    start = datetime.combine(day, dtime(0), UTC)
    out["checks"] = checks_after(conn, start, start + timedelta(days=2))  # the new orders' day and the edits'
    return out


def checks_after(conn: psycopg.Connection, start: datetime, end: datetime) -> dict:
    """The orders asset's two heaviest checks after a run, over its windows ``[start, end)``: the
    money reconciliation (``money_check.reconcile``) and the sales aggregates' exactness
    (``aggregates.mismatches`` over ``aggregates.TOUCHED``, as ``aggregates.check_result``)."""
    from pipelines.warehouse import money_check

    watch = time.perf_counter()
    money = money_check.reconcile(conn, start, end)
    money_s = time.perf_counter() - watch
    watch = time.perf_counter()
    with conn.transaction(), psycopg.ClientCursor(conn) as cur:
        found = aggregates.mismatches(cur, aggregates.TOUCHED, {"start": start, "end": end, "account": None})
    return {
        "money_s": round(money_s, 4),
        "money_orders": money.orders_checked,
        "money_passed": money.passed,
        "aggregates_s": round(time.perf_counter() - watch, 4),
        "aggregates_exact": not found,
    }


def busy_day_window(conn: psycopg.Connection, scale: Scale, stores: list[tuple[int, int]]) -> dict:
    """A busy UTC day of new orders over up to 4 stores, in one window."""
    day = next_future_day(conn)
    stores = stores[:4]
    per_store = math.ceil(scale.busy_day_orders / len(stores))
    data = generator(scale, day, orders_per_day=min(8000, math.ceil(per_store / 0.76) + 1))
    store_pages = []
    for store_id, idx in stores:
        store_pages += pages(data, store_id, day_ids(data, idx, day, limit=per_store))
    out = load_window(conn, f"scale-busy-{day}", store_pages)
    out["orders_per_s"] = round(out["orders"] / out["wall_s"])
    return out


def reconcile_store(conn: psycopg.Connection, scale: Scale, store_id: int, store_idx: int) -> dict:
    """``reconcile_orders`` for one store against the in-process sandbox holding exactly the built
    days of that store, with the soft-deleted orders deleted at the source."""
    from pipelines.reconcile import reconcile_orders
    from taptouch_resource import TaptouchClient
    from taptouch_sandbox import Sandbox, SandboxConfig

    days = len(built(conn)[0])  # the build leaves no gap once grow() returns: the newest days, contiguous
    config = SandboxConfig(
        seed=scale.seed,
        stores=scale.stores,
        days=max(days, 1),
        end_date=END_DATE,
        orders_per_day=scale.orders_per_day,
        empty_store_ids=(store_id,) if not days else (),
    )
    sb = Sandbox(config)
    data = generator(scale, END_DATE, days=3650)
    for k in range(days):
        for oid in day_ids(data, store_idx, END_DATE - timedelta(days=k)):
            if oid % scale.deleted_every == 0:
                sb.delete_order(oid)
    client = TaptouchClient(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
        page_size=PAGE_SIZE,
    )
    now = datetime.combine(END_DATE + timedelta(days=1), dtime(0), UTC)
    watch = Stopwatch(conn)
    result = reconcile_orders(
        client,
        conn,
        days=scale.reconcile_days,
        store_ids=[store_id],
        now=now,
        progress=lambda msg: None,
        run_id="scale-bench",
    )
    out = watch.stop()
    sr = result.stores[0] if result.stores else None
    out.update(
        failures=[f[1] for f in result.failures],
        listed=sr.listed if sr else 0,
        checked=sr.checked if sr else 0,
        repaired=sr.repaired if sr else 0,
        candidates=len(sr.candidates) if sr else 0,
        deleted=len(sr.deleted) if sr else 0,
        restored=len(sr.restored) if sr else 0,
        listed_from=sr.listed_from.isoformat() if sr and sr.listed_from else None,
    )
    return out


def edit_plan(ids: list[int], first_hour: int | None = None) -> dict[int, list[int]]:
    """hour -> the orders of ``ids`` edited in it. Orders of the day being loaded (``first_hour``
    None): every tenth, 1 to 5 hours after the hour it arrived. Older orders: every tenth, spread
    over the day from ``first_hour``."""
    plan: dict[int, list[int]] = {}
    for j, i in enumerate(range(0, len(ids), 10)):
        hour = first_hour + j % (24 - first_hour) if first_hour is not None else i * 24 // len(ids) + 1 + j % 5
        if hour < 24:
            plan.setdefault(hour, []).append(ids[i])
    return plan


def day_of_edits(conn: psycopg.Connection, scale: Scale, stores: list[tuple[int, int]]) -> dict:
    """24 hourly windows of every given store: a new day of orders, a tenth of them edited later in
    the day, and a tenth of the newest built day's orders edited; then the bloat, autovacuum at its
    defaults."""
    day = next_future_day(conn)
    data, old = generator(scale, day), generator(scale, END_DATE, days=3650)
    before = table_stats(conn)
    new = {sid: day_ids(data, idx, day) for sid, idx in stores}
    plans = {
        sid: (edit_plan(ids), edit_plan(day_ids(old, idx, END_DATE), 0))
        for (sid, idx), ids in zip(stores, new.values(), strict=True)
    }
    totals = {"windows": 24, "orders": 0, "inserted": 0, "updated": 0, "wall_s": 0.0, "merge_s": 0.0}
    for hour in range(24):
        store_pages = []
        for sid, ids in new.items():
            edits = [edited_text(data, oid, hour) for oid in plans[sid][0].get(hour, [])]
            edits += [edited_text(old, oid, hour) for oid in plans[sid][1].get(hour, [])]
            store_pages += pages(data, sid, ids[hour * len(ids) // 24 : (hour + 1) * len(ids) // 24])
            store_pages += [(sid, edits)] if edits else []
        result = load_window(conn, f"scale-edits-{day}-{hour:02d}", store_pages)
        for key in ("orders", "inserted", "updated", "wall_s", "merge_s"):
            totals[key] += result[key]
    after = table_stats(conn)
    settings: dict[str, str] = dict(
        conn.execute(
            "select name, setting from pg_settings where name in ('autovacuum',"
            " 'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_threshold')"
        ).fetchall()
    )
    return {
        "day": totals,
        "autovacuum_settings": settings,
        "before": before,
        "after": after,
        "pgstattuple_approx": dead_share(conn),
    }


# ------------------------------------------------------------------------------------------------
# one size, the run, the table


def measure_size(url: str, scale: Scale, target: int, workers: int = 1) -> dict:
    with connect(url) as conn:
        ids = load_chain_stores(conn, scale)
        build = grow(conn, url, scale, target, workers)
        build["proofs"] = prove_built_windows(conn)
        pairs = list(zip(ids, range(len(ids)), strict=True))
        reconciled, others = pairs[-1], pairs[:-1] or pairs
        out: dict[str, Any] = {"target": target, "load_avg_before": os.getloadavg(), "build": build, "queries": {}}
        for name, query in QUERIES.items():
            out["queries"][name] = measure_query(conn, query, ids, scale.query_runs)
            complete = query.replace(" where ", " where day_complete and ", 1)  # as docs/analytics.md advises
            out["queries"][f"{name} (complete days)"] = measure_query(conn, complete, ids, scale.query_runs)
        out["storage"] = storage(conn)
        runs = [hourly_window(conn, scale, *others[0]) for _ in range(scale.repeats)]
        out["hourly"] = {"runs": runs}
        for key in ("wall_s", "merge_s", "client_cpu_s", "server_cpu_s"):
            values = [r[key] for r in runs if r[key] is not None]
            out["hourly"][key] = statistics.median(values) if values else None
        for key in ("money_s", "aggregates_s"):
            out["hourly"][f"checks_{key}"] = statistics.median(r["checks"][key] for r in runs)
        out["busy_day"] = busy_day_window(conn, scale, others)
        out["reconcile"] = reconcile_store(conn, scale, *reconciled)
        out["bloat"] = day_of_edits(conn, scale, others)
        out["load_avg_after"] = os.getloadavg()
    return out


def number(value: float | None) -> str:
    return "-" if value is None else f"{value:,}"


def dead_added(result: dict, table: str, counter: str = "dead") -> int:
    """How much a pg_stat_user_tables counter of the table grew over the day of edits."""
    return result["bloat"]["after"][table][counter] - result["bloat"]["before"][table][counter]


def bloat_cell(result: dict, table: str) -> str:
    approx = result["bloat"]["pgstattuple_approx"].get(table)
    return "-" if approx is None else f"{approx['dead_pct']} / {approx['free_pct']}"


def rows_of_table(results: list[dict]) -> list[tuple[str, list[str]]]:
    def ms(v):
        return "-" if v is None else f"{v * 1000:,.0f}"

    rows = [
        ("orders built", [f"{r['build']['orders_built']:,}" for r in results]),
        (
            "orders in the warehouse (with earlier sizes' measurements)",
            [f"{r['storage']['orders']:,}" for r in results],
        ),
        ("build: orders/s (this run's increment)", [number(r["build"]["orders_per_s"]) for r in results]),
        ("hourly window: wall ms", [ms(r["hourly"].get("wall_s")) for r in results]),
        ("hourly window: merge ms", [ms(r["hourly"].get("merge_s")) for r in results]),
        ("hourly window: client CPU ms", [ms(r["hourly"].get("client_cpu_s")) for r in results]),
        ("hourly window: server CPU ms", [ms(r["hourly"].get("server_cpu_s")) for r in results]),
        ("hourly window: money check ms", [ms(r["hourly"].get("checks_money_s")) for r in results]),
        ("hourly window: aggregates check ms", [ms(r["hourly"].get("checks_aggregates_s")) for r in results]),
        ("busy day: wall s", [f"{r['busy_day']['wall_s']:.1f}" for r in results]),
        ("busy day: merge s", [f"{r['busy_day']['merge_s']:.1f}" for r in results]),
        ("busy day: orders/s", [f"{r['busy_day']['orders_per_s']:,}" for r in results]),
        ("reconcile 1 store: wall s", [f"{r['reconcile']['wall_s']:.1f}" for r in results]),
        ("reconcile 1 store: listed", [f"{r['reconcile']['listed']:,}" for r in results]),
    ]
    for name in [q for base in QUERIES for q in (base, f"{base} (complete days)")]:
        rows.append(
            (
                f"{name}: p50 / p95 ms",
                [
                    f"{r['queries'][name]['p50_ms']:,.0f} / {r['queries'][name]['p95_ms']:,.0f}"
                    if name in r["queries"]
                    else "-"
                    for r in results
                ],
            )
        )
    for part in ("heap", "toast", "indexes", "total"):
        rows.append((f"storage: {part} bytes/order", [number(r["storage"]["bytes_per_order"][part]) for r in results]))
    rows.append(
        (
            "day of edits: orders inserted / updated",
            [f"{r['bloat']['day']['inserted']:,} / {r['bloat']['day']['updated']:,}" for r in results],
        )
    )
    for table in ("orders", "order_items"):
        rows.append((f"day of edits: {table} dead tuples added", [f"{dead_added(r, table):,}" for r in results]))
        rows.append((f"day of edits: {table} dead % / free %", [bloat_cell(r, table) for r in results]))
    rows.append(
        (
            "day of edits: autovacuums (server's autovacuum)",
            [
                f"{sum(dead_added(r, t, 'autovacuums') for t in BLOAT_TABLES)} "
                f"({r['bloat']['autovacuum_settings'].get('autovacuum')})"
                for r in results
            ],
        )
    )
    return rows


def print_table(results: list[dict]) -> None:
    rows = rows_of_table(results)
    head = ["", *[f"{r['target']:,}" for r in results]]
    widths = [max(len(head[0]), *(len(label) for label, _ in rows))] + [
        max(len(head[i + 1]), *(len(cells[i]) for _, cells in rows)) for i in range(len(results))
    ]
    print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))))
    for label, cells in rows:
        print("  ".join([label.ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells, widths[1:], strict=True))]))


def code_version() -> dict:
    """The commit measured, and the files of the loader and the views changed since it, if any."""
    import subprocess

    git = ["git", "-C", str(ROOT)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", "pipelines", "sql"], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "changed": None}
    return {"commit": commit, "changed": changed}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[0, 1_000_000, 10_000_000],
        help="warehouse sizes (orders) to measure at, ascending",
    )
    p.add_argument("--database-url", default=os.environ.get("TAPTOUCH_DATABASE_URL") or DEFAULT_ADMIN_URL)
    p.add_argument("--database", default=DEFAULT_DATABASE, help="the bench's database (resumed when it exists)")
    p.add_argument("--fresh", action="store_true", help="drop the bench's database first")
    p.add_argument(
        "--build-only",
        action="store_true",
        help="build the warehouse up to the largest size and stop (measure later with the code of that moment)",
    )
    p.add_argument(
        "--build-workers",
        type=int,
        default=2,
        help="processes building days at once (one's staging overlaps another's merge; 1: one at a time)",
    )
    p.add_argument("--json", type=Path, help="write every figure (and the plans) here")
    p.add_argument(
        "--report",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="print the table of earlier runs' JSON files (their sizes side by side) and stop",
    )
    for field, value in asdict(Scale()).items():
        p.add_argument(f"--{field.replace('_', '-')}", type=int, default=value)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.report:
        results = [size for path in args.report for size in json.loads(path.read_text())["sizes"]]
        print_table(results)
        return {"sizes": results}
    scale = Scale(**{f: getattr(args, f) for f in asdict(Scale())})
    if sorted(args.sizes) != args.sizes:
        raise SystemExit("--sizes must ascend: the warehouse only grows")
    url = prepare_database(args.database_url, args.database, fresh=args.fresh)
    if args.build_only:
        with connect(url) as conn:
            load_chain_stores(conn, scale)
            build = grow(conn, url, scale, args.sizes[-1], args.build_workers)
        print(json.dumps(build), flush=True)
        return {"build": build}
    results = []
    for target in args.sizes:
        print(f"size {target:,}: building and measuring", file=sys.stderr, flush=True)
        results.append(measure_size(url, scale, target, args.build_workers))
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": code_version(),
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        },
        "database": args.database,
        "scale": asdict(scale),
        "end_date": str(END_DATE),
        "sizes": results,
    }
    with connect(url) as conn:
        report["machine"]["postgres"] = first_value(conn.execute("select version()"))
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
