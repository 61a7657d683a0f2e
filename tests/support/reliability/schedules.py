"""Seeded random fault schedules, run through the production sync code (``pipelines.sync``).

One schedule, from its seed:

1. builds a small sandbox and a random mix of faults: 429 bursts (``Retry-After`` 0, seconds or an
   HTTP date), 500/502/503 bursts, timeouts, ``ack`` 500 inside HTTP 200, short token lifetimes on
   a fake clock (with server clock skew, so tokens also expire *at the server* mid-sync), token
   revocation, token-endpoint errors, duplicated page boundaries, malformed records, unknown fields;
2. syncs stores, every order window (random window length, workers, page and batch sizes) and
   inventory; a window (or store) that fails after the client's own retries is re-run, as Dagster's
   RetryPolicy would;
3. publishes new versions of some orders (late edits, refunds, voids) and syncs again;
4. backfills every window again, in random order, through a *stale read* transport that serves
   older versions of some orders (the pre-edit version, or an older version with different items
   and totals) — the warehouse must keep the newer one;
5. compares the warehouse with the sandbox's truth (:func:`reliability.check.compare`).

Retries do not really wait: the client gets ``sleep=`` a no-op and the clocks are fake.
"""

from __future__ import annotations

import copy
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import psycopg

from pipelines.sync import sync_inventory, sync_stores
from pipelines.warehouse import records
from pipelines.warehouse.loader import store_timezones
from taptouch_resource import TaptouchClient, TaptouchError, api, jsonutil
from taptouch_resource.api import InvalidRecord
from taptouch_resource.auth import ClientCredentialsAuth
from taptouch_resource.retry import Backoff
from taptouch_sandbox import Faults, Sandbox, SandboxConfig
from taptouch_sandbox.data import recompute_order
from tests.support.windows import load_window

from .check import Diff, compare, reset

END_DATE = date(2026, 11, 27)
MAX_STEP_ATTEMPTS = 12  # a window re-run this many times (Dagster's RetryPolicy, generously)
_ORDERS_PATH = re.compile(r"/stores/(\d+)/orders")


class FakeClock:
    """Seconds since the epoch that advance only when told: one tick per API request."""

    def __init__(self, start: float | None = None, step: float = 1.0):
        self._t = time.time() if start is None else start
        self.step = step
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._t += self.step

    def now(self) -> float:
        with self._lock:
            return self._t


class FaultTransport(httpx.BaseTransport):
    """Wraps the sandbox's in-process transport: ticks the clock, counts the faults the client
    met, and (when ``stale`` is set) serves older versions of some orders (a stale replica)."""

    def __init__(self, sb: Sandbox, clock: FakeClock):
        self.sb = sb
        self.inner = sb.transport()
        self.clock = clock
        self.stale: dict[int, dict] = {}
        self.stale_active = False
        self.counts: Counter = Counter()
        self._lock = threading.Lock()

    def count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.counts[kind] += n

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        token_call = request.url.path.endswith(api.TOKEN_PATH)
        if not token_call:
            self.clock.tick()
        try:
            resp = self.inner.handle_request(request)
        except httpx.TimeoutException:
            self.count("timeout")
            raise
        body = resp.content
        status = resp.status_code
        if token_call:
            if status != 200:
                self.count("token_endpoint_error")
            return resp
        if status == 429:
            ra = resp.headers.get("Retry-After", "")
            self.count("429_retry_after_" + ("0" if ra == "0" else "date" if "," in ra else "seconds"))
        elif status >= 500:
            self.count("5xx")
        elif status == 401:
            self.count("token_expired" if b"expired" in body else "token_revoked")
        elif status == 200 and b'"ack":500' in body[:120]:
            self.count("ack_mismatch")
        elif status == 200:
            m = _ORDERS_PATH.search(request.url.path)
            params = request.url.params
            if self.sb.faults.duplicate_page_boundary and int(params.get("index", "0")) > 0:
                self.count("duplicate_page_boundary")
            if m:
                return self._orders_page(request, resp, body)
        return resp

    def _orders_page(self, request: httpx.Request, resp: httpx.Response, body: bytes) -> httpx.Response:
        malformed_every = self.sb.faults.malformed_every
        if not (self.stale_active and self.stale) and not malformed_every:
            return resp
        doc = jsonutil.loads(body)
        data = doc.get("data") or []
        changed = False
        for i, rec in enumerate(data):
            oid = rec.get("id") if isinstance(rec, dict) else None
            if malformed_every and isinstance(oid, int) and self.sb.malformed_kind(oid):
                self.count("malformed_record")
                continue
            if self.stale_active and oid in self.stale:
                data[i] = copy.deepcopy(self.stale[oid])
                changed = True
                self.count("stale_read")
        if not changed:
            return resp
        return httpx.Response(
            200, headers={"Content-Type": "application/json"}, content=jsonutil.dumps(doc).encode(), request=request
        )


