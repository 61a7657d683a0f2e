"""End-to-end sync benchmark: this project next to dlt and next to the two ceilings, in one run.

    ./dev python bench/sync_bench.py --orders 100000                 # issue 6: sync side by side
    ./dev python bench/sync_bench.py --orders 10000 100000 --mode loader   # issue 3: loader vs raw COPY

Every contender runs in its own subprocess (its peak RSS and CPU time are its own), against a fresh
sandbox server in yet another process (``python -m taptouch_sandbox serve``, real HTTP on
loopback), and a fresh empty database on the Postgres server of ``--database-url`` (default:
``$TAPTOUCH_DATABASE_URL``, else ``postgresql://postgres@127.0.0.1:5432/postgres``).

Contenders (``--mode sync``):
  api          API ceiling: every order page fetched through TaptouchClient (4 stores in parallel,
               one UTC day per window, as the asset does) and discarded.
  copy         DB ceiling: a raw COPY (text format, pre-built files) of the same rows (orders with
               raw, items, payments, refunds) into plain tables without keys or indexes.
  ours         pipelines.sync: sync_stores, then sync_orders_windows over every UTC day as one
               ranged run of the ``orders`` asset loads them (two windows in flight: one merging
               while the next is fetched), into the migrated warehouse.
  ours-serial  the same, one window at a time (``in_flight=1``, as before the overlap).
  ours-resync  the same windows again, nothing changed at the source (a full refresh: every page).
  ours-incremental  the same windows again as the hourly schedule re-runs them: each store asked
               only from its high-water mark minus TAPTOUCH_LOOKBACK's default (5 minutes).
  ours-2runs   ``ours`` as a Dagster backfill runs it with the ``taptouch_api`` pool limit at 2: the
               windows in runs of 10 (``BackfillPolicy.multi_run(10)``), two runs at a time, each
               its own process with its own client and connection (peak RSS: the largest process).
  dlt          dlt's rest_api source: OAuth2 client credentials, page-number paginator on
               index/count, stores -> orders per store (updated_from/updated_to = the whole
               range, one run), merge on ``id``, nested child tables, into Postgres.
  dlt-resync   the same dlt pipeline run again, nothing changed at the source.

``--mode loader`` (issue 3): OrderWindowLoad alone, fed pre-generated pages (one window holding
every order), timed around the loader calls only, next to the raw COPY of the same rows.

``--scenario busy-day`` (issue 23): one UTC day holding ~60,000 orders of 3 stores (``--orders``
sets the count), against one sandbox serving pages from its page cache (warmed before timing):
  api          the same ceiling, for that one window.
  ours         the ``orders`` asset's load of the window in this process (store listing, then
               sync_orders_windows in the asset's incremental mode, on a fresh warehouse), timed
               from the load's start (after start-up) to the end of its merge.
  ours-dagster ``dagster asset materialize --select orders --partition DAY``: start-up (from the
               command's launch to the load's start) and the load, from the run's event log.
  dlt          the same dlt pipeline, updated_from/updated_to = that window.

Volume: 4 stores x 500 orders per store per local day; ``--orders N`` picks the number of days
(10k -> 5 days, 100k -> 50, 1M -> 500). The sandbox's weekends are a little busier, so the real
count is ~1-2% above N; the table shows the real count.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# every contender, in the order a run measures them (--contenders picks some)
CONTENDERS = (
    "api",
    "copy",
    "ours",
    "ours-resync",
    "ours-incremental",
    "ours-serial",
    "ours-2runs",
    "ours-dagster",
    "dlt",
    "dlt-resync",
)
STORES = 4
ORDERS_PER_DAY = 500
END_DATE = date(2026, 11, 27)
SEED = 1
CLIENT_ID, CLIENT_SECRET = "sandbox-client", "sandbox-secret"
PAGE_SIZE = 500
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CHILD_TABLES = ("items", "payments", "refunds")
# --scenario busy-day (issue 23): one UTC day of a busy chain, pages served from the sandbox's cache.
BUSY_STORES = 3
BUSY_DAY = date(2026, 11, 26)  # the UTC window; the sandbox's local days 25-27 Nov cover it, edits included
BUSY_SANDBOX_DAYS = 3  # local days 25, 26, 27 (END_DATE)
BUSY_ORDERS = 60_000
BUSY_PER_DAY_FOR_60K = 18_500  # orders_per_day that puts 59,924 orders in BUSY_DAY's window (3 stores)
BUSY_CACHE_MB = 1024  # ~1 kB per order: room for the day's pages several times over
BUSY_CONTENDERS = ("api", "ours", "ours-dagster", "dlt")


# ------------------------------------------------------------------------------------------------
# volume and windows


def days_for(orders: int) -> int:
    return max(1, round(orders / (STORES * ORDERS_PER_DAY)))


def utc_windows(days: int) -> list:
    """The ``OrderWindow`` of each UTC day covering every order's updated_at: local days run ahead of
    or behind UTC by up to a day."""
    from pipelines.sync import OrderWindow

    first = END_DATE - timedelta(days=days)  # the first local day's orders start the UTC day before
    return [OrderWindow.day(first + timedelta(days=i)) for i in range((END_DATE + timedelta(days=1) - first).days + 1)]


def busy_orders_per_day(orders: int) -> int:
    """The sandbox's orders_per_day that puts about ``orders`` orders in the busy day's window."""
    return max(1, round(orders * BUSY_PER_DAY_FOR_60K / BUSY_ORDERS))


def spec_windows(spec: dict) -> list:
    """The windows a contender loads: the spec's UTC days (the busy day), else every UTC day of the volume."""
    from pipelines.sync import OrderWindow

    if spec.get("window_days"):
        return [OrderWindow.day(day) for day in spec["window_days"]]
    return utc_windows(spec["days"])


def sandbox_config(days: int, *, stores: int = STORES, orders_per_day: int = ORDERS_PER_DAY):
    from taptouch_sandbox import SandboxConfig

    return SandboxConfig(seed=SEED, stores=stores, days=days, orders_per_day=orders_per_day, end_date=END_DATE)


# ------------------------------------------------------------------------------------------------
# processes: sandbox server, contender subprocesses


class SandboxServer:
    """``python -m taptouch_sandbox serve --port 0`` in its own process."""

    def __init__(
        self,
        days: int,
        *,
        stores: int = STORES,
        orders_per_day: int = ORDERS_PER_DAY,
        page_cache_mb: int = 0,
        latency: float = 0.0,
    ):
        self.days, self.stores, self.orders_per_day, self.page_cache_mb = days, stores, orders_per_day, page_cache_mb
        self.latency = latency  # seconds the server waits before each answer (a remote API's round trip)
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def __enter__(self) -> SandboxServer:
        cmd = [
            sys.executable,
            "-m",
            "taptouch_sandbox",
            "serve",
            "--port",
            "0",
            "--seed",
            str(SEED),
            "--stores",
            str(self.stores),
            "--days",
            str(self.days),
            "--orders-per-day",
            str(self.orders_per_day),
            "--end-date",
            END_DATE.isoformat(),
            "--page-cache-mb",
            str(self.page_cache_mb),
            "--latency",
            str(self.latency),
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if "serving http://" not in line:
            self.__exit__(None, None, None)
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        self.url = line.split("serving ", 1)[1].split()[0]
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine, every core and process, from /proc/stat's
    ``cpu`` line (busy: user, nice, system, irq, softirq; total adds idle and iowait; steal, the
    time the hypervisor gave to others, is neither)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    user, nice, system, idle, iowait, irq, softirq = fields
    busy = user + nice + system + irq + softirq
    return busy, busy + idle + iowait


class _MachineSampler:
    """:func:`machine_jiffies` every 50 ms, with the time, while a contender runs: how busy the
    machine was over any interval of its run (:meth:`busy_share`)."""

    def __init__(self) -> None:
        self.samples = [(time.time(), *machine_jiffies())]
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.05):
            self.samples.append((time.time(), *machine_jiffies()))

    def stop(self) -> None:
        self.done.set()
        self.thread.join()
        self.samples.append((time.time(), *machine_jiffies()))

    def busy_share(self, start: float, end: float) -> float:
        """The share of every core's time busy from the last sample at or before ``start`` to the
        first at or after ``end`` (the whole run where the interval is outside it)."""
        first = max((x for x in self.samples if x[0] <= start), default=self.samples[0])
        last = min((x for x in self.samples if x[0] >= end), default=self.samples[-1])
        total = last[2] - first[2]
        return (last[1] - first[1]) / total if total > 0 else float("nan")


