"""Decoding beside the loader (pipelines/warehouse/decode.py): the worker's protocol, a worker that
dies mid-window, and the setting. The worker path's rows are checked by re-running the loader's
and the boundary's tests through it (tests/*/test_*_in_workers.py)."""

from __future__ import annotations

import io
import logging
import os
import pickle
import signal
import subprocess
import sys
from datetime import timedelta

import psycopg
import pytest

from pipelines import settings
from pipelines.warehouse import decode, records
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from tests.support import factories as f

TZ = "Australia/Melbourne"


def page(first_id: int, n: int) -> list[bytes]:
    return [records.as_bytes(f.order(first_id + i)) for i in range(n)]


def request(raws: list[bytes], first_seq: int = 0) -> tuple:
    return (7101, TZ, timedelta(0), first_seq, raws, [bytes(16)] * len(raws))


def frames(*bodies: bytes) -> io.BytesIO:
    return io.BytesIO(b"".join(decode._FRAME.pack(len(b)) + b for b in bodies))


def answers(out: io.BytesIO) -> list:
    out.seek(0)
    got = []
    while (body := decode._read_frame(out)) is not None:
        got.append(pickle.loads(body))
    return got


def test_a_worker_answers_each_request_in_order_with_what_the_loader_thread_computes():
    good = page(1, 3)
    bad = [b'{"id": 9, "total": "not a number"}', b"not json", good[0].replace(b"Oat milk", b"Oat\\tmilk")]
    requests = [request(good, first_seq=10), request(bad, first_seq=13), pickle.dumps(("too", "few"))]
    out = io.BytesIO()
    decode.serve(frames(pickle.dumps(requests[0]), pickle.dumps(requests[1]), requests[2]), out)
    (ok1, first), (ok2, second), (ok3, error) = answers(out)
    assert ok1 and first == decode.stage_page(*requests[0])
    assert [g[0] for g in first] == [11, 12, 13] and all(g[2] is None for g in first)  # numbered; raw stays here
    assert ok2 and second == decode.stage_page(*requests[1])
    assert [type(g) for g in second] == [str, str, tuple]  # two reasons, one order (escaped: row tuples)
    assert "total" in second[0] and isinstance(second[2][3], list)
    assert not ok3 and isinstance(error, TypeError)  # raised where the loader waits for the page


