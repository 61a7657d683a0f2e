"""A quarter's backfill through Dagster (issue 23, item 4): the `orders` asset's daily partitions
launched as the UI launches them, on the production instance configuration, against the sandbox
over HTTP; wall time, requests per second against the shared budget, failures retried, and the
warehouse afterwards compared with the sandbox's truth, order by order.

    ./dev python bench/backfill_bench.py --json /tmp/backfill.json             # 20 stores x 90 days x 500
    ./dev python bench/backfill_bench.py --stores 2 --days 3 --orders-per-day 40 --per-run 2   # smoke

What runs (tests/support/prodstack.py, the end-to-end tests' deployment):

- the sandbox, `python -m taptouch_sandbox serve` (`--stores`, `--days` ending `--end-date`,
  `--orders-per-day`, `--seed`, `--latency`), real HTTP on loopback;
- `dagster-webserver` and `dagster-daemon run` on a DAGSTER_HOME whose dagster.yaml is
  deploy/dagster.yaml as it is (Postgres run storage, QueuedRunCoordinator, `taptouch_api` pool
  and `dagster/backfill` limits), code location `pipelines.definitions`;
- two fresh databases on the server of `--database-url` (an admin URL): the warehouse
  (`--database`, default taptouch_backfill; dropped and recreated at the start) and the Dagster
  instance's (`<database>_dagster`). Both are kept for inspection unless `--drop`.

Then `stores_job` once, and one backfill of every day (`--days` UTC days ending `--end-date`)
through GraphQL `launchPartitionBackfill`, the mutation the UI's "Materialize" dialog sends. The
settings the runs see: TAPTOUCH_REQUESTS_PER_SECOND=`--rps`, TAPTOUCH_PAGE_SIZE=`--page-size`,
TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN=`--per-run`, TAPTOUCH_START_DATE = the first day.

Measured: wall time from the launch to the backfill's completion (and the runs' span), runs and
the most at once, partitions materialized or not, run retries (`dagster/retry_number`), step
retries (STEP_UP_FOR_RETRY events), the client's retries and 429s and requests
(`taptouch_meta.api_usage` of the backfill's runs), requests/s over the runs' span and the
highest rate over any sampled 10-second stretch of the budget's lifetime counter
(`taptouch_meta.request_budget.requests`, read every few seconds), asset check results, and the
warehouse against the truth: every order the sandbox serves in those days (id, version
`updated_at`, status, total, and its numbers of items, payments, refunds) equals `taptouch.orders`
and its child tables, with nothing extra. Exit status 1 when the warehouse differs or a partition
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.warehouse.db import libpq_url, with_database  # noqa: E402
from taptouch_sandbox import Sandbox, SandboxConfig  # noqa: E402
from tests.support import truth  # noqa: E402
from tests.support.prodstack import BIN, DEPLOY_DAGSTER_YAML, ProdStack, dagster_pg_url, max_overlap  # noqa: E402

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
NEVER_TOUCH = frozenset({"taptouch_scale", "postgres", "template0", "template1"})
CLIENT_ID = "sandbox-client"  # ProdStack's TAPTOUCH_CLIENT_ID, the budget row's key
END = date(2026, 11, 27)  # fixed, so the data is too


@dataclass(frozen=True)
class Volume:
    """The sandbox's data: `stores` stores, `days` local days ending `end`, ~`orders_per_day` each."""

    stores: int
    days: int
    orders_per_day: int
    end: date = END
    seed: int = 5

    def partition_keys(self) -> list[str]:
        """The backfill: one UTC day per sandbox day, ending `end`."""
        return [(self.end - timedelta(days=d)).isoformat() for d in range(self.days - 1, -1, -1)]

    def sandbox(self) -> Sandbox:
        """The same data the HTTP sandbox serves (a pure function of the config)."""
        config = SandboxConfig(
            seed=self.seed, stores=self.stores, days=self.days, end_date=self.end, orders_per_day=self.orders_per_day
        )
        return Sandbox(config)

    def serve_argv(self, latency: float) -> list[str]:
        argv = [str(BIN / "python"), "-m", "taptouch_sandbox", "serve", "--port", "0", "--seed", str(self.seed)]
        argv += ["--stores", str(self.stores), "--days", str(self.days)]
        argv += ["--orders-per-day", str(self.orders_per_day), "--end-date", self.end.isoformat()]
        return argv + (["--latency", str(latency)] if latency else [])


