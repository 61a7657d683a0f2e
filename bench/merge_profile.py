"""Where a first load's PostgreSQL time goes, statement by statement (issue 23's profile).

    ./dev python bench/merge_profile.py --days 10            # 12 UTC windows, ~20,800 orders
    ./dev python bench/merge_profile.py --busy-day           # one UTC window of 59,924 orders, 3 stores

Loads the sync bench's data (``sync_bench.sandbox_config``: 4 stores x 500 orders per day) window
by window through ``OrderWindowLoad`` as a ranged run does (full refresh, every listing complete,
the API's exact bytes, pre-generated: no HTTP) into a fresh database, and times every statement the
load sends: wall time and the backend's CPU (``/proc/<pid>/stat``, so the server must run on this
machine). Prints the client's and the backend's CPU per order for staging, closing the staging and
the merge, then the statements by backend CPU. docs/performance.md, "Profile", has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sync_bench  # noqa: E402  (bench/ is on the path when run as a script)

_TICKS = os.sysconf("SC_CLK_TCK")
STATEMENTS: defaultdict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # count, wall s, backend s
_timing = [False]


def backend_cpu_s(conn: psycopg.Connection) -> float:
    fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _label(query: Any, conn: psycopg.Connection) -> str:
    text = query if isinstance(query, str) else query.as_string(conn)
    return re.sub(r"\s+", " ", text).strip()[:110]


def _note(label: str, conn: psycopg.Connection, cpu0: float, wall0: float) -> None:
    row = STATEMENTS[label]
    row[0] += 1
    row[1] += time.perf_counter() - wall0
    row[2] += backend_cpu_s(conn) - cpu0


def instrument() -> None:
    """Time every ``Cursor.execute`` and ``Cursor.copy`` while ``_timing`` is on."""
    execute, copy = psycopg.Cursor.execute, psycopg.Cursor.copy

    def timed_execute(self, query, params=None, **kw):
        if not _timing[0]:
            return execute(self, query, params, **kw)
        conn, cpu0, wall0 = self.connection, backend_cpu_s(self.connection), time.perf_counter()
        try:
            return execute(self, query, params, **kw)
        finally:
            _note(_label(query, conn), conn, cpu0, wall0)

    @contextlib.contextmanager
    def timed_copy(self, statement, *args, **kw) -> Iterator[Any]:
        conn, cpu0, wall0 = self.connection, backend_cpu_s(self.connection), time.perf_counter()
        with copy(self, statement, *args, **kw) as cp:
            yield cp
        if _timing[0]:
            _note(_label(statement, conn)[:40], conn, cpu0, wall0)

    psycopg.Cursor.execute = timed_execute  # type: ignore[method-assign]
    psycopg.Cursor.copy = timed_copy  # type: ignore[method-assign]


def scenario(days: int, busy_day: bool) -> tuple[Any, list]:
    """The sandbox's configuration and the UTC windows loaded: the sync bench's ``days``, or its busy day."""
    from pipelines.sync import OrderWindow

    if not busy_day:
        return sync_bench.sandbox_config(days), sync_bench.utc_windows(days)
    config = sync_bench.sandbox_config(
        sync_bench.BUSY_SANDBOX_DAYS, stores=sync_bench.BUSY_STORES, orders_per_day=sync_bench.BUSY_PER_DAY_FOR_60K
    )
    return config, [OrderWindow.day(sync_bench.BUSY_DAY)]


def windows(config: Any, utc_windows: list) -> list[tuple[str, Any, Any, list[tuple[int, list[bytes]]]]]:
    """Each UTC window's pages per store (500 exact JSON texts each), from the in-process sandbox."""
    from taptouch_sandbox import Sandbox

    sb = Sandbox(config)
    out = []
    for w in utc_windows:
        pages = []
        for sid in sb.store_ids():
            ids = sb._data.window_ids(sid, int(w.start.timestamp()), int(w.end.timestamp()))
            texts = [sb._data.order_text(i).encode() for i in ids]
            pages += [(sid, texts[i : i + 500]) for i in range(0, len(texts), 500)]
        out.append((w.key, w.start, w.end, pages))
    return out


def load(url: str, config: Any, utc_windows: list) -> tuple[int, dict[str, float]]:
    """Every window loaded, timed in three steps (client and backend CPU, wall)."""
    from pipelines.warehouse.history import Retention
    from pipelines.warehouse.loader import OrderWindowLoad, load_stores
    from taptouch_sandbox import Sandbox

    stores = Sandbox(config).stores()
    zones = {s["id"]: s["timezone"] for s in stores}
    steps: defaultdict[str, float] = defaultdict(float)
    orders = 0
    with psycopg.connect(url, autocommit=True) as conn:
        load_stores(conn, stores)
        for key, start, end, pages in windows(config, utc_windows):
            _timing[0] = True
            marks = [(time.process_time(), backend_cpu_s(conn), time.perf_counter())]
            with OrderWindowLoad(
                conn, window=key, run_id="profile", timezones=zones, full=True, retention=Retention()
            ) as w:
                for sid, page in pages:
                    w.add_page(sid, page)
                for sid in sorted(zones):
                    w.store_listed(sid, end, (start, end, end))
                marks.append((time.process_time(), backend_cpu_s(conn), time.perf_counter()))
                w.close_staging()
                marks.append((time.process_time(), backend_cpu_s(conn), time.perf_counter()))
                w.finish()
            marks.append((time.process_time(), backend_cpu_s(conn), time.perf_counter()))
            _timing[0] = False
            orders += sum(len(p) for _, p in pages)
            for step, a, b in zip(("stage", "close", "merge"), marks, marks[1:], strict=False):
                steps[f"{step} client"] += b[0] - a[0]
                steps[f"{step} backend"] += b[1] - a[1]
                steps[f"{step} wall"] += b[2] - a[2]
    return orders, steps


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=10)
    p.add_argument(
        "--busy-day", action="store_true", help="the sync bench's busy day instead (one window, ~60k orders)"
    )
    p.add_argument("--database-url", default=None, help="admin URL (default as sync_bench)")
    p.add_argument("--database", default="taptouch_merge_profile")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--json", help="also write every figure here")
    args = p.parse_args(argv)
    url = sync_bench.fresh_database(sync_bench.admin_url(args.database_url), args.database, migrate=True)
    instrument()
    orders, steps = load(url, *scenario(args.days, args.busy_day))
    print(f"{orders:,} orders, load average {os.getloadavg()[0]:.1f}; CPU and wall µs per order")
    for k, v in steps.items():
        print(f"  {k:16s} {v / orders * 1e6:7.1f}")
    print("statements by backend CPU: count, wall s, backend CPU s, backend µs per order")
    for label, (n, wall, cpu) in sorted(STATEMENTS.items(), key=lambda kv: -kv[1][2])[: args.top]:
        print(f"  {int(n):5d} {wall:7.2f} {cpu:7.2f} {cpu / orders * 1e6:7.1f}  {label}")
    if args.json:
        Path(args.json).write_text(json.dumps({"orders": orders, "steps": steps, "statements": STATEMENTS}))
    sync_bench.drop_database(sync_bench.admin_url(args.database_url), args.database)


if __name__ == "__main__":
    main()
