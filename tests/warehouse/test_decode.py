"""Decoding beside the loader (pipelines/warehouse/decode.py): the worker's protocol, a worker that
dies mid-window, and the setting. The worker path's rows are checked by re-running the loader's
and the boundary's tests through it (tests/*/test_*_in_workers.py)."""

from __future__ import annotations

import io
import logging
import os
import pickle
import signal
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


@pytest.mark.parametrize(("cores", "expected"), [(1, 0), (2, 2), (3, 3), (16, 4)])
def test_the_default_is_one_worker_per_core_up_to_4_and_none_on_one_core(monkeypatch, cores, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert settings._default_decode_processes() == expected
