"""Wall time of an `orders` backfill on the production-like deployment at several pool limits,
and the API request rate observed against the configured limit.

    TAPTOUCH_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python deploy/measure_backfill.py --limits 1 2 4 --partitions 12

Each limit gets a fresh stack (tests/support/prodstack.py: sandbox over HTTP, dagster-webserver,
dagster-daemon on deploy/dagster.yaml with `taptouch_api` limited to that number) and two fresh
databases on the server in TAPTOUCH_TEST_DATABASE_URL (an admin URL). The backfill is launched
through GraphQL like the UI does; wall time runs from the launch to the backfill's completion.
Request counts come from the client's own stats (the `api_requests` metadata of each run).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.warehouse.db import libpq_url, with_database  # noqa: E402
from tests.support.prodstack import END, ProdStack, dagster_pg_url, max_overlap  # noqa: E402


def create_database(admin: str) -> tuple[str, str]:
    name = f"tt_measure_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    return name, with_database(admin, name)


def drop_databases(admin: str, names: list[str]) -> None:
    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def run_requests(stack: ProdStack, backfill_id: str) -> dict[str, dict]:
    """{run_id: {api_requests, duration_s, start, end}} from the instance (same Postgres storage)."""
    import dagster as dg

    os.environ["DAGSTER_PG_URL"] = stack.dagster_pg_url
    try:
        with dg.DagsterInstance.from_config(str(stack.workdir / "dagster_home")) as instance:
            runs = {
                r.dagster_run.run_id: r
                for r in instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
            }
            out = {}
            for record in instance.fetch_materializations(dg.AssetKey("orders"), limit=10_000).records:
                if record.run_id in runs and record.run_id not in out:  # one event per partition, same metadata
                    md = record.asset_materialization.metadata
                    r = runs[record.run_id]
                    out[record.run_id] = {
                        "api_requests": md["api_requests"].value,
                        "duration_s": md["duration_s"].value,
                        "start": r.start_time,
                        "end": r.end_time,
                    }
            return out
    finally:
        del os.environ["DAGSTER_PG_URL"]


def measure(admin: str, limit: int, partitions: int, per_run: int, rps: float, page_size: int, workdir: Path) -> dict:
    keys = [(END - timedelta(days=d)).isoformat() for d in range(partitions, 0, -1)]
    (n1, instance_url), (n2, warehouse_url) = create_database(admin), create_database(admin)
    stack = ProdStack(
        workdir=workdir / f"limit{limit}",
        dagster_pg_url=dagster_pg_url(instance_url),
        warehouse_url=warehouse_url,
        pool_limit=limit,
        backfill_runs=limit,
        partitions_per_run=per_run,
        requests_per_second=rps,
        extra_env={"TAPTOUCH_PAGE_SIZE": str(page_size)},
    )
    try:
        with stack:
            assert stack.wait_for_run(stack.launch_job("stores_job"))["status"] == "SUCCESS"
            t0 = time.time()
            backfill_id = stack.launch_backfill("orders", keys, title=f"measure limit={limit}")
            backfill = stack.wait_for_backfill(backfill_id, timeout=1800)
            wall = time.time() - t0
            assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfill
            runs = run_requests(stack, backfill_id)
    finally:
        drop_databases(admin, [n1, n2])
    first = min(r["start"] for r in runs.values())
    last = max(r["end"] for r in runs.values())
    requests = sum(r["api_requests"] for r in runs.values())
    return {
        "limit": limit,
        "partitions": partitions,
        "runs": len(runs),
        "wall_s": wall,
        "runs_span_s": last - first,
        "max_overlap": max_overlap([(r["start"], r["end"]) for r in runs.values()]),
        "requests": requests,
        "req_per_s_span": requests / (last - first),
        "req_per_s_in_step_max": max(r["api_requests"] / r["duration_s"] for r in runs.values()),
        "configured_limit_rps": limit * rps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limits", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--per-run", type=int, default=2, help="TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN")
    parser.add_argument("--rps", type=float, default=2.0, help="TAPTOUCH_REQUESTS_PER_SECOND (per run)")
    parser.add_argument("--page-size", type=int, default=10, help="TAPTOUCH_PAGE_SIZE (small: more requests)")
    args = parser.parse_args(argv)
    admin = os.environ.get("TAPTOUCH_TEST_DATABASE_URL", "").strip()
    if not admin:
        parser.error("set TAPTOUCH_TEST_DATABASE_URL to an admin URL of a PostgreSQL server")
    results = []
    with tempfile.TemporaryDirectory(prefix="measure-backfill-") as tmp:
        for limit in args.limits:
            r = measure(admin, limit, args.partitions, args.per_run, args.rps, args.page_size, Path(tmp))
            results.append(r)
            print(
                f"limit={r['limit']}: {r['partitions']} partitions in {r['runs']} runs, wall {r['wall_s']:.1f}s "
                f"(runs span {r['runs_span_s']:.1f}s, max overlap {r['max_overlap']}), {r['requests']} API requests, "
                f"{r['req_per_s_span']:.2f} req/s over the runs' span, max {r['req_per_s_in_step_max']:.2f} req/s "
                f"in one run's step; configured limit {r['configured_limit_rps']:.1f} req/s",
                flush=True,
            )
    print(
        "\n| pool limit | partitions | runs | wall time (s) | max runs at once | API requests | req/s (span) | configured max req/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['limit']} | {r['partitions']} | {r['runs']} | {r['wall_s']:.1f} | {r['max_overlap']} | "
            f"{r['requests']} | {r['req_per_s_span']:.2f} | {r['configured_limit_rps']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