def _timed_interval(result: dict) -> tuple[float, float]:
    """The epochs of the contender's timed interval: the load's start to its merge (busy day's
    ``ours``), else ``started_at`` + ``wall_s``, else its whole life."""
    timing = result.get("timing") or {}
    if "load_at" in timing and "merged_at" in timing:
        return timing["load_at"], timing["merged_at"]
    if "started_at" in result:
        return result["started_at"], result["started_at"] + result["wall_s"]
    return 0.0, float("inf")


def run_child(name: str, spec: dict, log_dir: Path) -> dict:
    """Run one contender in a subprocess; its result JSON, with the peak RSS the kernel measured
    and how busy the whole machine's CPU was during its timed interval (``machine_busy``: the
    contender, its sandbox server and the PostgreSQL backends, and anything else running)."""
    out = log_dir / f"{name}.json"
    log = log_dir / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", name, json.dumps(spec), str(out)]
    spawned_at = time.time()
    sampler = _MachineSampler()
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=lf, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop()
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"contender {name} failed (exit {proc.returncode}); log {log}:\n{tail}")
    result = json.loads(out.read_text())
    # wait4's ru_maxrss would start from this (forking) process's own RSS: the child reports the
    # high-water mark of its own memory after exec (VmHWM), and of any process it waited for.
    result.setdefault("peak_rss_mb", usage.ru_maxrss / 1024)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    result["machine_busy"] = sampler.busy_share(*_timed_interval(result))
    result["spawned_at"] = spawned_at
    return result


# ------------------------------------------------------------------------------------------------
# databases


def admin_url(cli: str | None) -> str:
    return cli or os.environ.get("TAPTOUCH_DATABASE_URL", "").strip() or DEFAULT_ADMIN_URL


def fresh_database(admin: str, name: str, *, migrate: bool) -> str:
    import psycopg
    from psycopg import sql

    from pipelines.warehouse.db import libpq_url, with_database

    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = with_database(libpq_url(admin), name)
    if migrate:
        from pipelines.warehouse.migrations import migrate as run_migrations

        run_migrations(url)
    return url


def drop_database(admin: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    from pipelines.warehouse.db import libpq_url

    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


# ------------------------------------------------------------------------------------------------
# setup (untimed): the rows of the raw COPY, and the pages of the loader benchmark


def _text_cell(v) -> str:
    if v is None:
        return "\\N"
    if isinstance(v, str):
        s = v
    elif isinstance(v, (list, dict)):
        from taptouch_resource import jsonutil

        s = jsonutil.dumps(v)
    elif isinstance(v, bytes):
        s = v.decode("utf-8")
    elif isinstance(v, datetime):
        return v.isoformat()
    else:
        return str(v)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def build_copy_files(days: int, directory: Path, pages_file: Path | None = None) -> dict:
    """COPY text files of the warehouse rows of every order (the rows ours loads), from the sandbox
    in-process. With ``pages_file``: also the API pages (by store), pickled one after another."""
    from pipelines.warehouse import loader, records
    from taptouch_sandbox import Sandbox

    sb = Sandbox(sandbox_config(days))
    tz = {s["id"]: s["timezone"] for s in sb.stores()}
    names = {
        "orders": loader.ORDER_COLS + ("raw",),
        "items": loader.ITEM_COLS,
        "payments": loader.PAYMENT_COLS,
        "refunds": loader.REFUND_COLS,
    }
    files = {k: open(directory / f"{k}.tsv", "w", encoding="utf-8") for k in names}  # noqa: SIM115 - closed in finally
    counts = dict.fromkeys(names, 0)
    pf = open(pages_file, "wb") if pages_file else None  # noqa: SIM115 - closed in finally
    try:
        for store_id in sb.store_ids():
            page: list = []
            for record in sb.orders(store_id):
                raw = records.as_bytes(record)  # the bytes an API would send
                p = records.order_rows(raw, tz[store_id])
                row = list(p.order) + [p.raw]
                files["orders"].write("\t".join(map(_text_cell, row)) + "\n")
                counts["orders"] += 1
                for key, rows in (("items", p.items), ("payments", p.payments), ("refunds", p.refunds)):
                    for r in rows:
                        files[key].write("\t".join(map(_text_cell, r)) + "\n")
                        counts[key] += 1
                if pf:
                    page.append(raw)
                    if len(page) == PAGE_SIZE:
                        pickle.dump((store_id, page), pf, protocol=pickle.HIGHEST_PROTOCOL)
                        page = []
            if pf and page:
                pickle.dump((store_id, page), pf, protocol=pickle.HIGHEST_PROTOCOL)
    finally:
        for f in files.values():
            f.close()
        if pf:
            pf.close()
    return {
        "files": {k: str(directory / f"{k}.tsv") for k in names},
        "cols": {k: list(v) for k, v in names.items()},
        "counts": counts,
    }


# ------------------------------------------------------------------------------------------------
# contenders (each runs in its own subprocess)


def _rows_of(page: list) -> int:
    return sum(1 + len(o.get("items") or ()) + len(o.get("payments") or ()) + len(o.get("refunds") or ()) for o in page)


def _client(url: str):
    from taptouch_resource import TaptouchClient

    # No client-side rate limit: the sandbox has none, and the point is the throughput of the code.
    return TaptouchClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=url, page_size=PAGE_SIZE, requests_per_second=None
    )


def child_api(spec: dict) -> dict:
    client = _client(spec["url"])
    windows = spec_windows(spec)
    t0, started_at = time.perf_counter(), time.time()
    stores = [s["id"] for s in client.list_stores()]

    def drain(store_id: int, start: datetime, end: datetime) -> tuple[int, int]:
        n = rows = 0
        for page in client.iter_order_pages(store_id, updated_from=start, updated_to=end):
            n += len(page)
            rows += _rows_of(page)
        return n, rows

    orders = rows = 0
    with ThreadPoolExecutor(max_workers=spec["workers"]) as pool:
        for window in windows:
            for n, r in pool.map(drain, stores, [window.start] * len(stores), [window.end] * len(stores)):
                orders += n
                rows += r
    wall = time.perf_counter() - t0
    requests = client.stats.snapshot()["requests"]
    return {"orders": orders, "rows": rows, "wall_s": wall, "requests": requests, "started_at": started_at}