def test_a_worker_whose_parent_is_gone_ends_quietly_with_nothing_on_stderr():
    """A SIGKILLed run cannot close its workers: each finds its input ended and its answers
    unread, and must end by itself without a traceback (it shares the run's stderr, the step log)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", decode._BOOTSTRAP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=decode._project_dir(),
        env=decode._worker_env(),
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdout.close()  # nobody will read the answer, as when the parent was killed
        body = pickle.dumps(request(page(1, 200)))
        proc.stdin.write(decode._FRAME.pack(len(body)) + body)
        _, err = proc.communicate(timeout=30)  # (closes its input: the worker's loop ends)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert err == b""


@pytest.fixture
def db(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, TZ)])
        yield conn


def test_a_worker_killed_mid_window_costs_no_order(db, monkeypatch, caplog):
    """The worker dies holding a page: that page is decoded in the loader's thread, a new worker
    takes the next one, and the window commits every order once."""
    workers = decode.DecodeWorkers(1)
    monkeypatch.setattr(decode, "shared", lambda processes: workers)
    caplog.set_level(logging.WARNING)
    try:
        with OrderWindowLoad(db, window="2026-11-02", decode_processes=1) as load:
            load.add_page(7101, page(1, 60))  # in the worker, which is still starting up
            first = workers._workers[0]
            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait()
            load.add_page(7101, page(61, 60))
            second = workers._workers[0]
            counts = load.finish()
            assert second is not first and second.alive  # replaced, and it answered: still running
    finally:
        workers.close()
    assert (counts.inserted, counts.quarantined) == (120, 0)
    assert db.execute("select count(*), count(distinct order_id) from taptouch.orders").fetchone() == (120, 120)
    assert db.execute("select count(*) from taptouch.order_items").fetchone() == (240,)
    assert "a decode worker ended; its page is decoded here" in caplog.text
    assert "a decode worker ended; started another" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"), [("0", 0), ("3", 3), ("64", 64), ("", settings.DEFAULT_DECODE_PROCESSES)]
)
def test_the_setting_reads_whole_numbers_from_0_to_64(monkeypatch, value, expected):
    monkeypatch.setenv("TAPTOUCH_DECODE_PROCESSES", value)
    assert settings.decode_processes() == expected


@pytest.mark.parametrize("value", ["65", "-1", "two", "1.5"])
def test_a_bad_setting_says_what_to_set(monkeypatch, value):
    monkeypatch.setenv("TAPTOUCH_DECODE_PROCESSES", value)
    with pytest.raises(settings.SettingError, match="TAPTOUCH_DECODE_PROCESSES.*from 0 to 64"):
        settings.decode_processes()


@pytest.mark.parametrize(("cores", "expected"), [(1, 0), (2, 2), (3, 2), (16, 2)])
def test_the_default_is_one_worker_per_core_up_to_2_and_none_on_one_core(monkeypatch, cores, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert settings._default_decode_processes() == expected


def test_a_run_terminated_while_a_page_is_written_leaves_no_half_frame(db, monkeypatch):
    """Termination raises in the loader's thread while it writes a page to the worker: that worker
    ends (its pipe holds half a frame, and the next answer would be another page's), and the next
    page goes to a new worker and gets its own rows."""
    workers = decode.DecodeWorkers(1)
    real_write = decode._write_frame
    interrupted = []

    def write_half(stream, body):
        if not interrupted:
            interrupted.append(True)
            stream.write(decode._FRAME.pack(len(body)) + body[: len(body) // 2])
            raise KeyboardInterrupt
        real_write(stream, body)

    monkeypatch.setattr(decode, "_write_frame", write_half)
    try:
        with pytest.raises(KeyboardInterrupt):
            workers.submit(request(page(1, 60)))
        first = workers._workers[0]
        assert not first.alive and first.proc.wait(timeout=10) is not None
        args = request(page(61, 60), first_seq=60)
        assert workers.submit(args).result(timeout=30) == decode.stage_page(*args)
        assert workers._workers[0] is not first
    finally:
        workers.close()


def test_an_answer_that_cannot_be_read_ends_the_worker_and_fails_its_requests(monkeypatch):
    """A worker that writes a frame that is not a pickled answer: the request fails with WorkerLost
    (the loader decodes the page itself) instead of waiting for ever."""
    garbage = (
        "import sys; sys.stdout.buffer.write(bytes(7) + bytes([3]) + b'abc'); sys.stdout.flush(); sys.stdin.read()"
    )
    monkeypatch.setattr(decode, "_BOOTSTRAP", garbage)
    workers = decode.DecodeWorkers(1)
    try:
        fut = workers.submit(request(page(1, 3)))
        with pytest.raises(decode.WorkerLost):
            fut.result(timeout=30)
        assert not workers._workers[0].alive
    finally:
        workers.close()


def test_workers_that_cannot_start_are_given_up_after_three(db, monkeypatch, caplog):
    """A worker that dies at start (a broken interpreter here): after three in a row, no more are
    started and every page is decoded in the loader's thread; the window loads every order."""
    monkeypatch.setattr(decode, "_BOOTSTRAP", "raise SystemExit(3)")
    started = []
    real_init = decode._Worker.__init__

    def counting_init(self):
        started.append(True)
        real_init(self)

    monkeypatch.setattr(decode._Worker, "__init__", counting_init)
    workers = decode.DecodeWorkers(1)
    monkeypatch.setattr(decode, "shared", lambda processes: workers)
    caplog.set_level(logging.WARNING)
    try:
        with OrderWindowLoad(db, window="2026-11-02", decode_processes=1) as load:
            for i in range(8):
                load.add_page(7101, page(1 + 60 * i, 60))
                load._collect_decoded()  # each page's worker has ended before the next is handed over
            counts = load.finish()
    finally:
        workers.close()
    assert counts.inserted == 480
    assert db.execute("select count(*) from taptouch.order_items").fetchone() == (960,)
    assert len(started) == decode.MAX_LOST_IN_A_ROW
    assert "3 decode workers in a row ended without answering" in caplog.text


def test_two_windows_share_the_workers_and_each_gets_its_own_pages(migrated_db, monkeypatch):
    """A ranged run's windows load at once on two threads through one set of workers."""
    import threading

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(7101, TZ), f.store(7102, "Australia/Perth")])
    workers = decode.DecodeWorkers(1)
    monkeypatch.setattr(decode, "shared", lambda processes: workers)
    errors = []

    def window(day: str, store_id: int, first_id: int) -> None:
        try:
            with (
                psycopg.connect(migrated_db, autocommit=True) as conn,
                OrderWindowLoad(conn, window=day, decode_processes=1) as load,
            ):
                for i in range(6):
                    ids = range(first_id + 60 * i, first_id + 60 * (i + 1))
                    load.add_page(store_id, [records.as_bytes(f.order(o, store_id=store_id)) for o in ids])
                load.finish()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=window, args=("2026-11-02", 7101, 1)),
        threading.Thread(target=window, args=("2026-11-03", 7102, 10_001)),
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        workers.close()
    assert errors == []
    with psycopg.connect(migrated_db) as conn:
        got = conn.execute(
            "select store_id, count(*), min(order_id), max(order_id) from taptouch.orders group by 1 order by 1"
        ).fetchall()
        items = conn.execute("select count(*) from taptouch.order_items").fetchone()
    assert got == [(7101, 360, 1, 360), (7102, 360, 10_001, 10_360)]
    assert items == (1440,)