@dataclass
class BackfillStack(ProdStack):
    """ProdStack with the sandbox's volume chosen here rather than the end-to-end tests' constants."""

    volume: Volume = field(default_factory=lambda: Volume(stores=2, days=3, orders_per_day=40))

    def _start_sandbox(self, env: dict[str, str]) -> None:
        proc = self._spawn("sandbox", self.volume.serve_argv(self.sandbox_latency), {**env, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            match = re.search(r"serving (http://\S+)", self.log("sandbox"))
            if match:
                self.sandbox_url = match.group(1)
                return
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"the sandbox did not start:\n{self.log('sandbox')}")


def deploy_limits() -> dict[str, int]:
    """The limits of deploy/dagster.yaml the runs are held to."""
    config = yaml.safe_load(DEPLOY_DAGSTER_YAML.read_text())["concurrency"]
    backfill = [t["limit"] for t in config["runs"]["tag_concurrency_limits"] if t["key"] == "dagster/backfill"]
    return {
        "max_concurrent_runs": config["runs"]["max_concurrent_runs"],
        "backfill_runs": backfill[0] if backfill else 0,
        "pool_taptouch_api": config["pools"]["default_limit"],
        "pool_granularity_run": int(config["pools"]["granularity"] == "run"),
    }


# -- databases ------------------------------------------------------------------------------------


def recreate_databases(admin: str, names: list[str]) -> None:
    for name in names:
        if name in NEVER_TOUCH:
            raise SystemExit(f"refusing to drop database {name!r}")
    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def drop_databases(admin: str, names: list[str]) -> None:
    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        for name in names:
            if name not in NEVER_TOUCH:
                conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def budget_requests(warehouse_url: str) -> int | None:
    """The shared budget's lifetime counter of granted slots (None before the first request)."""
    try:
        with psycopg.connect(libpq_url(warehouse_url), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "select requests from taptouch_meta.request_budget where client_id = %s", (CLIENT_ID,)
            ).fetchone()
    except psycopg.Error:
        return None
    return int(row[0]) if row else None


# -- the backfill -----------------------------------------------------------------------------------


def wait_for_backfill(stack: ProdStack, backfill_id: str, timeout: float, samples: list[tuple[float, int]]) -> dict:
    """Poll the backfill (GraphQL, as the UI's Backfills page does) until it ends, sampling the
    budget's counter; a progress line a minute."""
    t0 = time.monotonic()
    last_print = t0
    while True:
        now = time.monotonic()
        backfill = stack.backfill(backfill_id)
        requests = budget_requests(stack.warehouse_url)
        if requests is not None:
            samples.append((now, requests))
        if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
            return backfill
        if now - last_print >= 60:
            states = Counter(r["status"] for r in backfill["runs"])
            print(f"  {now - t0:6.0f}s  runs {dict(states)}  budget requests {requests}", flush=True)
            last_print = now
        if now - t0 > timeout:
            raise TimeoutError(f"backfill {backfill_id} did not finish in {timeout}s:\n{stack.log('daemon')}")
        time.sleep(3)


def peak_rate(samples: list[tuple[float, int]], stretch: float = 10.0) -> float:
    """The highest requests/s between two samples at least `stretch` seconds apart (the nearest such)."""
    best = 0.0
    j = 0
    for i, (t_i, r_i) in enumerate(samples):
        j = max(j, i + 1)
        while j < len(samples) and samples[j][0] - t_i < stretch:
            j += 1
        if j == len(samples):
            break
        t_j, r_j = samples[j]
        best = max(best, (r_j - r_i) / (t_j - t_i))
    return best


def run_backfill(stack: ProdStack, keys: list[str], timeout: float) -> dict[str, Any]:
    stores_run = stack.wait_for_run(stack.launch_job("stores_job"), timeout=600)
    if stores_run["status"] != "SUCCESS":
        raise RuntimeError(f"stores_job: {stores_run['status']}:\n{stack.log('daemon')}")
    samples: list[tuple[float, int]] = []
    launched = time.time()
    t0 = time.monotonic()
    backfill_id = stack.launch_backfill("orders", keys, title=f"backfill bench: {len(keys)} days")
    backfill = wait_for_backfill(stack, backfill_id, timeout, samples)
    wall = time.monotonic() - t0
    return {"id": backfill_id, "launched": launched, "wall_s": wall, "backfill": backfill, "samples": samples}


# -- what Dagster recorded ----------------------------------------------------------------------------


@contextlib.contextmanager
def dagster_instance(stack: ProdStack):
    import dagster as dg

    os.environ["DAGSTER_PG_URL"] = stack.dagster_pg_url
    try:
        with dg.DagsterInstance.from_config(str(stack.workdir / "dagster_home")) as instance:
            yield instance
    finally:
        del os.environ["DAGSTER_PG_URL"]


def dagster_figures(stack: ProdStack, result: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """Runs, partitions, run and step retries and asset checks, from the instance's own storage."""
    import dagster as dg
    from dagster import DagsterEventType

    with dagster_instance(stack) as instance:
        records = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": result["id"]}))
        materialized = instance.get_materialized_partitions(dg.AssetKey("orders"))
        step_retries = 0
        failures: list[str] = []
        checks: Counter[str] = Counter()
        for record in records:
            run_id = record.dagster_run.run_id
            step_retries += len(instance.all_logs(run_id, of_type=DagsterEventType.STEP_UP_FOR_RETRY))
            for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
                error = entry.dagster_event.event_specific_data.error
                failures.append(f"{run_id[:8]} {entry.step_key}: {error.message.strip()[:300] if error else '?'}")
            for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
                evaluation = entry.dagster_event.event_specific_data
                checks[f"{evaluation.check_name}: {'passed' if evaluation.passed else 'failed'}"] += 1
        others = [
            r.dagster_run.job_name
            for r in instance.get_run_records(
                dg.RunsFilter(created_after=datetime.fromtimestamp(result["launched"], UTC))
            )
            if r.dagster_run.tags.get("dagster/backfill") != result["id"]
        ]
    intervals = [(r.start_time, r.end_time) for r in records if r.start_time and r.end_time]
    statuses = Counter(r.dagster_run.status.value for r in records)
    return {
        "runs": len(records),
        "run_statuses": dict(statuses),
        "runs_span_s": max(e for _, e in intervals) - min(s for s, _ in intervals) if intervals else 0.0,
        "most_runs_at_once": max_overlap(intervals) if intervals else 0,
        "run_s_mean": round(sum(e - s for s, e in intervals) / len(intervals), 1) if intervals else 0.0,
        "run_retries": sum(1 for r in records if int(r.dagster_run.tags.get("dagster/retry_number", "0")) > 0),
        "step_retries": step_retries,
        "step_failures": len(failures),
        "step_failure_messages": failures[:10],
        "partitions": len(keys),
        "partitions_materialized": len(set(keys) & materialized),
        "partitions_missing": sorted(set(keys) - materialized),
        "checks": dict(sorted(checks.items())),
        "other_runs": dict(Counter(others)),
        "run_ids": [r.dagster_run.run_id for r in records],
    }


def api_figures(warehouse_url: str, run_ids: list[str], samples: list[tuple[float, int]]) -> dict[str, Any]:
    """The backfill's steps' API figures (taptouch_meta.api_usage) and the shared budget's row."""
    with psycopg.connect(libpq_url(warehouse_url)) as conn:
        usage = conn.execute(
            """select count(*), coalesce(sum(requests), 0), coalesce(sum(retries), 0),
                      coalesce(sum(rate_limited), 0), coalesce(sum(token_requests), 0),
                      coalesce(sum(budget_wait_s), 0),
                      extract(epoch from max(ended_at) - min(started_at)),
                      extract(epoch from avg(ended_at - started_at))
               from taptouch_meta.api_usage where run_id = any(%s) and asset = 'orders'""",
            (run_ids,),
        ).fetchone()
        budget = conn.execute(
            "select rate, burst, requests, rate_limited from taptouch_meta.request_budget where client_id = %s",
            (CLIENT_ID,),
        ).fetchone()
    assert usage is not None
    steps, requests, retries, limited, tokens, wait, span, step_mean = usage
    span_s = float(span or 0.0)
    return {
        "steps": steps,
        "requests": requests,
        "client_retries": retries,
        "http_429s": limited,
        "token_requests": tokens,
        "budget_wait_s_summed_over_steps": round(float(wait), 1),
        "steps_span_s": round(span_s, 1),
        "orders_step_s_mean": round(float(step_mean or 0.0), 1),
        "requests_per_s_over_steps_span": round(requests / span_s, 2) if span_s else None,
        "peak_requests_per_s_10s": round(peak_rate(samples), 2),
        "budget_rate": float(budget[0]) if budget else None,
        "budget_burst": budget[1] if budget else None,
        "budget_lifetime_requests": budget[2] if budget else None,
        "budget_lifetime_429s": budget[3] if budget else None,
    }


# -- the warehouse against the truth ----------------------------------------------------------------

Row = tuple[datetime, str, Any, int, int, int]  # updated_at, status, total, items, payments, refunds


def truth_rows(volume: Volume, keys: list[str]) -> dict[int, Row]:
    """Every order the sandbox serves in these UTC days of `updated_at` (tests/support/truth.py's
    `orders_updated_in_days`, one day at a time so that only the summaries stay in memory)."""
    sb = volume.sandbox()
    out: dict[int, Row] = {}
    for key in keys:
        for oid, o in truth.orders_updated_in_days(sb, [key]).items():
            updated = datetime.fromisoformat(o["updated_at"])
            out[oid] = (updated, o["status"], o["total"], len(o["items"]), len(o["payments"]), len(o["refunds"]))
    return out


WAREHOUSE_ROWS = """
select o.order_id, o.updated_at, o.status, o.total,
       coalesce(i.n, 0), coalesce(p.n, 0), coalesce(r.n, 0)
from taptouch.orders o
left join (select order_id, count(*) as n from taptouch.order_items group by order_id) i using (order_id)
left join (select order_id, count(*) as n from taptouch.order_payments group by order_id) p using (order_id)
left join (select order_id, count(*) as n from taptouch.order_refunds group by order_id) r using (order_id)
"""


def warehouse_rows(warehouse_url: str) -> tuple[dict[int, Row], dict[int, str], int]:
    with psycopg.connect(libpq_url(warehouse_url)) as conn:
        rows: dict[int, Row] = {r[0]: (r[1], r[2], r[3], r[4], r[5], r[6]) for r in conn.execute(WAREHOUSE_ROWS)}
        stores: dict[int, str] = dict(conn.execute("select store_id, name from taptouch.stores").fetchall())
        deleted = conn.execute("select count(*) from taptouch.orders where deleted_at is not null").fetchone()
    return rows, stores, int(deleted[0]) if deleted else 0


def compare(volume: Volume, keys: list[str], warehouse_url: str) -> dict[str, Any]:
    t0 = time.monotonic()
    want = truth_rows(volume, keys)
    got, stores, deleted = warehouse_rows(warehouse_url)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differing = sorted(oid for oid in set(want) & set(got) if want[oid] != got[oid])
    want_stores = {s["id"]: s["name"] for s in volume.sandbox().stores()}
    return {
        "equal": not (missing or extra or differing or deleted) and stores == want_stores,
        "orders_truth": len(want),
        "orders_warehouse": len(got),
        "items": sum(row[3] for row in want.values()),
        "payments": sum(row[4] for row in want.values()),
        "refunds": sum(row[5] for row in want.values()),
        "missing": len(missing),
        "extra": len(extra),
        "differing": len(differing),
        "deleted_in_warehouse": deleted,
        "stores_equal": stores == want_stores,
        "examples": {
            "missing": missing[:5],
            "extra": extra[:5],
            "differing": [(oid, str(want[oid]), str(got[oid])) for oid in differing[:5]],
        },
        "compare_s": round(time.monotonic() - t0, 1),
    }


# -- the command ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=20)
    parser.add_argument("--days", type=int, default=90, help="sandbox days = partitions backfilled")
    parser.add_argument("--orders-per-day", type=int, default=500, help="per store and day (mean)")
    parser.add_argument("--end-date", type=date.fromisoformat, default=END)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the sandbox adds to each request")
    parser.add_argument("--rps", type=float, default=10.0, help="TAPTOUCH_REQUESTS_PER_SECOND (the shared budget)")
    parser.add_argument("--page-size", type=int, default=100, help="TAPTOUCH_PAGE_SIZE")
    parser.add_argument("--per-run", type=int, default=10, help="TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN")
    parser.add_argument("--database-url", default=os.environ.get("TAPTOUCH_DATABASE_URL") or DEFAULT_ADMIN_URL)
    parser.add_argument("--database", default="taptouch_backfill", help="the warehouse; the instance: <name>_dagster")
    parser.add_argument("--drop", action="store_true", help="drop both databases at the end")
    parser.add_argument("--workdir", type=Path, help="DAGSTER_HOME and the processes' logs (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for the backfill")
    parser.add_argument("--json", type=Path, help="write every figure here")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, volume: Volume, workdir: Path) -> dict[str, Any]:
    names = [args.database, f"{args.database}_dagster"]
    recreate_databases(args.database_url, names)
    keys = volume.partition_keys()
    settings = {
        "TAPTOUCH_PAGE_SIZE": str(args.page_size),
        "TAPTOUCH_START_DATE": keys[0],
    }
    stack = BackfillStack(
        workdir=workdir,
        dagster_pg_url=dagster_pg_url(with_database(args.database_url, names[1])),
        warehouse_url=with_database(args.database_url, names[0]),
        pool_limit=deploy_limits()["pool_taptouch_api"],  # the rest of deploy/dagster.yaml as it is
        partitions_per_run=args.per_run,
        requests_per_second=args.rps,
        sandbox_latency=args.latency,
        extra_env=settings,
        volume=volume,
    )
    try:
        with stack:
            result = run_backfill(stack, keys, args.timeout)
            dagster = dagster_figures(stack, result, keys)
        api = api_figures(stack.warehouse_url, dagster["run_ids"], result["samples"])
        warehouse = compare(volume, keys, stack.warehouse_url)
    finally:
        if args.drop:
            drop_databases(args.database_url, names)
    return {
        "backfill_status": result["backfill"]["status"],
        "wall_s": round(result["wall_s"], 1),
        "dagster": dagster,
        "api": api,
        "warehouse": warehouse,
    }


def report(out: dict[str, Any]) -> None:
    d, a, w, s = out["dagster"], out["api"], out["warehouse"], out["settings"]
    print(f"\nbackfill of {d['partitions']} partitions: {out['backfill_status']}, wall {out['wall_s']:.0f} s")
    print(f"  settings: {s}")
    print(f"  limits (deploy/dagster.yaml): {out['limits']}")
    print(
        f"  runs {d['runs']} {d['run_statuses']}, span {d['runs_span_s']:.0f} s, most at once "
        f"{d['most_runs_at_once']}, a run {d['run_s_mean']:.0f} s of which its orders step "
        f"{out['api']['orders_step_s_mean']:.0f} s; partitions materialized {d['partitions_materialized']}/{d['partitions']}"
    )
    print(
        f"  retries: runs {d['run_retries']}, steps {d['step_retries']} (step failures {d['step_failures']}), "
        f"client requests {a['client_retries']} ({a['http_429s']} x 429)"
    )
    print(
        f"  API: {a['requests']} requests in {a['steps_span_s']:.0f} s = {a['requests_per_s_over_steps_span']} "
        f"req/s (peak over 10 s {a['peak_requests_per_s_10s']}) against a budget of {a['budget_rate']} req/s; "
        f"{a['token_requests']} token requests"
    )
    print(f"  checks: {d['checks']}; other runs during the backfill: {d['other_runs']}")
    for message in d["step_failure_messages"]:
        print(f"  step failure: {message}")
    print(
        f"  warehouse {'EQUALS' if w['equal'] else 'DIFFERS FROM'} the truth: {w['orders_warehouse']} orders "
        f"(truth {w['orders_truth']}), {w['items']} items, {w['payments']} payments, {w['refunds']} refunds; "
        f"missing {w['missing']}, extra {w['extra']}, differing {w['differing']}"
    )
    print(f"  machine {out['machine']}, load average {out['load_before']} -> {out['load_after']}, {out['date']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    volume = Volume(args.stores, args.days, args.orders_per_day, args.end_date, args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="backfill-bench-"))
    print(f"{volume}; logs and DAGSTER_HOME in {workdir}", flush=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    started = datetime.now(UTC)
    out = measure(args, volume, workdir)
    out.update(
        volume=vars(volume) | {"end": volume.end.isoformat()},
        settings={
            "requests_per_second": args.rps,
            "page_size": args.page_size,
            "partitions_per_run": args.per_run,
            "sandbox_latency_s": args.latency,
        },
        limits=deploy_limits(),
        machine=f"{platform.node()}, {os.cpu_count()} cores",
        date=started.isoformat(timespec="seconds"),
        load_before=load_before,
        load_after=[round(x, 2) for x in os.getloadavg()],
    )
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    ok = out["warehouse"]["equal"] and not out["dagster"]["partitions_missing"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