def child_copy(spec: dict) -> dict:
    import psycopg
    from psycopg import sql

    from pipelines.warehouse.db import first_value

    files = spec["copy"]["files"]
    cols = spec["copy"]["cols"]
    like = {
        "orders": "taptouch.orders",
        "items": "taptouch.order_items",
        "payments": "taptouch.order_payments",
        "refunds": "taptouch.order_refunds",
    }
    with psycopg.connect(spec["db"], autocommit=True) as conn:
        for k, src in like.items():  # plain tables: the columns and NOT NULLs, no key, no index
            conn.execute(
                sql.SQL("create table {} (like {} including defaults)").format(sql.Identifier(f"raw_{k}"), sql.SQL(src))
            )
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor() as cur:
            for k, path in files.items():
                stmt = sql.SQL("copy {} ({}) from stdin").format(
                    sql.Identifier(f"raw_{k}"), sql.SQL(", ").join(map(sql.Identifier, cols[k]))
                )
                with cur.copy(stmt) as cp, open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        cp.write(chunk)
        wall = time.perf_counter() - t0
        counts = {
            k: first_value(conn.execute(sql.SQL("select count(*) from {}").format(sql.Identifier(f"raw_{k}"))))
            for k in files
        }
    return {"orders": counts["orders"], "rows": sum(counts.values()), "wall_s": wall, "requests": 0}


def _warehouse_counts(conn) -> dict:
    out = {}
    for k, t in (
        ("orders", "orders"),
        ("items", "order_items"),
        ("payments", "order_payments"),
        ("refunds", "order_refunds"),
    ):
        out[k] = conn.execute(f"select count(*) from taptouch.{t}").fetchone()[0]
    return out


def _load_windows(
    client,
    db: str,
    windows: list,
    spec: dict,
    *,
    incremental: bool = False,
    in_flight: int | None = None,
    timing: dict | None = None,
) -> tuple[int, dict]:
    """Every window exactly as the ``orders`` asset loads a ranged run: the API's store listing for
    the stores' time zones, then ``sync_orders_windows`` with the run's settings and sync mode
    (incremental: ``TAPTOUCH_LOOKBACK``'s default). (orders fetched, load counts); a store failure
    fails the bench. ``timing`` gets the epoch of the load's start (``load_at``, after the listing),
    of its first orders request (``first_page_at``) and of the last window's commit (``merged_at``)."""
    import psycopg

    from pipelines.settings import RunSettings, decode_processes
    from pipelines.sync import FULL_REFRESH, WINDOWS_IN_FLIGHT, Incremental, OrdersRun, list_stores, sync_orders_windows

    run_settings = RunSettings(
        store_workers=spec["workers"],
        batch_size=spec["batch_size"],
        page_size=PAGE_SIZE,
        requests_per_second=0.0,
        decode_processes=decode_processes(),  # TAPTOUCH_DECODE_PROCESSES, as a run reads it
    )
    with psycopg.connect(db, autocommit=True) as conn:
        listing = list_stores(client, conn)
    run = OrdersRun(
        listing.timezones,
        mode=Incremental(run_settings.lookback) if incremental else FULL_REFRESH,
        settings=run_settings,
        progress=lambda msg: None,
    )
    orders, totals = 0, {"inserted": 0, "updated": 0, "unchanged": 0, "quarantined": 0}
    connect = lambda: psycopg.connect(db, autocommit=True)  # noqa: E731 - as the asset's run.connect
    if timing is not None:
        connect = _timed(client, db, timing)
    for window, result in sync_orders_windows(
        client,
        connect,
        windows,
        run,
        in_flight=WINDOWS_IN_FLIGHT if in_flight is None else in_flight,
    ):
        if result.failures:
            raise RuntimeError(f"window {window.key}: {result.failures}")
        orders += result.records
        for k in totals:
            totals[k] += getattr(result.counts, k)
        if timing is not None:
            timing["merged_at"] = time.time()
            timing["load_cpu_s"] = time.process_time() - timing["load_cpu_at"]
    return orders, totals


def _backend_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of a process on this machine (a PostgreSQL backend), from /proc (None if gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _timed(client, db: str, timing: dict):
    """Instruments one run's load (bench only, nothing in the pipelines changes): marks the load's
    start now, its first orders request, and each window's phases (:class:`_WindowWatch`); returns
    the ``connect`` the windows use, whose backends are watched."""
    import psycopg

    from pipelines import sync

    timing.update(load_at=time.time(), load_cpu_at=time.process_time(), backend_cpu_s=0.0, waits={})
    pages = client.iter_order_record_pages

    def first_request(*args, **kwargs):
        timing.setdefault("first_page_at", time.time())
        return pages(*args, **kwargs)

    client.iter_order_record_pages = first_request  # this instance only
    make_load = sync.window_load

    def window_load(conn, window, run):
        load = make_load(conn, window, run)
        _WindowWatch.wrap(load, conn, timing)
        return load

    sync.window_load = window_load  # looked up by sync_orders_window at each call

    class Watched(psycopg.Connection):
        """A window's connection: a sampler of its backend's wait events while it is open, and the
        backend's CPU read from /proc as it closes (None when the server is not on this machine)."""

        def close(self) -> None:
            sampler = getattr(self, "sampler", None)
            if sampler is not None:
                sampler.stop()
            cpu = None if self.closed else _backend_cpu_s(self.info.backend_pid)
            if cpu is None or timing["backend_cpu_s"] is None:
                timing["backend_cpu_s"] = None
            else:
                timing["backend_cpu_s"] += cpu
            super().close()

    def connect():
        conn = Watched.connect(db, autocommit=True)
        conn.sampler = _WaitSampler(db, conn.info.backend_pid, timing)  # type: ignore[attr-defined]
        return conn

    return connect


class _WindowWatch:
    """The phases of a window's load (the busy day's one window), as epochs in ``timing``:
    ``staged_at`` (every page fetched and staged: ``close_staging`` first called), ``merge_at`` and
    ``commit_at`` (``finish``: the merge and the commit), with this process's and the backend's CPU
    at each (``*_cpu``, ``*_backend_cpu``)."""

    @staticmethod
    def wrap(load, conn, timing: dict) -> None:
        pid = conn.info.backend_pid
        close_staging, finish = load.close_staging, load.finish

        def mark(name: str) -> None:
            timing[name] = time.time()
            timing[f"{name}_cpu"] = time.process_time()
            timing[f"{name}_backend_cpu"] = _backend_cpu_s(pid)

        def staged() -> None:
            if "staged_at" not in timing:  # finish() closes the staging again (a no-op): the first call counts
                mark("staged_at")
            timing["phase"] = "closing"
            close_staging()
            timing["phase"] = "merge"

        def merged():
            mark("merge_at")
            counts = finish()
            mark("commit_at")
            timing["phase"] = "done"
            return counts

        load.close_staging, load.finish = staged, merged
        timing["phase"] = "staging"


class _WaitSampler:
    """Every 50 ms, what a backend is doing (``pg_stat_activity``: its wait event, or CPU when it
    waits on nothing; idle: waiting for the client), counted per phase of the window in
    ``timing["waits"]``."""

    def __init__(self, db: str, pid: int, timing: dict):
        import threading

        self.db, self.pid, self.timing = db, pid, timing
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-wait-sampler", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as conn:
            while not self.done.wait(0.05):
                row = conn.execute(
                    "select state, wait_event_type, wait_event from pg_stat_activity where pid = %s", (self.pid,)
                ).fetchone()
                if row is None:
                    continue
                state, kind, event = row
                what = (
                    "idle (the client)" if state and state.startswith("idle") else f"{kind}:{event}" if kind else "CPU"
                )
                waits = self.timing["waits"].setdefault(self.timing.get("phase", "staging"), {})
                waits[what] = waits.get(what, 0) + 1

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=2)