@dataclass
class ScheduleResult:
    seed: int
    faults: dict[str, Any]
    injected: Counter
    diff: Diff
    step_retries: int = 0
    windows: int = 0
    orders: int = 0
    edits: int = 0
    seconds: float = 0.0
    incomplete: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.diff.ok and not self.incomplete


def random_faults(rng: random.Random) -> Faults:
    def every(lo: int, hi: int, p: float = 0.6) -> int:
        return rng.randint(lo, hi) if rng.random() < p else 0

    return Faults(
        rate_limit_every=every(4, 12),
        rate_limit_burst=rng.randint(1, 2),
        retry_after=rng.choice(["0", "1", "2", "date"]),
        server_error_every=every(5, 14),
        server_error_burst=rng.randint(1, 2),
        timeout_every=every(4, 15, 0.4),
        token_lifetime=rng.choice([172800, 15, 40, 120]),
        revoke_tokens_every=every(6, 25, 0.4),
        token_errors_every=every(2, 5, 0.3),
        duplicate_page_boundary=rng.random() < 0.5,
        malformed_every=every(8, 30, 0.4),
        extra_fields=rng.random() < 0.3,
        ack_mismatch_every=every(4, 15, 0.4),
    )


def _windows(start: datetime, end: datetime, days: int) -> list[tuple[datetime, datetime, str]]:
    out = []
    t = start
    while t < end:
        u = min(end, t + timedelta(days=days))
        out.append((t, u, f"{t.date().isoformat()}+{(u - t).days}d"))
        t = u
    return out


def _older_version(order: dict, tz: str, rng: random.Random) -> dict | None:
    """A valid, older version of ``order``: updated_at earlier, different items and totals."""
    from zoneinfo import ZoneInfo

    old = copy.deepcopy(order)
    items = old["items"]
    if not items:
        return None
    if len(items) > 1 and rng.random() < 0.5:
        items = items[:-1]
    else:
        items[0]["quantity"] = items[0]["quantity"] + 1
    updated = datetime.fromisoformat(order["updated_at"]) - timedelta(minutes=rng.randint(1, 300))
    try:
        stale = recompute_order(old, {"items": items, "updated_at": updated}, ZoneInfo(tz), order["id"])
        records.parse_order(jsonutil.loads(jsonutil.dumps(stale)), tz)  # the older version is loadable
    except (InvalidRecord, KeyError, ValueError, TypeError):
        return None
    if stale["total"] == order["total"] and stale["items"] == order["items"]:
        return None
    return jsonutil.loads(jsonutil.dumps(stale))


