"""Hostile review of the orders window load's concurrency machinery (decode workers, the COPY
behind, the second connection), 2026-12-06. Each test fails on the code it was written against."""

from __future__ import annotations

import threading
import time

import psycopg

from pipelines.warehouse import decode, records
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from tests.support import factories as f

TZ = "Australia/Melbourne"


def _url(migrated_db: str) -> str:
    return migrated_db.replace("postgresql+psycopg://", "postgresql://")


# ------------------------------------------------------------------------------------------------
# 1. the second connection waits behind a lock queued on the load's own transaction: a deadlock
#    PostgreSQL cannot see (the load's transaction waits on its client, the client on the side read)


def test_a_migration_queued_behind_the_load_does_not_deadlock_its_side_lookup(migrated_db):
    """A deploy's migration (``alter table taptouch.orders ...``, ACCESS EXCLUSIVE) arrives while a
    window stages: it queues behind the ACCESS SHARE the load's transaction holds on
    taptouch.orders (``create temp table stage_orders (like taptouch.orders)``). Read on the load's
    own connection, the next page's digest look-up is granted at once (that transaction holds the
    lock already); on the second connection it queues behind the migration, which waits for the
    load's commit, which waits for the look-up: nothing ever ends (no statement_timeout by default)."""
    url = _url(migrated_db)
    with psycopg.connect(url, autocommit=True) as admin:
        load_stores(admin, [f.store(7101, TZ)])
    ddl_pid: list[int] = []
    ddl_error: list[BaseException] = []
    ddl = psycopg.connect(url, autocommit=True)

    def migrate() -> None:
        ddl_pid.append(ddl.info.backend_pid)
        try:
            with ddl.transaction():
                ddl.execute("alter table taptouch.orders add column review_probe int")
                raise RuntimeError("roll the probe back")
        except BaseException as exc:  # the probe's own rollback, or a cancel from the cleanup
            ddl_error.append(exc)

    page_done = threading.Event()
    page_error: list[BaseException] = []
    with (
        psycopg.connect(url, autocommit=True) as conn,
        psycopg.connect(url, autocommit=True) as watch,
        OrderWindowLoad(conn, window="2026-11-02", batch_size=1) as load,
    ):
        load.add_page(7101, [f.order(1)])  # batch of 1: its COPY is in flight (_CopyBehind busy)
        assert load._behind.busy
        migration = threading.Thread(target=migrate, daemon=True)
        migration.start()
        # the migration is queued behind the load's transaction (a lock wait PostgreSQL reports)
        deadline = time.monotonic() + 30
        while not watch.execute(
            "select exists (select 1 from pg_stat_activity where pid = %s and wait_event_type = 'Lock')",
            (ddl.info.backend_pid,),
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the migration never queued"
            time.sleep(0.05)

        def next_page() -> None:
            try:
                load.add_page(7101, [f.order(2)])  # its look-up goes to the second connection
            except BaseException as exc:
                page_error.append(exc)
            finally:
                page_done.set()

        threading.Thread(target=next_page, daemon=True).start()
        # the page is staged at once, or never: a watchdog (not a race) then shows the cycle: the
        # second connection waits on the migration, which waits on the load's transaction, whose
        # client is this look-up
        cycle = None
        if not page_done.wait(20):
            side = load._side
            blocked_by = watch.execute("select pg_blocking_pids(%s)", (side.info.backend_pid,)).fetchone()[0]
            cycle = (side.info.backend_pid, blocked_by, conn.info.backend_pid)
        # clean up: cancel the migration (it would wait for this load's commit; a cycle ends)
        watch.execute("select pg_cancel_backend(%s)", (ddl.info.backend_pid,))
        page_done.wait(30)
        migration.join(30)
        ddl.close()
        assert cycle is None, (
            "deadlock: the look-up on the second connection (pid {}) waits on the migration (pids {}), "
            "which waits on the load's transaction (pid {}), which waits on the look-up".format(*cycle)
        )
        assert not page_error
        load.finish()


# ------------------------------------------------------------------------------------------------
# 2. "exact either way" fails for a deeply nested record: whether it is "nested too deeply" depends
#    on how deep the decoding thread's Python stack already is (RecursionError), and a worker's
#    stack is ~50 frames shallower than the loader's


def _nested(order_id: int, depth: int) -> bytes:
    raw = records.as_bytes(f.order(order_id))
    return raw[:-1] + b',"note":' + b"[" * depth + b"]" * depth + b"}"


def _refused_here(raw: bytes) -> bool:
    try:
        records.order_rows(raw, TZ, 7101)
    except Exception:
        return True
    return False


def test_a_deeply_nested_record_is_judged_the_same_in_a_worker_and_in_the_loaders_thread(migrated_db, monkeypatch):
    """The same bytes (nested in an unknown field just deep enough that the loader's thread, under
    pytest, hits the recursion limit) are quarantined when decoded in the loader's thread and
    loaded when decoded in a worker. Which one a page gets depends on its size (MIN_WORKER_PAGE),
    on TAPTOUCH_DECODE_PROCESSES, on a worker dying, and (in the thread) on the caller's stack:
    the same record is loaded by one run and quarantined by another."""
    url = _url(migrated_db)
    with psycopg.connect(url, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, TZ)])
    depth = next(d for d in range(700, 1000, 5) if _refused_here(_nested(1, d)))  # refused at this stack
    assert not _refused_here(_nested(1, depth - 300))  # (a shallower record passes here)
    workers = decode.DecodeWorkers(1)
    monkeypatch.setattr(decode, "shared", lambda processes: workers if processes else None)
    monkeypatch.setattr(decode, "MIN_WORKER_PAGE", 1)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            with OrderWindowLoad(conn, window="2026-11-02", decode_processes=0) as load:  # in this thread
                load.add_page(7101, [_nested(1, depth)])
                in_thread = load.finish()
            with OrderWindowLoad(conn, window="2026-11-02", decode_processes=1) as load:  # in the worker
                load.add_page(7101, [_nested(2, depth)])
                load._collect_decoded()
                assert workers._workers and workers._workers[0].answered == 1  # the worker decoded it
                in_worker = load.finish()
            held = conn.execute("select order_id from taptouch.orders order by 1").fetchall()
    finally:
        workers.close()
    assert (in_thread.inserted, in_thread.quarantined) == (in_worker.inserted, in_worker.quarantined), (
        f"nested {depth} deep: in the loader's thread {in_thread.as_dict()}, in a worker {in_worker.as_dict()}; "
        f"held: {held}"
    )