def child_ours(spec: dict) -> dict:
    import psycopg

    from pipelines.sync import WINDOWS_IN_FLIGHT, sync_stores

    profiler = None
    if spec.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
    client = _client(spec["url"])
    # pyinstrument samples the main thread only: a profile loads one window at a time, in this thread
    in_flight = 1 if profiler else spec.get("in_flight", WINDOWS_IN_FLIGHT)
    with psycopg.connect(spec["db"], autocommit=True) as conn:
        t0, started_at = time.perf_counter(), time.time()
        sync_stores(client, conn)
        orders, totals = _load_windows(
            client,
            spec["db"],
            utc_windows(spec["days"]),
            spec,
            incremental=bool(spec.get("incremental")),
            in_flight=in_flight,
        )
        wall = time.perf_counter() - t0
        counts = _warehouse_counts(conn)
    if profiler:
        profiler.stop()
        Path(spec["profile"]).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return {
        "orders": orders,
        "rows": sum(counts.values()),
        "wall_s": wall,
        "started_at": started_at,
        "requests": client.stats.snapshot()["requests"],
        "counts": counts,
        "load": totals,
    }


def child_ours_day(spec: dict) -> dict:
    """busy-day ``ours``: the ``orders`` asset's load of the busy day's window, in this process: its
    store listing, then ``sync_orders_windows`` in the asset's default (incremental) mode on a fresh
    warehouse, which asks every store from the window's start. Epochs of the load's phases, its
    backends' CPU and (``--profile``) a pyinstrument profile of this thread."""
    import psycopg

    profiler = None
    if spec.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
    client = _client(spec["url"])
    timing: dict = {}
    t0 = time.perf_counter()
    orders, totals = _load_windows(client, spec["db"], spec_windows(spec), spec, incremental=True, timing=timing)
    wall = time.perf_counter() - t0
    if profiler:
        profiler.stop()
        Path(spec["profile"]).write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    with psycopg.connect(spec["db"], autocommit=True) as conn:
        counts = _warehouse_counts(conn)
    return {
        "orders": orders,
        "rows": sum(counts.values()),
        "wall_s": wall,
        "requests": client.stats.snapshot()["requests"],
        "counts": counts,
        "load": totals,
        "timing": timing,
    }


def _ours_run(args: tuple) -> dict:
    """One backfill run of ``ours-2runs``: its windows as the asset loads them, its own client."""
    url, db, windows, spec = args
    client = _client(url)
    orders, totals = _load_windows(client, db, windows, spec)
    return {"orders": orders, "load": totals, "requests": client.stats.snapshot()["requests"]}


def child_ours_runs(spec: dict) -> dict:
    import multiprocessing

    import psycopg

    from pipelines.sync import sync_stores

    client = _client(spec["url"])
    windows = utc_windows(spec["days"])  # frozen dataclasses: they pickle to the spawned processes
    runs = [windows[i : i + 10] for i in range(0, len(windows), 10)]
    with psycopg.connect(spec["db"], autocommit=True) as conn:
        t0, started_at = time.perf_counter(), time.time()
        sync_stores(client, conn)
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            parts = pool.map(_ours_run, [(spec["url"], spec["db"], run, spec) for run in runs], chunksize=1)
        wall = time.perf_counter() - t0
        counts = _warehouse_counts(conn)
    totals = {k: sum(p["load"][k] for p in parts) for k in parts[0]["load"]}
    return {
        "orders": sum(p["orders"] for p in parts),
        "rows": sum(counts.values()),
        "wall_s": wall,
        "started_at": started_at,
        "requests": client.stats.snapshot()["requests"] + sum(p["requests"] for p in parts),
        "counts": counts,
        "load": totals,
    }


def _dlt_source(url: str, windows: list, counter: list):
    import requests
    from dlt.sources.helpers.rest_client.auth import OAuth2ClientCredentials
    from dlt.sources.helpers.rest_client.paginators import PageNumberPaginator
    from dlt.sources.rest_api import rest_api_source

    class CountingSession(requests.Session):
        def send(self, request, **kw):
            counter[0] += 1
            return super().send(request, **kw)

    updated_from = windows[0].start.isoformat().replace("+00:00", "Z")
    updated_to = windows[-1].end.isoformat().replace("+00:00", "Z")
    session = CountingSession()
    auth = OAuth2ClientCredentials(
        access_token_url=url + "/auth/v2/token",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        access_token_request_data={"scope": "integration.store integration.order"},
        session=session,
    )
    return rest_api_source(
        {
            "client": {
                "base_url": url + "/",
                "auth": auth,
                "session": session,
                # index = page number from 0, count = page size; stops at the first short/empty page
                "paginator": PageNumberPaginator(base_page=0, page_param="index", total_path=None),
            },
            "resource_defaults": {
                "write_disposition": "merge",
                "primary_key": "id",
                "endpoint": {"data_selector": "data", "params": {"count": PAGE_SIZE}},
            },
            "resources": [
                {"name": "stores", "endpoint": {"path": "integration/v1/stores"}},
                {
                    "name": "orders",
                    "parallelized": True,
                    "endpoint": {
                        "path": "integration/v1/stores/{store_id}/orders",
                        "params": {
                            "store_id": {"type": "resolve", "resource": "stores", "field": "id"},
                            "updated_from": updated_from,
                            "updated_to": updated_to,
                        },
                    },
                },
            ],
        }
    )