def run_schedule(seed: int, conn: psycopg.Connection, *, say: Callable[[str], None] | None = None) -> ScheduleResult:
    """Run one schedule against ``conn`` (a migrated database, autocommit; emptied first)."""
    t0 = time.monotonic()
    rng = random.Random(seed)
    reset(conn)
    config = SandboxConfig(
        seed=seed,
        stores=rng.randint(1, 3),
        days=rng.randint(1, 3),
        end_date=END_DATE,
        orders_per_day=rng.randint(4, 20),
    )
    clock = FakeClock()
    # the server's clock may run faster than ours: tokens then expire at the server mid-sync,
    # before the client's early-refresh margin replaces them (401 "expired", refresh, resend)
    drift = rng.choice([1.0, 1.0, 1.5])
    base = clock.now()
    faults = random_faults(rng)
    fault_knobs = {k: v for k, v in vars(faults).items() if k != "timeout_sleep" and v != getattr(Faults(), k)}
    sb = Sandbox(config, faults=Faults(), clock=lambda: base + (clock.now() - base) * drift)
    transport = FaultTransport(sb, clock)
    page_size = rng.choice([5, 7, 10, 25, 100])
    auth = ClientCredentialsAuth(
        client_id=config.client_id,
        client_secret=config.client_secret,
        token_url=api.DEFAULT_BASE_URL + api.TOKEN_PATH,
        transport=transport,
        clock=clock.now,
        sleep=lambda s: None,
        backoff=Backoff(max_retries=5, rng=random.Random(seed)),
    )
    client = TaptouchClient(
        client_id=config.client_id,
        client_secret=config.client_secret,
        auth=auth,
        transport=transport,
        page_size=page_size,
        requests_per_second=None,
        sleep=lambda s: None,
    )
    start = datetime.combine(END_DATE - timedelta(days=config.days + 2), datetime.min.time(), UTC)
    end = datetime.combine(END_DATE + timedelta(days=3), datetime.min.time(), UTC)
    windows = _windows(start, end, rng.randint(1, 3))
    result = ScheduleResult(seed=seed, faults=fault_knobs, injected=transport.counts, diff=Diff(), windows=len(windows))

    def retrying(what: str, fn: Callable[[], Any]) -> Any:
        for _attempt in range(MAX_STEP_ATTEMPTS):
            try:
                return fn()
            except TaptouchError:
                result.step_retries += 1
        result.incomplete.append(what)
        return None

    def sync_windows(ws) -> None:
        for s, e, label in ws:
            for _attempt in range(MAX_STEP_ATTEMPTS):
                r = load_window(
                    client, conn, label, s, e, store_workers=rng.randint(1, 4), batch_size=rng.choice([3, 20, 5000])
                )
                if not r.failures:
                    break
                result.step_retries += 1
            else:
                result.incomplete.append(f"orders {label}")

    def sync_inv() -> None:
        for _attempt in range(MAX_STEP_ATTEMPTS):
            r = sync_inventory(client, conn, timezones=store_timezones(conn))
            if not r.failures:
                return
            result.step_retries += 1
        result.incomplete.append("inventory")

    # faults on from the first token request
    sb.faults = faults
    retrying("stores", lambda: sync_stores(client, conn))
    sync_windows(windows)
    sync_inv()

    # late edits: new versions (refunds, voids, changed items) published after the first load
    truth = {o["id"]: o for sid in sb.store_ids() for o in sb.orders_in_window(sid, start, end)}
    tz = {s["id"]: s["timezone"] for s in sb.stores()}
    malformed = sb.malformed_order_ids()
    candidates = sorted(oid for oid in truth if oid not in malformed)
    edited: dict[int, dict] = {}
    for oid in rng.sample(candidates, min(len(candidates), rng.randint(0, 6))):
        before = truth[oid]
        change = rng.choice(["refunded", "partially_refunded", "voided", "items"])
        if change == "items":
            if not before["items"]:
                continue
            items = copy.deepcopy(before["items"])
            items[0]["quantity"] = items[0]["quantity"] + 1
            sb.edit_order(oid, items=items)
        else:
            sb.edit_order(oid, status=change)
        edited[oid] = before
    result.edits = len(edited)
    if edited:
        sync_windows(windows)  # the hourly run picks the new versions up

    # backfill through a stale replica: older versions of some orders, newer ones already loaded
    stale: dict[int, dict] = dict(edited)
    for oid in rng.sample(candidates, len(candidates) // 4):
        if oid not in stale:
            older = _older_version(sb.order(oid), tz[truth[oid]["store_id"]], rng)
            if older is not None:
                stale[oid] = older
    transport.stale = stale
    transport.stale_active = True
    backfill = list(windows)
    rng.shuffle(backfill)
    sync_windows(backfill)
    transport.stale_active = False

    result.diff = compare(conn, sb, start, end, inventory=True)
    result.orders = result.diff.orders_expected
    result.seconds = time.monotonic() - t0
    client.close()
    if say:
        say(
            f"schedule {seed}: {'ok' if result.ok else 'FAILED'} {result.diff.orders_found} orders, "
            f"{sum(result.injected.values())} faults, {result.step_retries} step retries ({result.seconds:.1f}s)"
        )
    return result
