"""Print the reliability figures: ``./dev python -m tests.support.reliability.report --schedules 200``.

Runs (against a fresh database on ``TAPTOUCH_TEST_DATABASE_URL``'s server, else the embedded
PostgreSQL): the seeded fault schedules, the SIGKILL loop, the database faults, the concurrency
runs and the bad-input catalogue, then prints what was injected and what was lost, duplicated or
moved backwards. Exits 1 if anything was.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

if __package__ in (None, ""):  # `python tests/support/reliability/report.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from pipelines.warehouse.db import libpq_url, resolve_database_url, with_database  # noqa: E402
from pipelines.warehouse.migrations import migrate  # noqa: E402
from tests.support.reliability import badinput, dbfaults, kills, schedules  # noqa: E402


def fresh_database(admin_url: str) -> tuple[str, str]:
    name = f"tt_reliability_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    url = with_database(admin_url, name)
    migrate(url)
    return name, url


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schedules", type=int, default=200, help="random fault schedules to run (default 200)")
    p.add_argument("--seed", type=int, default=0, help="first schedule seed (default 0)")
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs of a running load (default 20)")
    p.add_argument(
        "--database-url",
        help="admin URL of a server where databases may be created "
        "(default: TAPTOUCH_TEST_DATABASE_URL, else the embedded server)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL, format="%(message)s")
    say = print if args.verbose else (lambda s: None)

    admin = args.database_url or os.environ.get("TAPTOUCH_TEST_DATABASE_URL") or resolve_database_url()
    name, url = fresh_database(admin)
    t0 = time.monotonic()
    lost = duplicated = backwards = mismatched = 0
    failures: list[str] = []
    loud: list[str] = []
    try:
        # 1. fault schedules
        injected: Counter = Counter()
        orders = step_retries = edits = 0
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            for seed in range(args.seed, args.seed + args.schedules):
                r = schedules.run_schedule(seed, conn, say=say)
                injected.update(r.injected)
                orders += r.orders
                step_retries += r.step_retries
                edits += r.edits
                lost += r.diff.lost
                duplicated += r.diff.duplicated
                backwards += r.diff.backwards
                mismatched += r.diff.mismatched
                if r.diff.ok and r.incomplete:  # a step failed loudly after every retry: reported, nothing lost
                    loud.append(
                        f"schedule {seed}: {', '.join(r.incomplete)} still failing after "
                        f"{schedules.MAX_STEP_ATTEMPTS} runs (faults {r.faults})"
                    )
                elif not r.ok:
                    failures.append(f"schedule {seed}: {r.diff} incomplete={r.incomplete} faults={r.faults}")
        t_sched = time.monotonic() - t0

        # 2. kills
        t1 = time.monotonic()
        k = kills.run_kills(url, args.kills, seed=args.seed, say=say)
        for d in [k.diff]:
            lost += d.lost
            duplicated += d.duplicated
            backwards += d.backwards
            mismatched += d.mismatched
        failures += k.inconsistent
        t_kills = time.monotonic() - t1

        # 3. database faults and concurrency
        db_outcomes = [dbfaults.terminate_mid_merge(url), dbfaults.statement_timeout(url)]
        conc = dbfaults.concurrent_runs(url)
        for o in db_outcomes:
            if not o.ok:
                failures.append(f"{o.kind}: error={o.error!r} unchanged={o.unchanged} retry: {o.diff}")
        if not conc.ok:
            failures.append(f"concurrency: {conc.errors} {conc.diff}")
        for d in [o.diff for o in db_outcomes] + [conc.diff]:
            lost += d.lost
            duplicated += d.duplicated
            backwards += d.backwards
            mismatched += d.mismatched

        # 4. bad input
        envelope = badinput.run_envelope_cases()
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            from tests.support.reliability.check import reset

            reset(conn)
            records = badinput.run_record_cases(conn)
        failures += [f"bad input {c.name}: {c.detail}" for c in envelope + records if not c.ok]
    finally:
        drop_database(admin, name)

    total = time.monotonic() - t0
    print("Reliability report")
    print(
        f"  fault schedules run:      {args.schedules} (seeds {args.seed}..{args.seed + args.schedules - 1}), "
        f"{orders} orders checked, {edits} late edits, {step_retries} window re-runs, {t_sched:.0f}s"
    )
    print(f"  steps still failing after every retry (loud, reported; nothing lost): {len(loud)}")
    for line in loud:
        print(f"    {line}")
    print(f"  faults injected:          {sum(injected.values())}")
    for kind, n in sorted(injected.items(), key=lambda kv: -kv[1]):
        print(f"    {kind:<28}{n}")
    print(
        f"  kills survived (SIGKILL): {k.kills} mid-load (+{k.completed_early} loads that finished first), "
        f"windows committed at each kill: {sorted(Counter(k.windows_committed_at_kill).items())}, {t_kills:.0f}s"
    )
    print("  database faults:          " + ", ".join(f"{o.kind} -> {o.error}" for o in db_outcomes))
    print(
        f"  concurrent runs:          {conc.runs} runs (same window twice; backfill vs hourly), "
        f"{len(conc.errors)} errors"
    )
    print(
        f"  bad inputs tried:         {len(envelope) + len(records)} "
        f"({len(envelope)} envelope-level, {len(records)} record-level), "
        f"{sum(c.ok for c in envelope + records)} with the expected outcome"
    )
    print(f"  rows lost:                {lost}")
    print(f"  rows duplicated:          {duplicated}")
    print(f"  rows moved backwards:     {backwards}")
    print(f"  rows otherwise different: {mismatched}")
    print(f"  total time:               {total:.0f}s")
    for f in failures[:20]:
        print(f"FAILURE: {f}")
    return 1 if failures or lost or duplicated or backwards or mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
