"""An orders page's client-side work, in the loader's thread or in worker processes beside it.

The record boundary's work per order (msgspec's decode, the rules, the rows and their COPY text) is
pure Python and holds the interpreter's lock: in one process, a window's staging uses one core
however many the machine has, and a ranged run's two windows share it. :func:`stage_page` is that
work for one page, a pure function of the page; :class:`DecodeWorkers` runs it in worker processes
(``python -c`` running :func:`serve`, started on first use, one pipe each, answers in order),
so the loader's thread only fetches, checks digests and COPYs. ``TAPTOUCH_DECODE_PROCESSES`` sets
how many (0: none, every page in the loader's thread). A worker that dies is replaced, and the
pages it held are decoded in the loader's thread: the rows staged are the same either way.
docs/performance.md, "Decoding beside the loader".
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import traceback
from collections import deque
from concurrent.futures import Future
from datetime import timedelta
from typing import IO, Any

from taptouch_resource.api import InvalidRecord

from . import records

log = logging.getLogger(__name__)

# A page this small is decoded in the loader's thread: a worker's round trip would cost more.
MIN_WORKER_PAGE = 50

_FRAME = struct.Struct("!Q")


def staged_group(seq: int, store_id: int, raw: bytes, r: records.OrderRows, digest: bytes) -> tuple:
    """One valid order's staging group: (seq, store_id, raw, order, items, payments, refunds), each
    table's part a line of COPY's text format (str) or, when raw holds a byte that format must
    escape, row tuples for psycopg to format."""
    if b"\\" in raw or b"\n" in raw or b"\r" in raw or b"\t" in raw:
        return (
            seq,
            store_id,
            raw,
            [(seq, *r.order, r.updated_key, r.raw, digest)],
            [(seq, *x) for x in r.items],
            [(seq, *x) for x in r.payments],
            [(seq, *x) for x in r.refunds],
        )
    # every text of the rows is a piece of raw (or a number, a date): none needs escaping
    p = f"{seq}\t"
    return (
        seq,
        store_id,
        raw,
        f"{p}{copy_line(r.order)}\t{r.updated_key}\t{r.raw}\t\\\\x{digest.hex()}\n",
        "".join([f"{p}{copy_line(x)}\n" for x in r.items]),
        "".join([f"{p}{copy_line(x)}\n" for x in r.payments]),
        "".join([f"{p}{copy_line(x)}\n" for x in r.refunds]),
    )


def copy_line(row: tuple) -> str:
    """One row as a line of COPY's text format, without the newline, for values that need no escaping:
    ``int``, ``Decimal`` (finite), ``date`` and text holding no backslash, tab, newline or carriage
    return (None is ``\\N``). What psycopg's text dumpers write for the same values."""
    return "\t".join(["\\N" if v is None else str(v) for v in row])


def stage_page(
    store_id: int, tz: str, day_start: timedelta, first_seq: int, raws: list[bytes], digests: list[bytes]
) -> list[tuple | str]:
    """Per record of one store's page (its exact bytes, and their digest): its staging group
    (:func:`staged_group`, numbered ``first_seq + 1`` on, raw left None) or, for a record the
    boundary refuses, the reason (str). Anything but :class:`InvalidRecord` propagates."""
    out: list[tuple | str] = []
    for seq, (raw, digest) in enumerate(zip(raws, digests, strict=True), start=first_seq + 1):
        try:
            r = records.order_rows(raw, tz, store_id, day_start)
        except InvalidRecord as exc:
            out.append(exc.reason)
            continue
        g = staged_group(seq, store_id, raw, r, digest)
        out.append((seq, store_id, None, *g[3:]))  # the receiver holds raw
    return out


# ------------------------------------------------------------------------------------------------
# worker processes

# How a worker starts: fd 1 is moved aside for the answers before anything is imported (a stray
# print goes to stderr, never into the pipe), and Ctrl-C is the parent's to handle (a worker ends
# when its input does: when the parent closes it, or exits). It leaves with ``os._exit``: nothing
# is left to flush into a pipe whose reader may be gone.
_BOOTSTRAP = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); answers = os.fdopen(os.dup(1), 'wb');"
    " os.dup2(2, 1); sys.stdout = sys.stderr; from pipelines.warehouse.decode import serve;"
    " serve(sys.stdin.buffer, answers); sys.stderr.flush(); os._exit(0)"
)
# A worker that ends this many times in a row without answering a page (it cannot start here):
# no more are started, every page is decoded in the loader's thread.
MAX_LOST_IN_A_ROW = 3
# A worker that holds a page this long without answering anything (stopped, wedged) is ended: its
# pages are decoded in the loader's thread (a page takes ~36 µs per order; 5,000 orders: 0.2 s).
STALLED_S = 60.0


class WorkerLost(RuntimeError):
    """A decode worker ended before it answered (the caller decodes the page itself)."""


def _read_frame(stream: IO[bytes]) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    size = _FRAME.unpack(head)[0]
    body = stream.read(size)
    return body if len(body) == size else None


