"""A hostile review of different writers at once on one warehouse (2026-12-06, night): two kinds
of runs interleaved at a chosen point (a window staged, before its merge; a command committing
meanwhile), then what the warehouse holds compared with what it should. Each test fails on the
code it was written against."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from pipelines.warehouse.forget import forget_customer
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from taptouch_resource import jsonutil
from tests.support import factories as f

STORE, ZONE = 7101, "Australia/Melbourne"
SAM = {"id": 901, "name": "Sam Lee", "email": "sam@example.com"}


def personal(conn: psycopg.Connection) -> list[str]:
    """Where the customer's name or e-mail is still held (table names)."""
    found = []
    for table, text in (
        ("taptouch.orders", "raw::text || coalesce(customer_name, '')"),
        ("taptouch.order_history", "raw::text"),
        ("taptouch.quarantine", "coalesce(raw::text, raw_text)"),
    ):
        rows = conn.execute(f"select {text} from {table}").fetchall()  # noqa: S608 - names from above
        if any("Sam Lee" in r[0] or "sam@example.com" in r[0] for r in rows):
            found.append(table)
    return found


def test_forget_customer_while_a_window_is_staged_does_not_let_its_merge_write_the_customer_back(migrated_db):
    """An orders window listed the customer's orders (a new one, an edit of a held one, and a
    version the boundary refuses) and staged them; forget-customer runs and commits (it waits only
    for a merge, and this one has not begun); then the window merges. Everything the window wrote
    was listed before the customer was forgotten, yet the name and e-mail are back in
    taptouch.orders, in the order history and in the quarantine, and a second forget-customer
    finds rows again."""
    with (
        psycopg.connect(migrated_db, autocommit=True) as conn,
        psycopg.connect(migrated_db, autocommit=True) as operator,
    ):
        load_stores(conn, [f.store(STORE, ZONE)])
        with OrderWindowLoad(conn, window="2026-11-02", timezones={STORE: ZONE}) as w:
            w.add_page(STORE, [jsonutil.dumps(f.order(1, customer=SAM)).encode()])
            w.finish()
        edited = f.order(1, customer=SAM, updated_at="2026-11-02T14:00:00+11:00")
        new = f.order(2, customer=SAM)
        refused = f.order(3, customer=SAM)
        refused["total"] = "12.00"  # money as a string: quarantined with its raw record

        with OrderWindowLoad(conn, window="2026-11-02", timezones={STORE: ZONE}) as w:
            w.add_page(STORE, [jsonutil.dumps(r).encode() for r in (edited, new, refused)])
            w.close_staging()  # staged: e.g. a ranged run's day waiting for the day before to merge
            forget_customer(operator, 901)  # the operator's deletion request, committed meanwhile
            assert personal(operator) == []
            w.finish()

        assert personal(conn) == [], "a load listed before forget-customer wrote the customer back"
        assert set(forget_customer(operator, 901).values()) == {0}