def _with_password(url: str) -> str:
    """dlt insists on a password; a trust-auth server (the default here) ignores this one."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is not None or "@" not in parts.netloc:
        return url
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit((parts.scheme, f"{user}:unused@{host}", parts.path, parts.query, parts.fragment))


def child_dlt(spec: dict) -> dict:
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    import dlt
    import psycopg

    from pipelines.warehouse.db import first_value

    counter = [0]
    pipeline = dlt.pipeline(
        pipeline_name="taptouch_bench",
        pipelines_dir=spec["dlt_dir"],
        destination=dlt.destinations.postgres(_with_password(spec["db"])),
        dataset_name="taptouch_dlt",
    )
    t0, started_at = time.perf_counter(), time.time()
    info = pipeline.run(_dlt_source(spec["url"], spec_windows(spec), counter))
    wall = time.perf_counter() - t0
    info.raise_on_failed_jobs()
    with psycopg.connect(spec["db"], autocommit=True) as conn:
        counts = {}
        for k, t in (
            ("orders", "orders"),
            ("items", "orders__items"),
            ("payments", "orders__payments"),
            ("refunds", "orders__refunds"),
        ):
            try:
                counts[k] = first_value(conn.execute(f"select count(*) from taptouch_dlt.{t}"))
            except psycopg.errors.UndefinedTable:
                counts[k] = 0
    trace = pipeline.last_trace  # the run's above (None only before a first run)
    done = [s for s in (trace.steps if trace else []) if s.finished_at]
    steps = {s.step: round((s.finished_at - s.started_at).total_seconds(), 2) for s in done}
    orders = spec["expected_orders"]
    return {
        "orders": orders,
        "rows": orders + counts["items"] + counts["payments"] + counts["refunds"],
        "wall_s": wall,
        "requests": counter[0],
        "counts": counts,
        "steps": steps,
        "started_at": started_at,
    }


def child_loader(spec: dict) -> dict:
    """Issue 3: OrderWindowLoad fed pre-generated pages, one window, timed around the loader calls."""
    import psycopg

    from pipelines.warehouse.loader import OrderWindowLoad

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    in_loader = 0.0
    orders = 0
    with psycopg.connect(spec["db"], autocommit=True) as conn:
        from pipelines.warehouse.loader import load_stores
        from taptouch_sandbox import Sandbox

        stores = Sandbox(sandbox_config(spec["days"])).stores()
        load_stores(conn, stores)
        # as the orders sync builds it: the stores' time zones from their listing, the run's id and batch size
        timezones = {s["id"]: s["timezone"] for s in stores}
        t = time.perf_counter()
        load = OrderWindowLoad(
            conn, window="bench", run_id="bench-loader", batch_size=spec["batch_size"], timezones=timezones
        )
        load.__enter__()
        in_loader += time.perf_counter() - t
        with open(spec["pages"], "rb") as f:
            while True:
                try:
                    store_id, page = pickle.load(f)
                except EOFError:
                    break
                t = time.perf_counter()
                load.add_page(store_id, page)
                in_loader += time.perf_counter() - t
                orders += len(page)
        t = time.perf_counter()
        counts = load.finish()
        load.__exit__(None, None, None)
        in_loader += time.perf_counter() - t
        wc = _warehouse_counts(conn)
    return {
        "orders": orders,
        "rows": sum(wc.values()),
        "wall_s": in_loader,
        "requests": 0,
        "counts": wc,
        "load": counts.as_dict(),
        "rss_after_imports_mb": rss_before,
    }


CHILDREN = {
    "api": child_api,
    "copy": child_copy,
    "ours": child_ours,
    "ours-day": child_ours_day,
    "ours-resync": child_ours,
    "ours-incremental": child_ours,
    "ours-serial": child_ours,
    "ours-2runs": child_ours_runs,
    "dlt": child_dlt,
    "dlt-resync": child_dlt,
    "loader": child_loader,
}


def _decode_workers_hwm_kb() -> int:
    """The peak RSS (VmHWM) of this process's decode workers (pipelines.warehouse.decode), summed,
    read before they stop; 0 when none ran."""
    decode = sys.modules.get("pipelines.warehouse.decode")
    if decode is None:
        return 0
    total = 0
    for pool in list(decode._SHARED.values()):
        for worker in pool._workers:
            try:
                status = Path(f"/proc/{worker.proc.pid}/status").read_text()
            except OSError:
                continue
            total += next((int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM:")), 0)
    decode._close_shared()
    return total


def child_main(argv: list[str]) -> None:
    name, spec, out = argv[0], json.loads(argv[1]), argv[2]
    sys.path.insert(0, str(ROOT))
    result = CHILDREN[name](spec)
    hwm = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )
    workers = _decode_workers_hwm_kb()  # they run beside this process: their memory adds to its own
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # e.g. the runs of ours-2runs
    result["peak_rss_mb"] = max(hwm + workers, children) / 1024
    result["decode_workers_rss_mb"] = workers / 1024
    Path(out).write_text(json.dumps(result, default=str))


# ------------------------------------------------------------------------------------------------
# busy day (issue 23): one UTC window of a fast API


def warm_pages(url: str, windows: list, workers: int) -> int:
    """Every orders page of the windows requested once, as the contenders will request them
    (page size, bounds, and the checks of a listing that proves its window: ``confirm_end``): the
    sandbox's page cache then holds them. The orders listed."""
    client = _client(url)
    stores = [s["id"] for s in client.list_stores()]

    def drain(store_id: int, window) -> int:
        pages = client.iter_order_record_pages(
            store_id, updated_from=window.start, updated_to=window.end, confirm_end=True
        )
        return sum(len(page) for page in pages)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(drain, [s for w in windows for s in stores], [w for w in windows for _ in stores]))


def _dagster_env(spec: dict, home: Path) -> dict:
    """The environment of a ``dagster asset materialize`` against the bench's sandbox and warehouse
    (no TAPTOUCH_* of the caller's: one account, no rate limit, the bench's page size)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPTOUCH_")}
    env.update(
        # this tree's code in every process of the run (an export of a commit measures that commit)
        PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH")))),
        DAGSTER_HOME=str(home),
        TAPTOUCH_BASE_URL=spec["url"],
        TAPTOUCH_CLIENT_ID=CLIENT_ID,
        TAPTOUCH_CLIENT_SECRET=CLIENT_SECRET,
        TAPTOUCH_DATABASE_URL=spec["db"],
        TAPTOUCH_REQUESTS_PER_SECOND="0",
        TAPTOUCH_PAGE_SIZE=str(PAGE_SIZE),
        TAPTOUCH_STORE_WORKERS=str(spec["workers"]),
        TAPTOUCH_BATCH_SIZE=str(spec["batch_size"]),
    )
    return env


# the Dagster events that mark a run's phases (the first of each: the orders step's)
EVENT_MARKS = {
    "PIPELINE_START": "run_at",
    "STEP_START": "step_at",
    "STEP_SUCCESS": "step_done_at",
    "PIPELINE_SUCCESS": "run_done_at",
}


def dagster_marks(home: Path, day: str) -> dict:
    """Epochs of one run's phases, from its event log: the run's start, the orders step's start,
    the load's start (its "orders: loading" message, after the settings, the migration check, the
    token and the store listing), the window's commit (its "orders DAY: ..." summary), the orders
    step's end (after its asset checks) and the run's end (after the check steps of its own)."""
    import dagster as dg

    marks: dict = {}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run_id = instance.get_runs(limit=1)[0].run_id
        for entry in instance.all_logs(run_id):
            kind = entry.dagster_event.event_type_value if entry.dagster_event else None
            message = entry.user_message or ""
            name = EVENT_MARKS.get(kind or "")
            if name is None and message.startswith("orders: loading"):
                name = "load_at"
            elif name is None and message.startswith(f"orders {day}:"):
                name = "merged_at"
            if name:
                marks.setdefault(name, entry.timestamp)
    missing = {"run_at", "step_at", "load_at", "merged_at", "step_done_at", "run_done_at"} - set(marks)
    if missing:
        raise RuntimeError(f"the run's event log has no {sorted(missing)} (home {home})")
    return marks


def run_dagster(spec: dict, log_dir: Path) -> dict:
    """``ours-dagster``: ``dagster asset materialize -m pipelines.definitions --select orders
    --partition DAY`` against a fresh, migrated warehouse and a fresh Dagster instance (sqlite);
    the command's peak RSS and CPU are those of it and the step process it waits for."""
    import psycopg

    day = spec["window_days"][0]
    home = log_dir / "dagster_home"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "pipelines.definitions"]
    log = log_dir / "ours-dagster.log"
    with open(log, "w") as lf:
        spawned_at = time.time()
        proc = subprocess.Popen(
            [*cmd, "--select", "orders", "--partition", day],
            cwd=ROOT,
            env=_dagster_env(spec, home),
            stdout=lf,
            stderr=subprocess.STDOUT,
        )
        tree = _TreeWatch(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        ended_at = time.time()
        tree.stop()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"ours-dagster failed; log {log}:\n{log.read_text()[-3000:]}")
    timing = {"spawned_at": spawned_at, "ended_at": ended_at, **dagster_marks(home, day)}
    with psycopg.connect(spec["db"], autocommit=True) as conn:
        counts = _warehouse_counts(conn)
        requests = conn.execute("select coalesce(sum(requests), 0) from taptouch_meta.api_usage").fetchone()
    return {
        "orders": counts["orders"],
        "rows": sum(counts.values()),
        "wall_s": ended_at - spawned_at,
        "requests": requests[0] if requests else 0,
        "counts": counts,
        "timing": timing,
        # the largest process of the run (the orders step's, forked from Dagster's forkserver, which
        # wait4 does not see) and every process's CPU, sampled from /proc
        "peak_rss_mb": max(usage.ru_maxrss, tree.peak_kb) / 1024,
        "cpu_s": max(usage.ru_utime + usage.ru_stime, tree.cpu_s()),
        "spawned_at": spawned_at,
    }