# ------------------------------------------------------------------------------------------------
# 3. a worker that is alive but never answers (stopped, wedged) holds the window for ever: the load
#    waits on its futures without a bound, and nothing (a cancelled window, a terminated ranged run)
#    can interrupt that wait; only the worker's death releases it


def test_a_worker_that_never_answers_does_not_hold_the_window_for_ever(migrated_db, monkeypatch):
    url = _url(migrated_db)
    with psycopg.connect(url, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, TZ)])
    monkeypatch.setattr(decode, "_BOOTSTRAP", "import sys; sys.stdin.buffer.read()")  # alive, silent
    monkeypatch.setattr(decode, "STALLED_S", 2.0, raising=False)  # (a bound, where the code has one)
    workers = decode.DecodeWorkers(1)
    monkeypatch.setattr(decode, "shared", lambda processes: workers)
    done = threading.Event()
    outcome: list = []

    def window() -> None:
        try:
            with (
                psycopg.connect(url, autocommit=True) as conn,
                OrderWindowLoad(conn, window="2026-11-02", decode_processes=1) as load,
            ):
                load.add_page(7101, [records.as_bytes(f.order(1 + i)) for i in range(60)])
                outcome.append(load.finish())
        except BaseException as exc:
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=window, daemon=True).start()
    try:
        finished = done.wait(30)  # a watchdog, not a race: the load has no bound of its own
    finally:
        for w in workers._workers:  # the only way out: the worker's death (its page decoded here)
            w.proc.kill()
        done.wait(30)
        workers.close()
    assert finished, f"the window waited 30 s on a silent worker (then, with the worker killed: {outcome})"
    assert [(c.inserted, c.quarantined) for c in outcome] == [(60, 0)]