def _in_thread(fn) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # reported by the caller's assertion
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def _waiting(conn: psycopg.Connection, pid: int) -> bool:
    row = conn.execute("select wait_event_type from pg_stat_activity where pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


@pytest.mark.parametrize("other", ["an orders merge", "forget-customer"])
def test_a_staged_window_that_refused_a_record_again_does_not_deadlock_with_a_merge(migrated_db, other):
    """A backfill's day staged, waiting for its turn to merge (a ranged run's next day): it refused
    again an order the quarantine holds open for that day, so its staging refreshed that open row
    (taptouch.quarantine, updated outside any lock). Meanwhile a writer that holds the orders merge
    lock and updates quarantine rows (an hourly run of the day merging the order's fixed version,
    which resolves the row; forget-customer, which rewrites it) waits for that row; the staged
    day's merge then waits for the orders merge lock: a deadlock. PostgreSQL ends one of the two
    ("deadlock detected"), although the loader promises that concurrent runs of overlapping windows
    serialize on the merge lock without deadlocks."""
    bad = f.order(5, customer=SAM)
    bad["total"] = "12.00"  # refused: money as a string
    bad_bytes = jsonutil.dumps(bad).encode()
    fixed = f.order(5, customer=SAM, updated_at="2026-11-02T15:00:00+11:00")
    with (
        psycopg.connect(migrated_db, autocommit=True) as setup,
        psycopg.connect(migrated_db, autocommit=True) as backfill,
        psycopg.connect(migrated_db, autocommit=True) as writer,
    ):
        load_stores(setup, [f.store(STORE, ZONE)])
        with OrderWindowLoad(setup, window="2026-11-02", timezones={STORE: ZONE}) as w:
            w.add_page(STORE, [bad_bytes])
            w.finish()
        assert setup.execute("select count(*) from taptouch.quarantine where resolved_at is null").fetchone() == (1,)
        writer_pid = writer.info.backend_pid

        staged = OrderWindowLoad(backfill, window="2026-11-02", timezones={STORE: ZONE})
        with staged:
            staged.add_page(STORE, [bad_bytes])  # listed by a replica behind: the refused version again
            staged.close_staging()  # staged; waits for the run's previous day to merge

            if other == "an orders merge":

                def write() -> None:
                    with OrderWindowLoad(writer, window="2026-11-02", timezones={STORE: ZONE}) as hourly:
                        hourly.add_page(STORE, [jsonutil.dumps(fixed).encode()])
                        hourly.finish()
            else:

                def write() -> None:
                    forget_customer(writer, 901)

            thread, errors = _in_thread(write)
            deadline = time.monotonic() + 10
            while not _waiting(setup, writer_pid) and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            merge_error = None
            try:
                staged.finish()  # its turn: the merge
            except psycopg.Error as exc:
                merge_error = exc
            thread.join(30)
        assert merge_error is None and errors == [], f"{merge_error!r} {errors!r}"


def test_a_migration_altering_the_quarantine_does_not_hang_a_ranged_run(migrated_db):
    """A ranged run (a backfill): day 2 has staged everything, among it a record it quarantined,
    and waits (in Python, outside any statement) for day 1 to merge. `taptouch-sync migrate` (a
    new version's migration altering taptouch.quarantine, as 0027 did) queues behind day 2's lock
    on the table. Day 1's merge then writes the quarantine (resolving rows) and queues behind the
    migration: day 1 waits for the migration, the migration for day 2, day 2 for day 1 -- a
    deadlock PostgreSQL cannot see (one of its waits is the run's own), so the run, the migration
    and every later load hang. Day 2 must not hold the quarantine while it waits."""
    bad = f.order(5)
    bad["total"] = "12.00"  # refused: money as a string
    with (
        psycopg.connect(migrated_db, autocommit=True) as setup,
        psycopg.connect(migrated_db, autocommit=True) as day1_conn,
        psycopg.connect(migrated_db, autocommit=True) as day2_conn,
        psycopg.connect(migrated_db, autocommit=True) as migration,
    ):
        load_stores(setup, [f.store(STORE, ZONE)])
        migration_pid = migration.info.backend_pid
        day1 = OrderWindowLoad(day1_conn, window="2026-11-01", timezones={STORE: ZONE})
        day2 = OrderWindowLoad(day2_conn, window="2026-11-02", timezones={STORE: ZONE})
        with day1, day2:
            day1.add_page(STORE, [f.order(1, created_at="2026-11-01T12:00:00+11:00")])
            day2.add_page(STORE, [jsonutil.dumps(bad).encode(), f.order(2)])
            day2.close_staging()  # staged: waits for day 1 (sync._wait_for)
            altering, alter_errors = _in_thread(
                lambda: migration.execute("alter table taptouch.quarantine add column reviewed_by text")
            )
            deadline = time.monotonic() + 10
            while not _waiting(setup, migration_pid) and altering.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            merging, merge_errors = _in_thread(day1.finish)
            merging.join(10)
            hung = merging.is_alive()
            if hung:  # (let the test end: what the run never does while day 1 has not ended)
                setup.execute("select pg_cancel_backend(%s)", (migration_pid,))
                merging.join(10)
            day2.finish()
        altering.join(10)
        assert not hung, "day 1's merge waits for a migration that waits for day 2, which waits for day 1"
        assert merge_errors == []