class _TreeWatch:
    """Every 0.2 s, each process under ``root`` (its descendants, from /proc): the largest peak RSS
    (VmHWM) any reached and the CPU (user + system) each used, last seen."""

    def __init__(self, root: int):
        import threading

        self.root, self.peak_kb = root, 0
        self.cpu: dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-tree-watch", daemon=True)
        self.thread.start()

    def _descendants(self) -> list[int]:
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo.extend(int(c) for c in task.read_text().split())
                except OSError:
                    continue
        return out

    def _run(self) -> None:
        while not self.done.wait(0.2):
            for pid in self._descendants():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
                self.peak_kb = max(self.peak_kb, hwm)
                cpu = _backend_cpu_s(pid)  # any process's user + system CPU, from /proc/PID/stat
                if cpu is not None:
                    self.cpu[pid] = cpu

    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=2)


def _after_startup(name: str, r: dict) -> None:
    """``startup_s`` (launch to the load's start) and ``load_s`` (the load's start to the end of its
    merge: ours; to the end of the run: api, dlt, which have no merge of their own)."""
    timing = r.get("timing") or {}
    if "load_at" in timing:
        r["startup_s"] = timing["load_at"] - r["spawned_at"]
        r["load_s"] = timing["merged_at"] - timing["load_at"]
    else:
        r["startup_s"] = r["started_at"] - r["spawned_at"]
        r["load_s"] = r["wall_s"]


def _busy_contender(name: str, n: int, args, admin: str, base: dict, vol_dir: Path, dbs: list[str]) -> dict:
    """One busy-day contender against the warm sandbox, each loader into a fresh warehouse."""
    spec = dict(base)
    if name != "api":
        db = f"bench_busy_{name.replace('-', '_')}_{n}"
        dbs.append(db)
        spec["db"] = fresh_database(admin, db, migrate=name != "dlt")  # as an hourly run finds it: migrated
    if name == "dlt":
        spec["dlt_dir"] = str(vol_dir / "dlt")
        shutil.rmtree(spec["dlt_dir"], ignore_errors=True)
    if name == "ours" and args.profile:
        spec["profile"] = str(Path(args.profile).with_suffix(f".busy{n}.txt"))
    _progress(f"[busy {n}] {name} ...")
    if name == "ours-dagster":
        r = run_dagster(spec, vol_dir)
    else:
        r = run_child("ours-day" if name == "ours" else name, spec, vol_dir)
    expected = spec["expected_orders"]
    if r.get("counts") and r["counts"].get("orders") != expected:
        raise RuntimeError(f"{name} holds {r['counts'].get('orders')} orders, the API serves {expected}")
    _after_startup(name, r)
    _progress(
        f"[busy {n}] {name}: {r['orders']:,} orders, start-up {r['startup_s']:.1f}s, load {r['load_s']:.1f}s "
        f"({r['orders'] / r['load_s']:,.0f} orders/s), wall {r['wall_s']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB"
    )
    return r


def run_busy_day(n: int, args, work: Path) -> dict:
    """``--scenario busy-day``: one sandbox (``n`` orders in the busy day's window, page cache on),
    every page requested once before timing, then each contender against it."""
    admin = admin_url(args.database_url)
    vol_dir = work / f"busy{n}"
    vol_dir.mkdir(parents=True, exist_ok=True)
    per_day = busy_orders_per_day(n)
    base = {
        "days": BUSY_SANDBOX_DAYS,
        "workers": args.workers,
        "batch_size": args.batch_size,
        "window_days": [BUSY_DAY.isoformat()],
    }
    results: dict[str, dict] = {}
    dbs: list[str] = []
    server = SandboxServer(BUSY_SANDBOX_DAYS, stores=BUSY_STORES, orders_per_day=per_day, page_cache_mb=BUSY_CACHE_MB)
    try:
        with server:
            base["url"] = server.url
            t = time.perf_counter()
            base["expected_orders"] = warm_pages(server.url, spec_windows(base), args.workers)
            _progress(
                f"[busy {n}] sandbox: {BUSY_STORES} stores x ~{per_day:,} orders/local day; {BUSY_DAY} holds "
                f"{base['expected_orders']:,} orders; pages generated and cached in {time.perf_counter() - t:.1f}s "
                "(untimed)"
            )
            for name in [c for c in BUSY_CONTENDERS if c in args.contenders]:
                results[name] = _busy_contender(name, n, args, admin, base, vol_dir, dbs)
        return results
    finally:
        if not args.keep_databases:
            for db in dbs:
                drop_database(admin, db)


BUSY_HEADER = (
    "| contender | orders | wall s | start-up s | load s | orders/s after start-up | peak RSS MB | CPU s | "
    "machine CPU busy | API requests |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _volume(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 else str(n)


def busy_rate(r: dict | None) -> float:
    return r["orders"] / r["load_s"] if r and r.get("load_s") else float("nan")


def busy_report(all_results: dict[int, dict], args) -> str:
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · {os.cpu_count()}-core machine · load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (at the end) · Python {sys.version.split()[0]} · busy "
        f"day {BUSY_DAY} (one UTC window) · {BUSY_STORES} stores · page size {PAGE_SIZE} · sandbox page cache "
        f"on, warmed · {args.workers} store workers · batch {args.batch_size}",
        "",
        BUSY_HEADER,
    ]
    for n, res in all_results.items():
        for name, r in res.items():
            lines.append(
                f"| {name} ({_volume(n)}) | {r['orders']:,} | {r['wall_s']:.1f} | {r['startup_s']:.1f} | "
                f"{r['load_s']:.1f} | {busy_rate(r):,.0f} | {r['peak_rss_mb']:.0f} | {r['cpu_s']:.1f} | "
                f"{busy_cell(r)} | {r['requests']:,} |"
            )
    lines.append("")
    for n, res in all_results.items():
        lines.extend(f"- {_volume(n)} {part}" for part in _busy_ratios(res))
    return "\n".join(lines)


def _busy_ratios(res: dict) -> list[str]:
    api, dlt_r = res.get("api"), res.get("dlt")
    parts = []
    for name in ("ours", "ours-dagster"):
        r = res.get(name)
        if not r:
            continue
        part = f"{name}: {busy_rate(r):,.0f} orders/s after start-up (goal >= 5,000)"
        if dlt_r:
            part += f"; {name}/dlt = {busy_rate(r) / busy_rate(dlt_r):.1f}x (goal >= 4x)"
        if api:
            part += f"; {name}/API ceiling ({busy_rate(api):,.0f} orders/s) = {busy_rate(r) / busy_rate(api):.0%}"
        part += f"; start-up {r['startup_s']:.1f} s; peak RSS {r['peak_rss_mb']:.0f} MB"
        parts.append(part + _busy_breakdown(name, r))
    return parts