def _write_frame(stream: IO[bytes], body: bytes) -> None:
    stream.write(_FRAME.pack(len(body)))
    stream.write(body)
    stream.flush()


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """A worker's loop: each request (the arguments of :func:`stage_page`, pickled by its parent)
    answered in order with ``(True, groups)`` or ``(False, the exception)`` (its traceback added as
    a note), until its input ends or nobody reads the answers (the parent was killed): quietly,
    since a killed run's workers must not print tracebacks into its log."""
    while (body := _read_frame(inp)) is not None:
        try:
            answer: tuple[bool, Any] = (True, stage_page(*pickle.loads(body)))
        except Exception as exc:  # the parent raises it, as if it had decoded the page itself
            exc.add_note("in the decode worker:\n" + "".join(traceback.format_exception(exc)))
            answer = (False, exc)
        try:
            payload = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an exception that does not pickle
            payload = pickle.dumps((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
        try:
            _write_frame(out, payload)
        except BrokenPipeError:
            return


def _worker_env() -> dict[str, str]:
    """The worker's environment: the parent's without its settings and credentials (``TAPTOUCH_*``,
    libpq's ``PG*``), which a worker never needs, and with this code's directory on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TAPTOUCH_", "PG"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_project_dir(), env.get("PYTHONPATH", "")) if p)
    return env


class _Worker:
    """One worker process and the futures of its requests, answered in order by its reader thread.
    Requests are written under ``_writing``; the reader takes answers under ``_lock`` only, so a
    write blocked on a full pipe never stops the reader that empties the other one. Any failure
    (the process ended, an answer that cannot be read, a write interrupted half-way) ends the worker
    and fails every request still waiting with :class:`WorkerLost`: no request ever gets another's
    answer."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_project_dir(),
            env=_worker_env(),
        )
        self.pending: deque[Future] = deque()
        self.answered = 0
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self.alive = True
        try:
            threading.Thread(target=self._read, name="taptouch-decode-reader", daemon=True).start()
        except BaseException:
            self.end()
            raise

    def submit(self, body: bytes) -> Future:
        fut: Future = Future()
        with self._writing:
            with self._lock:
                if not self.alive:
                    raise WorkerLost("the decode worker has ended")
                self.pending.append(fut)
            try:
                _write_frame(_stdin(self.proc), body)
            except (OSError, ValueError):
                self.end()
                raise WorkerLost("the decode worker has ended") from None
            except BaseException:  # e.g. the run terminated while the write waited: half a frame sent
                self.end()
                raise
        return fut

    def _read(self) -> None:
        try:
            out = self.proc.stdout
            while out is not None and (body := _read_frame(out)) is not None:
                ok, value = pickle.loads(body)
                with self._lock:
                    fut = self.pending.popleft()
                    self.answered += 1
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
        except BaseException:  # an answer that cannot be read: no later answer can be trusted
            log.warning("a decode worker's answer could not be read; the worker is stopped", exc_info=True)
        finally:
            self.end()

    def end(self) -> None:
        """Stop the worker: every waiting request fails with :class:`WorkerLost`."""
        with self._lock:
            self.alive = False
            waiting, self.pending = list(self.pending), deque()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(WorkerLost("the decode worker ended before it answered"))
        if self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> None:
        """Let the worker finish what it holds and end (its input closed), then reap it."""
        with contextlib.suppress(OSError, ValueError):
            _stdin(self.proc).close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _stdin(proc: subprocess.Popen) -> IO[bytes]:
    if proc.stdin is None:  # pragma: no cover - always a pipe
        raise WorkerLost("the decode worker has no input")
    return proc.stdin


def _project_dir() -> str:
    """The directory ``pipelines`` is imported from, so that the worker imports the same code."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DecodeWorkers:
    """``processes`` worker processes (started on first use) that run :func:`stage_page`; requests go
    to them in turn. :meth:`submit` returns a future of the page's groups, or None when no worker
    can take it (the caller decodes the page itself). After :data:`MAX_LOST_IN_A_ROW` workers in a
    row ended without answering, none is started again."""

    def __init__(self, processes: int):
        self.processes = processes
        self._workers: list[_Worker] = []
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._lost_in_a_row = 0
        self._given_up = False

    def submit(self, args: tuple) -> Future | None:
        body = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        for _ in range(2):  # a dead worker is replaced once
            worker = self._worker()
            if worker is None:
                return None
            try:
                return worker.submit(body)
            except WorkerLost:
                continue
        return None

    def _worker(self) -> _Worker | None:
        with self._lock:
            if self._given_up or self.processes <= 0:
                return None
            slot = next(self._turn) % self.processes
            if slot < len(self._workers):
                old = self._workers[slot]
                if old.alive:
                    return old
                self._lost_in_a_row = 0 if old.answered else self._lost_in_a_row + 1
                old.close()
            if self._lost_in_a_row >= MAX_LOST_IN_A_ROW:
                log.warning(
                    "%d decode workers in a row ended without answering: pages are decoded in the loader's thread",
                    self._lost_in_a_row,
                )
                self._given_up = True
                return None
            try:
                worker = _Worker()
            except OSError as exc:
                log.warning("no decode worker could start (%s): pages are decoded in the loader's thread", exc)
                self._given_up = True
                return None
            if slot < len(self._workers):
                log.warning("a decode worker ended; started another")
                self._workers[slot] = worker
            else:
                self._workers.append(worker)
            return worker

    def end_holder(self, fut: Future) -> None:
        """End the worker that holds ``fut`` (it has not answered for too long): ``fut`` and every
        other request it holds fail with :class:`WorkerLost`."""
        with self._lock:
            workers = list(self._workers)
        for w in workers:
            with w._lock:
                holds = fut in w.pending
            if holds:
                log.warning("a decode worker answered nothing for %.0f s; it is stopped", STALLED_S)
                w.end()

    def close(self) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for w in workers:
            w.close()


_SHARED: dict[int, DecodeWorkers] = {}
_SHARED_LOCK = threading.Lock()


def shared(processes: int) -> DecodeWorkers | None:
    """The process's workers for ``processes`` (None for 0): started once, stopped at exit."""
    if processes <= 0:
        return None
    with _SHARED_LOCK:
        if not _SHARED:
            import atexit

            atexit.register(_close_shared)
        return _SHARED.setdefault(processes, DecodeWorkers(processes))


def _close_shared() -> None:
    with _SHARED_LOCK:
        pools = list(_SHARED.values())
        _SHARED.clear()
    for p in pools:
        p.close()