def _busy_breakdown(name: str, r: dict) -> str:
    """Where the time went: the Dagster run's phases; ours' client and backend CPU during the load."""
    t = r["timing"]
    if name == "ours-dagster":
        return (
            f" (launch to run start {t['run_at'] - t['spawned_at']:.1f} s, to step start {t['step_at'] - t['run_at']:.1f}"
            f" s, step start to load {t['load_at'] - t['step_at']:.1f} s; after the merge: the step's checks and "
            f"metadata {t['step_done_at'] - t['merged_at']:.1f} s, the check steps "
            f"{t['run_done_at'] - t['step_done_at']:.1f} s, to exit {t['ended_at'] - t['run_done_at']:.1f} s)"
        )
    return " (" + "; ".join(_ours_phases(r["timing"])) + ")"


def _ours_phases(t: dict) -> list[str]:
    """ours' load in its phases: wall, this process's CPU and the backend's, and what the backend
    waited on (share of the samples)."""
    out = [f"load start to first request {t.get('first_page_at', t['load_at']) - t['load_at']:.2f} s"]
    if "staged_at" not in t:
        return [*out, f"this process's CPU {t['load_cpu_s']:.1f} s"]
    phases = (
        ("fetch + decode + COPY to staging", "load_at", "staged_at", "staging"),
        ("closing the staging", "staged_at", "merge_at", "closing"),
        ("merge + commit", "merge_at", "commit_at", "merge"),
    )
    for label, a, b, phase in phases:
        cpu = t.get(f"{b}_cpu", 0) - (t["load_cpu_at"] if a == "load_at" else t.get(f"{a}_cpu", 0))
        backend = _backend_delta(t, a, b)
        part = f"{label} {t[b] - t[a]:.1f} s (client CPU {cpu:.1f} s, backend CPU {backend})"
        waits = (t.get("waits") or {}).get(phase) or {}
        if waits:
            total = sum(waits.values())
            top = sorted(waits.items(), key=lambda kv: -kv[1])[:4]
            part += ", backend " + ", ".join(f"{what} {n / total:.0%}" for what, n in top)
        out.append(part)
    return out


def _backend_delta(t: dict, a: str, b: str) -> str:
    end = t.get(f"{b}_backend_cpu")
    start = 0.0 if a == "load_at" else t.get(f"{a}_backend_cpu")
    return "n/a" if end is None or start is None else f"{end - start:.1f} s"


# ------------------------------------------------------------------------------------------------
# the run


def fmt_row(name: str, r: dict) -> str:
    ops = r["orders"] / r["wall_s"] if r["wall_s"] else 0
    rps = r["rows"] / r["wall_s"] if r["wall_s"] else 0
    return (
        f"| {name} | {r['orders']:,} | {r['rows']:,} | {r['wall_s']:.1f} | {ops:,.0f} | {rps:,.0f} | "
        f"{r['peak_rss_mb']:.0f} | {r['cpu_s']:.1f} | {busy_cell(r)} | {r['requests']:,} |"
    )


def machine_bound(r: dict, ceiling: float) -> str:
    """What the machine's cores allow a contender: the CPU time busy during its timed run (its
    process, the sandbox server, the backends, and anything else running), spread perfectly over
    every core, is its shortest possible wall."""
    shortest = r["machine_busy"] * r["wall_s"]  # busy share x wall = busy core-seconds / cores
    best = r["orders"] / shortest
    return (
        f"the machine's {os.cpu_count()} cores were {r['machine_busy']:.0%} busy during ours: the same CPU work "
        f"with every core busy takes >= {shortest:.1f} s, {best:,.0f} orders/s at best = {best / ceiling:.0%} "
        f"of the ceiling ({ceiling:,.0f} orders/s; anything else running counts as ours)"
    )


def busy_cell(r: dict) -> str:
    share = r.get("machine_busy")
    return "" if share is None or share != share else f"{share:.0%}"


HEADER = (
    "| contender | orders | rows | wall s | orders/s | rows/s | peak RSS MB | CPU s (client) | machine CPU busy "
    "| API requests |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def rate(r: dict | None, key: str = "orders") -> float:
    return r[key] / r["wall_s"] if r and r["wall_s"] else float("nan")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _loader_volume(n: int, admin: str, base: dict, copy_spec: dict, vol_dir: Path, dbs: list[str]) -> dict:
    """``--mode loader``: the raw COPY and the loader alone, each into a fresh warehouse."""
    results: dict[str, dict] = {}
    for name in ("copy", "loader"):
        db = f"bench_{name}_{n}"
        dbs.append(db)
        url = fresh_database(admin, db, migrate=True)
        spec = {**base, "db": url, "copy": copy_spec, "pages": str(vol_dir / "pages.pickle")}
        _progress(f"[{n}] {name} ...")
        results[name] = run_child(name, spec, vol_dir)
        _progress(f"[{n}] {name}: {results[name]['wall_s']:.1f}s, {rate(results[name], 'rows'):,.0f} rows/s")
    return results


def _contender_spec(
    name: str, n: int, args, admin: str, base: dict, copy_spec: dict | None, vol_dir: Path, dbs: list[str]
) -> dict:
    """What the child of contender ``name`` is given: its database (fresh, or the one it re-syncs)."""
    from pipelines.warehouse.db import libpq_url, with_database

    spec = dict(base)
    if name == "ours-serial":
        spec["in_flight"] = 1
    if name in ("copy", "ours", "ours-serial", "ours-2runs", "dlt"):
        db = f"bench_{name}_{n}"
        dbs.append(db)
        spec["db"] = fresh_database(admin, db, migrate=name != "dlt")
        if name == "dlt":
            spec["dlt_dir"] = str(vol_dir / "dlt")
            shutil.rmtree(spec["dlt_dir"], ignore_errors=True)
    elif name in ("ours-resync", "ours-incremental"):
        spec["incremental"] = name == "ours-incremental"
        spec["db"] = with_database(libpq_url(admin), f"bench_ours_{n}")
    elif name == "dlt-resync":
        spec["db"] = with_database(libpq_url(admin), f"bench_dlt_{n}")
        spec["dlt_dir"] = str(vol_dir / "dlt")
    if name == "copy":
        spec["copy"] = copy_spec
    if name == "ours" and args.profile:
        spec["profile"] = str(Path(args.profile).with_suffix(f".{n}.txt"))
    return spec


def _run_contender(
    name: str, n: int, days: int, spec: dict, vol_dir: Path, expected: int | None, latency: float = 0.0
) -> dict:
    """One contender in its child process (a fresh sandbox server for those that call the API);
    one that loads must end holding every order the API serves."""
    _progress(f"[{n}] {name} ...")
    if name == "copy":
        r = run_child(name, spec, vol_dir)
    else:
        with SandboxServer(days, latency=latency) as server:  # fresh: every contender pays the same generation
            spec["url"] = server.url
            r = run_child(name, spec, vol_dir)
    # Every contender that loads must hold every order the API serves: a fast wrong answer is no answer.
    if expected and r.get("counts") and r["counts"].get("orders") != expected:
        raise RuntimeError(f"{name} holds {r['counts'].get('orders')} orders, the API serves {expected}")
    _progress(
        f"[{n}] {name}: {r['orders']:,} orders in {r['wall_s']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB"
        + (f", counts {r.get('counts')}" if r.get("counts") else "")
        + (f", load {r.get('load')}" if r.get("load") else "")
        + (f", steps {r.get('steps')}" if r.get("steps") else "")
    )
    return r


def run_volume(n: int, args, work: Path) -> dict:
    days = days_for(n)
    admin = admin_url(args.database_url)
    results: dict[str, dict] = {}
    vol_dir = work / f"v{n}"
    vol_dir.mkdir(parents=True, exist_ok=True)
    base = {"days": days, "workers": args.workers, "batch_size": args.batch_size}
    copy_spec = None
    if "copy" in args.contenders or args.mode == "loader":
        t = time.perf_counter()
        pages = vol_dir / "pages.pickle" if args.mode == "loader" else None
        copy_spec = build_copy_files(days, vol_dir, pages)
        _progress(f"[{n}] setup: COPY files of {copy_spec['counts']} built in {time.perf_counter() - t:.1f}s (untimed)")
    dbs: list[str] = []
    try:
        if args.mode == "loader":
            assert copy_spec is not None  # built above for this mode
            return _loader_volume(n, admin, base, copy_spec, vol_dir, dbs)
        expected = None
        for name in [c for c in CONTENDERS if c in args.contenders]:
            spec = _contender_spec(name, n, args, admin, base, copy_spec, vol_dir, dbs)
            spec["expected_orders"] = expected or (results.get("api") or results.get("ours") or {}).get("orders", 0)
            results[name] = _run_contender(name, n, days, spec, vol_dir, expected, args.api_latency)
            expected = expected or (
                results[name]["orders"] if name in ("api", "ours", "ours-serial", "ours-2runs") else None
            )
        return results
    finally:
        if not args.keep_databases:
            for db in dbs:
                drop_database(admin, db)


def report(all_results: dict[int, dict], args) -> str:
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d} · {os.cpu_count()}-core machine · Python {sys.version.split()[0]} · "
        f"{STORES} stores x {ORDERS_PER_DAY} orders/store/day · page size {PAGE_SIZE} · "
        f"{args.workers} store workers · batch {args.batch_size}"
        + (f" · API latency {args.api_latency * 1000:.0f} ms per request" if args.api_latency else ""),
        "",
        HEADER,
    ]
    for n, res in all_results.items():
        for name, r in res.items():
            lines.append(fmt_row(f"{name} ({n // 1000}k)", r))
    lines.append("")
    for n, res in all_results.items():
        if args.mode == "loader":
            c, lo = res.get("copy"), res.get("loader")
            if c and lo:
                lines.append(
                    f"- {n // 1000}k loader: {rate(lo, 'rows'):,.0f} rows/s = {rate(lo, 'rows') / rate(c, 'rows'):.0%} "
                    f"of raw COPY ({rate(c, 'rows'):,.0f} rows/s); goal >= 40%; peak RSS {lo['peak_rss_mb']:.0f} MB "
                    f"({lo['rss_after_imports_mb']:.0f} MB after imports)"
                )
            continue
        ours, dlt_r = res.get("ours"), res.get("dlt")
        ceil = min(rate(res.get("api")), rate(res.get("copy")))
        parts = []
        if ours and dlt_r:
            parts.append(f"ours/dlt = {rate(ours) / rate(dlt_r):.1f}x (goal >= 3x)")
        if ours and res.get("api") and res.get("copy"):
            parts.append(
                f"ours/min(API {rate(res['api']):,.0f}, COPY {rate(res['copy']):,.0f} orders/s) = "
                f"{rate(ours) / ceil:.0%} (goal >= 70%)"
            )
        if ours and res.get("api") and ours.get("machine_busy", float("nan")) > 0:
            parts.append(machine_bound(ours, ceil if res.get("copy") else rate(res["api"])))
        if ours and res.get("api"):
            parts.append(
                f"client CPU ours/bare fetch = {ours['cpu_s']:.1f}/{res['api']['cpu_s']:.1f} s = "
                f"{ours['cpu_s'] / res['api']['cpu_s']:.1f}x (goal <= 2x)"
            )
        runs2 = res.get("ours-2runs")
        if runs2 and dlt_r:
            parts.append(f"ours-2runs/dlt = {rate(runs2) / rate(dlt_r):.1f}x")
        if runs2 and res.get("api") and res.get("copy"):
            parts.append(f"ours-2runs/min(API, COPY) = {rate(runs2) / ceil:.0%}")
        if ours:
            parts.append(f"peak RSS {ours['peak_rss_mb']:.0f} MB (goal < 300)")
        if ours and res.get("ours-resync"):
            parts.append(f"ours first/re-sync = {ours['wall_s'] / res['ours-resync']['wall_s']:.1f}x (goal >= 5x)")
        if ours and res.get("ours-incremental"):
            inc = res["ours-incremental"]
            parts.append(
                f"ours first/incremental re-run = {ours['wall_s'] / inc['wall_s']:.1f}x "
                f"({inc['requests']:,} API requests against {ours['requests']:,})"
            )
        if dlt_r and res.get("dlt-resync"):
            parts.append(f"dlt first/re-sync = {dlt_r['wall_s'] / res['dlt-resync']['wall_s']:.1f}x")
        lines.append(f"- {n // 1000}k: " + "; ".join(parts))
    return "\n".join(lines)


def _scenario_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The volumes and contenders of the scenario (its defaults), checked against it."""
    busy = args.scenario == "busy-day"
    args.orders = args.orders or [BUSY_ORDERS if busy else 100_000]
    args.contenders = args.contenders or (
        list(BUSY_CONTENDERS) if busy else ["api", "copy", "ours", "ours-resync", "dlt", "dlt-resync"]
    )
    if busy and (args.mode != "sync" or set(args.contenders) - set(BUSY_CONTENDERS)):
        p.error(f"--scenario busy-day runs in --mode sync with contenders among {', '.join(BUSY_CONTENDERS)}")
    if not busy and "ours-dagster" in args.contenders:
        p.error("ours-dagster runs in --scenario busy-day only")
    return args


def _arguments(settings) -> argparse.ArgumentParser:
    """The command line (``settings``: :mod:`pipelines.settings`, for the defaults)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--orders",
        type=int,
        nargs="+",
        help="volume(s), e.g. 10000 100000 1000000 (default 100000); busy-day: the day's orders (default 60000)",
    )
    p.add_argument("--mode", choices=("sync", "loader"), default="sync")
    p.add_argument(
        "--scenario",
        choices=("default", "busy-day"),
        default="default",
        help="busy-day (issue 23): one UTC day of 3 stores, pages served from the sandbox's cache",
    )
    p.add_argument(
        "--contenders",
        nargs="+",
        help="default: api copy ours ours-resync dlt dlt-resync; busy-day: api ours ours-dagster dlt",
        choices=CONTENDERS,
    )
    p.add_argument("--database-url", help="admin URL of the Postgres server (a database per contender is created)")
    p.add_argument(
        "--workers",
        type=int,
        default=settings.DEFAULT_STORE_WORKERS,
        help="stores fetched in parallel (TAPTOUCH_STORE_WORKERS)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=settings.DEFAULT_BATCH_SIZE,
        help="orders per COPY batch (TAPTOUCH_BATCH_SIZE)",
    )
    p.add_argument(
        "--api-latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="the sandbox waits this long before each answer, as a remote API's round trip (default 0: loopback)",
    )
    p.add_argument("--profile", help="profile ours with pyinstrument; text report written to PROFILE.<orders>.txt")
    p.add_argument("--keep-databases", action="store_true")
    p.add_argument("--json", help="also write every figure to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        child_main(argv[1:])
        return 0
    sys.path.insert(0, str(ROOT))
    from pipelines import settings

    p = _arguments(settings)
    args = _scenario_args(p, p.parse_args(argv))
    busy = args.scenario == "busy-day"
    all_results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="taptouch-bench-") as tmp:
        for n in args.orders:
            all_results[n] = run_busy_day(n, args, Path(tmp)) if busy else run_volume(n, args, Path(tmp))
    text = busy_report(all_results, args) if busy else report(all_results, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in all_results.items()}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
