"""The world of the inventory model-based test (tests/pipeline/test_inventory_model.py).

A :class:`World` is one history: a small sandbox (2 stores of 30-60 products, pages of
``PAGE_SIZE``) on a fake clock, the real client over the in-process transport wrapped by
:class:`Listing`, one warehouse connection (and a second client and connection for a run that
overlaps another), and the bookkeeping the invariants need.

- **The source is the sandbox's own stock** (``sb.inventory(store)``, what ``/inventory`` serves,
  is the truth). The sandbox has no helper to change stock, so the history edits its rows in place
  (:meth:`World._rows`, kept in product order as the sandbox serves them): a level changes (stamped
  now, never before the previous version), a product of the catalog is added, a product is deleted
  (at most ``MAX_GONE`` outstanding per store: a listing missing them stays an ordinary one, below
  the loader's half-of-the-store guard) and re-listed, either as it was (the same record, the same
  ``updated_at``) or restocked (a new level stamped now). Every state a product goes through is
  kept in order (:attr:`World.states`, ``None`` = not listed).
- **Every inventory page served** reaches :meth:`World._on_page` right after the sandbox served it
  and before the client reads it: it is logged with the run it belongs to, and it is where changes
  *while a listing runs* happen, where a run is killed part way, and where another whole run
  (``sync_inventory`` on a second client and connection) runs and commits *while this one lists*:
  an older listing then commits after a newer one. A run is killed by :class:`Killed` (a
  ``BaseException``, as run termination): raised after some page, just before a store's
  ``load_inventory``, or inside its transaction after the delisting and merge (it rolls back).
- **Known product bugs** (the test module's xfail tests) have triggers the history keeps away
  from unless ``allow`` names them: a product deleted while pages follow is one not served yet
  (or any once the listing is over; "shift": any), and while another run overlaps this one nothing
  is deleted ("resurrect") and a product is re-listed only restocked ("unchanged").
- **Faults**: the sandbox shapes only orders pages, so :class:`Listing` shapes inventory answers
  (an empty 200 answer every N, a page cut to half every N or once, records shuffled); the answer
  to a listing's request right after a shaped one is always whole (the client asks the last page
  twice: one cut answer at a time is what it is built to see through; two in a row to the same
  listing end it early, by design). 429 and 5xx bursts are the sandbox's (``Faults``).

The invariants (:meth:`World.check_invariants`), after every step, and the first also right after
an overlapping run commits inside a step:

1. **no product goes back to an older state of the source**: what the warehouse holds for a
   product (its record, or no level = delisted) matches a state the source had at least as late as
   the one it matched before. A level that moves backwards, a product delisted while the source
   still lists it, and a delisted product brought back by an older listing all break it;
2. **no product a listing returned to a run that succeeded for its store is delisted**, unless the
   source deleted it after that page was served;
3. **a store whose inventory failed or was killed in a run is as before the run** (levels and
   ``synced_at``; not checked when another run overlapped it).

:meth:`World.final_check` switches every fault off, advances the clock an hour, runs one clean
``sync_inventory``, and compares the warehouse with the sandbox exactly (:func:`compare_exact`).
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg

from pipelines import sync
from pipelines.sync import sync_inventory, sync_stores
from pipelines.warehouse import loader
from pipelines.warehouse.loader import store_timezones
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig, catalog
from taptouch_sandbox._json import dumps, loads  # the sandbox's own encoding of stock records

from . import truth
from .state_model import reset_warehouse

STORES = 2
PAGE_SIZE = 7  # products per page: 5-9 pages a store
MAX_GONE = 3  # products deleted at the source a store holds at once (30+ listed: never half of them)
_INVENTORY = re.compile(r"/stores/(\d+)/inventory$")
_PROGRESS = re.compile(r"store (\d+):")

Key = tuple[int, int]  # (store_id, product_id)


class Killed(BaseException):
    """A run stopped part way, as a terminated worker's run does (not an ``Exception``: no retry
    layer may swallow it)."""


class Violation(AssertionError):
    """An invariant broke."""


def instant(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass
class InventoryPage:
    """One inventory answer served with HTTP 200: its store, index, the count asked for, the
    product ids it held, the fault that shaped it, the run it belongs to (set by the World)."""

    store_id: int
    index: int
    count: int
    ids: tuple[int, ...]
    fault: str | None
    phase: str = "idle"


@dataclass
class PageFaults:
    """How :class:`Listing` shapes inventory answers (counted over the answers that reach the data)."""

    empty_every: int = 0
    partial_every: int = 0
    cut_once: bool = False
    unsorted: bool = False
    answers: int = 0
    shaped_last: set[str] = field(default_factory=set)  # the listings whose last answer was shaped

    def reset(self) -> None:
        self.empty_every = self.partial_every = 0
        self.cut_once = self.unsorted = False

    def shape(self, ids: list[int], count: int, listing: str = "") -> tuple[list[int], str | None]:
        """The answer to one request of ``listing`` (the run asking: one overlapping another
        must not make two answers in a row to the same listing cut ones)."""
        self.answers += 1
        fault = None
        if listing not in self.shaped_last:  # one cut answer at a time
            if self.empty_every and self.answers % self.empty_every == 0:
                ids, fault = [], "empty"
            elif self.cut_once and ids:
                self.cut_once = False
                ids, fault = ids[: len(ids) // 2], "cut once"
            elif self.partial_every and self.answers % self.partial_every == 0 and ids:
                ids, fault = ids[: len(ids) // 2], "partial"
        if fault is None:
            self.shaped_last.discard(listing)
        else:
            self.shaped_last.add(listing)
        if self.unsorted and len(ids) > 1:
            ids, fault = ids[::-1], fault or "unsorted"
        return ids, fault


class Listing(httpx.BaseTransport):
    """The sandbox's transport; each inventory answer with HTTP 200 is shaped by the world's
    :class:`PageFaults` and reported to ``World._on_page`` before the client reads it."""

    def __init__(self, world: World):
        self.world, self.inner = world, world.sb.transport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        m = _INVENTORY.search(request.url.path)
        if not m or response.status_code != 200:
            return response
        env = loads(response.read())
        by_id = {r["product_id"]: r for r in env["data"]}
        count = int(request.url.params.get("count", "100"))
        ids, fault = self.world.page_faults.shape(list(by_id), count, self.world.phase)
        if fault is not None:
            env["data"] = [by_id[i] for i in ids]
            response = httpx.Response(200, headers={"content-type": "application/json"}, content=dumps(env).encode())
        index = int(request.url.params.get("index", "0"))
        self.world._on_page(InventoryPage(int(m.group(1)), index, count, tuple(ids), fault))
        return response


@dataclass
class Tally:
    """What a history did (the long mode's report)."""

    steps: int = 0
    runs: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)  # faults switched on, by kind
    pages_faulted: dict[str, int] = field(default_factory=dict)  # answers a fault shaped, by kind
    store_failures: int = 0
    kills: int = 0
    overlaps: int = 0
    changes: dict[str, int] = field(default_factory=dict)  # source changes, by kind
    during_listing: int = 0  # of them while a listing ran
    lost: int = 0
    wrong: int = 0

    def add(self, what: dict[str, int], key: str, n: int = 1) -> None:
        what[key] = what.get(key, 0) + n


class World:
    def __init__(self, db_url: str, seed: int, *, allow: frozenset[str] = frozenset()):
        """``allow``: known product bugs the history may run into (see the test module's KNOWN_BUGS)."""
        end_date = datetime.now(UTC).date() - timedelta(days=14)
        self.now = int(datetime(end_date.year, end_date.month, end_date.day, 6, tzinfo=UTC).timestamp())
        self.sb = Sandbox(
            SandboxConfig(seed=seed, stores=STORES, days=1, end_date=end_date, orders_per_day=1),
            clock=lambda: self.now,
        )
        self.allow = allow
        self.page_faults = PageFaults()
        self.transport = Listing(self)
        self.client, self.client2 = self._client(), self._client()  # client2: the overlapping run's
        self.db_url = db_url
        self.conn = psycopg.connect(db_url, autocommit=True)
        self.conn2 = psycopg.connect(db_url, autocommit=True)
        reset_warehouse(self.conn)
        sync_stores(self.client, self.conn)
        self.timezones = store_timezones(self.conn)
        self.store_ids = self.sb.store_ids()
        self.tz = {s["id"]: ZoneInfo(s["timezone"]) for s in self.sb.stores()}
        self.states: dict[Key, list[dict | None]] = {
            (sid, r["product_id"]): [r] for sid in self.store_ids for r in self.sb.inventory(sid)
        }
        self.gone: dict[Key, dict] = {}  # deleted at the source -> its last record
        self.tally = Tally()
        self.phase = "idle"
        self.events: list[tuple[str, str, Any]] = []  # ("page", phase, InventoryPage) | ("delete", phase, key)
        self.pending: list[list[Any]] = []  # [kind, n, pages to go]: changes armed for the next listing pages
        self.listing_log: list[str] = []  # the changes made while a listing ran (the step's summary)
        self.last_page: tuple[int, int] | None = None
        self.kill_after: int | None = None  # outer run's pages until the kill fires
        self.overlap_after: int | None = None  # outer run's pages until the overlapping run (0: a listing's end)
        self.outer_pages = 0
        self.overlap_ok: set[int] = set()
        self.overlapped = self.overlap_armed = False
        self.wh_seq: dict[Key, int] = {}  # the latest source state the warehouse matched
        self.seen_live: set[Key] = set()
        self.problems: list[str] = []  # found inside a step (after an overlapping run)

    def _client(self) -> TaptouchClient:
        return TaptouchClient(
            client_id=self.sb.config.client_id,
            client_secret=self.sb.config.client_secret,
            transport=self.transport,
            requests_per_second=None,
            sleep=lambda s: None,
            page_size=PAGE_SIZE,
        )

    def close(self) -> None:
        self.client.close()
        self.client2.close()
        self.conn.close()
        self.conn2.close()

    # ------------------------------------------------------------------ the source
    def _rows(self, store_id: int) -> list[tuple[int, int, str]]:
        """The sandbox's stock rows of the store, (updated epoch, product_id, served text) in
        product order: the very list ``/inventory`` pages are cut from (edited in place)."""
        return self.sb._data.inventory_rows(store_id)

    def listed(self, store_id: int) -> list[int]:
        return [pid for _, pid, _ in self._rows(store_id)]

    def gone_at(self, store_id: int) -> list[int]:
        return sorted(pid for sid, pid in self.gone if sid == store_id)

    def addable(self, store_id: int) -> list[int]:
        return [p[0] for p in catalog.STOCK if (store_id, p[0]) not in self.states]

    def _put(self, store_id: int, record: dict, kind: str) -> None:
        """List ``record`` at the store (a new product, or a new version of a listed one)."""
        rows, pid = self._rows(store_id), record["product_id"]
        at = int(datetime.fromisoformat(record["updated_at"]).timestamp())
        row = (at, pid, dumps(record))
        i = bisect.bisect_left([r[1] for r in rows], pid)
        if i < len(rows) and rows[i][1] == pid:
            rows[i] = row
        else:
            rows.insert(i, row)
        self.states.setdefault((store_id, pid), []).append(loads(row[2]))
        self._changed(kind)

    def _changed(self, kind: str) -> None:
        self.tally.add(self.tally.changes, kind)
        if self.phase != "idle":
            self.tally.during_listing += 1

    def _stamp(self, store_id: int, previous: str | None) -> str:
        at = self.now if previous is None else max(self.now, int(datetime.fromisoformat(previous).timestamp()) + 1)
        return datetime.fromtimestamp(at, self.tz[store_id]).isoformat()

    def change_level(self, store_id: int, pid: int, delta: int) -> str:
        record = dict(self.states[(store_id, pid)][-1])  # type: ignore[arg-type]
        step = Decimal(delta) if record["unit"] == "each" else Decimal(delta * 250).scaleb(-3)
        record["on_hand"] = record["on_hand"] + step
        record["updated_at"] = self._stamp(store_id, record["updated_at"])
        self._put(store_id, record, "level")
        return f"{pid} on_hand {record['on_hand']} @{record['updated_at'][5:19]}"

    def add_product(self, store_id: int, n: int) -> int | None:
        choices = self.addable(store_id)
        if not choices:
            return None
        pid, sku, name, cat, unit, cost, sell = next(p for p in catalog.STOCK if p[0] == choices[n % len(choices)])
        on_hand = Decimal(n % 90) if unit == "each" else Decimal(n % 40_000).scaleb(-3)
        record = {
            "product_id": pid,
            "sku": sku,
            "name": name,
            "category": cat,
            "unit": unit,
            "on_hand": on_hand,
            "reorder_level": Decimal(10) if unit == "each" else Decimal(1000).scaleb(-3),
            "cost_price": Decimal(cost).scaleb(-2),
            "sell_price": Decimal(sell).scaleb(-2),
            "updated_at": self._stamp(store_id, None),
        }
        self._put(store_id, record, "add")
        return pid

    def can_delete(self, store_id: int) -> bool:
        return len(self.gone_at(store_id)) < MAX_GONE

    def delete(self, store_id: int, pid: int) -> None:
        rows = self._rows(store_id)
        i = [r[1] for r in rows].index(pid)
        del rows[i]
        key = (store_id, pid)
        self.gone[key] = self.states[key][-1]  # type: ignore[assignment]
        self.states[key].append(None)
        self._changed("delete")
        if self.phase == "idle":
            self.seen_live.discard(key)
        else:  # during a listing: ordered after the pages served before it (see _account)
            self.events.append(("delete", self.phase, key))

    def relist(self, store_id: int, pid: int, restock: bool) -> str:
        record = dict(self.gone.pop((store_id, pid)))
        if restock:
            record["on_hand"] = record["on_hand"] + 5
            record["updated_at"] = self._stamp(store_id, record["updated_at"])
        self._put(store_id, record, "re-list restocked" if restock else "re-list as it was")
        return f"{pid} {'restocked' if restock else 'as it was'} @{record['updated_at'][5:19]}"

    # ------------------------------------------------------------------ during a listing
    def _on_page(self, page: InventoryPage) -> None:
        page.phase = self.phase
        self.events.append(("page", self.phase, page))
        if page.fault:
            self.tally.add(self.tally.pages_faulted, page.fault)
        # the confirming answer: the short last page asked for again, the listing's last request
        ends = (page.store_id, page.index) == self.last_page and len(page.ids) < page.count
        self.last_page = (page.store_id, page.index)
        for change in list(self.pending):
            change[2] -= 1
            if change[2] <= 0:
                self.pending.remove(change)
                self._change_while_listing(page, change[0], change[1], ends)
        if self.phase != "run":
            return
        self.outer_pages += 1
        if self.overlap_after is not None and (
            (self.overlap_after == 0 and ends) or self.outer_pages == self.overlap_after
        ):
            self.overlap_after = None
            self._overlap()
        if self.kill_after is not None and self.outer_pages >= self.kill_after:
            self.kill_after = None
            self.tally.kills += 1
            raise Killed(f"terminated after page {self.outer_pages}")

    def _change_while_listing(self, page: InventoryPage, kind: str, n: int, ends: bool) -> None:
        sid = page.store_id
        listed = self.listed(sid)
        said = None
        if kind == "level" and page.ids:
            said = self.change_level(sid, page.ids[n % len(page.ids)], n % 7 - 3 or 1)
        elif kind == "add":
            said = self.add_product(sid, n)
        elif kind == "delete" and self.can_delete(sid) and self._may("resurrect"):
            # a product not served yet, or any once the listing is over; with the known bug
            # "shift", also one already served while pages follow (it shifts them)
            served = (page.index + 1) * page.count
            pool = listed if ends or "shift" in self.allow else listed[served:]
            if pool:
                said = pool[n % len(pool)]
                self.delete(sid, said)
        elif kind == "re-list" and self.gone_at(sid):
            # preferably one this listing has passed: it misses a product the source lists again
            served = (page.index + 1) * page.count
            gone = [p for p in self.gone_at(sid) if bisect.bisect_left(listed, p) < served] or self.gone_at(sid)
            said = self.relist(sid, gone[n % len(gone)], restock=n % 2 == 1 or not self._may("unchanged"))
        if said is not None:
            where = "its end" if ends else f"page {page.index}"
            self.listing_log.append(f"{kind} {said} at store {sid} after {page.phase} {where}")

    def _may(self, bug: str) -> bool:
        """Whether a change while this listing runs may lead into the known bug ``bug`` of a run
        that another overlaps: a deletion ("resurrect": an older listing brings back what the newer
        one delisted) or a re-listing as it was ("unchanged": an older listing delists what the newer
        one listed unchanged)."""
        return bug in self.allow or not self.overlap_armed

    def _overlap(self) -> None:
        """Another whole run, on its own client and connection, lists and commits now, while the
        run whose page was just served still lists: its listing is newer and commits first."""
        phase, self.phase = self.phase, "overlap"
        self.tally.overlaps += 1
        self.overlapped = True
        try:
            result = sync_inventory(self.client2, self.conn2, timezones=self.timezones, now=instant(self.now))
        finally:
            self.phase = phase
        self.overlap_ok = set(result.stores_ok) - {f.store_id for f in result.failures}
        self.tally.store_failures += len(result.failures)
        self.problems += self._check_states()

    # ------------------------------------------------------------------ runs (the real code)
    @contextmanager
    def _killer(self, kill: str | None, after: int) -> Iterator[None]:
        """``fetch``: terminated after ``after`` pages of this run; ``merge``: killed just before the
        load of the ``after``-th store (modulo the stores); ``commit``: killed inside that store's
        transaction, after its delisting and merge, before the commit (it rolls back)."""
        if kill == "fetch":
            self.kill_after = after
        nth, calls = (after - 1) % STORES + 1, [0]

        def trap(real: Callable[..., Any], where: str) -> Callable[..., Any]:
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                calls[0] += 1
                if calls[0] == nth:
                    self.tally.kills += 1
                    raise Killed(f"killed {where} (store #{calls[0]} of the run)")
                return real(*args, **kwargs)

            return wrapped

        real_load, real_snapshot = sync.load_inventory, loader._write_snapshot
        if kill == "merge":
            sync.load_inventory = trap(real_load, "just before the merge")  # type: ignore[assignment]
        elif kill == "commit":
            loader._write_snapshot = trap(real_snapshot, "before the commit")  # type: ignore[assignment]
        try:
            yield
        finally:
            sync.load_inventory, loader._write_snapshot = real_load, real_snapshot  # type: ignore[assignment]
            self.kill_after = None

    def sync(
        self, *, kill: str | None = None, after: int = 1, overlap: int | None = None, store: int | None = None
    ) -> str:
        """One run of ``sync_inventory`` (every store, or ``store``): whole, killed part way
        (:meth:`_killer`), or overlapped by another whole run after its ``overlap``-th page (0: at
        the end of its first listing). Returns a summary."""
        name = "run" + (f"-killed-{kill}" if kill else "") + ("-overlapped" if overlap is not None else "")
        self.tally.add(self.tally.runs, name)
        before = self._levels()
        ok: set[int] = set()
        self.phase, self.outer_pages, self.overlap_after, self.last_page = "run", 0, overlap, None
        self.overlapped, self.overlap_ok, self.overlap_armed = False, set(), overlap is not None
        out = []
        try:
            with self._killer(kill, after):
                result = sync_inventory(
                    self.client,
                    self.conn,
                    timezones=self.timezones,
                    store_ids=None if store is None else [store],
                    now=instant(self.now),
                    progress=lambda msg: ok.update(int(m.group(1)) for m in [_PROGRESS.match(msg)] if m),
                )
            failed = {f.store_id: f.error for f in result.failures}
            self.tally.store_failures += len(failed)
            out.append(f"{result.records} listed, +{result.counts.inserted} ~{result.counts.updated}")
            out.append(f"-{result.counts.deleted} delisted")
            out += [f"store {s} failed: {e[:90]}" for s, e in failed.items()]
        except Killed as exc:
            out.append(f"{exc}; stores committed {sorted(ok)}")
        finally:
            self.phase, self.overlap_after, self.overlap_armed = "idle", None, False
        if kill and not any(o.startswith(("terminated", "killed")) for o in out):
            out.append("the kill did not fire")
        if overlap is not None:
            out.append("overlapped" if self.overlapped else "the overlapping run did not start")
        if self.listing_log:
            out.append("while listing: " + "; ".join(self.listing_log))
            self.listing_log = []
        self._account({"run": ok, "overlap": self.overlap_ok})
        if not self.overlapped:
            self._check_untouched(before, self._levels(), ok)
        return ", ".join(out)

    def _account(self, ok: dict[str, set[int]]) -> None:
        """Replay the step's events: ids a listing returned to a run that succeeded for that store
        (phase -> stores) are known live; a deletion at the source forgets that."""
        events, self.events = self.events, []
        for kind, phase, what in events:
            if kind == "page" and what.store_id in ok.get(phase, ()):
                self.seen_live.update((what.store_id, pid) for pid in what.ids)
            elif kind == "delete":
                self.seen_live.discard(what)

    def begin_step(self) -> None:
        self.tally.steps += 1
        self._account({})

    # ------------------------------------------------------------------ invariants
    def _levels(self) -> dict[Key, tuple[dict, datetime]]:
        rows = self.conn.execute("select store_id, product_id, raw::text, synced_at from taptouch.inventory_levels")
        return {(r[0], r[1]): (json.loads(r[2], parse_float=Decimal), r[3]) for r in rows}

    def _check_untouched(self, before: dict, after: dict, ok: set[int]) -> None:
        for sid in set(self.store_ids) - ok:
            was = {k: v for k, v in before.items() if k[0] == sid}
            now = {k: v for k, v in after.items() if k[0] == sid}
            if was != now:
                changed = sorted(k[1] for k in was.keys() | now.keys() if was.get(k) != now.get(k))
                self.problems.append(f"store {sid} failed or was killed, yet products {changed[:8]} changed")

    def _check_states(self) -> list[str]:
        """Invariant 1; records what each product now matches."""
        problems = []
        held = self._levels()
        for key, states in self.states.items():
            got = held.get(key, (None, None))[0]
            matches = [i for i, s in enumerate(states) if s == got]
            latest = matches[-1] if matches else None
            before = self.wh_seq.get(key)
            if got is not None and latest is None:
                problems.append(f"{key}: the warehouse holds a record the source never listed: {got}")
            elif before is not None and (latest is None or latest < before):
                problems.append(self._went_back(key, got, before, latest))
            if latest is not None and (got is not None or before is not None):
                self.wh_seq[key] = latest
        problems += [f"{k}: held, but the API never listed it" for k in held.keys() - self.states.keys()]
        return problems

    def _went_back(self, key: Key, got: dict | None, before: int, latest: int | None) -> str:
        def say(state: dict | None) -> str:
            return "delisted" if state is None else f"on_hand {state['on_hand']} @{state['updated_at'][5:19]}"

        states = self.states[key]
        return (
            f"product {key} went back: the warehouse says {say(got)}"
            + (f" (source state {latest})" if latest is not None else " (no state since it matched)")
            + f", after it matched source state {before} ({say(states[before])}); source now {say(states[-1])}"
        )

    def check_invariants(self) -> None:
        problems, self.problems = self.problems, []
        problems += self._check_states()
        held = self._levels()
        for key in sorted(self.seen_live - held.keys()):
            problems.append(
                f"product {key} is delisted although a listing returned it to a successful run"
                f" (source: {'deleted' if key in self.gone else 'listed'})"
            )
        if problems:
            raise Violation("; ".join(problems[:6]) + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""))

    # ------------------------------------------------------------------ the end of a history
    def final_check(self) -> tuple[str, list[str]]:
        """Faults off, the clock an hour on, one clean sync; then the warehouse must equal the sandbox."""
        self.page_faults.reset()
        self.sb.faults.reset()
        self.pending = []
        self.now += 3600
        self.begin_step()
        summary = self.sync()
        self.check_invariants()
        problems, lost, wrong = compare_exact(self.conn, self.sb)
        self.tally.lost += lost
        self.tally.wrong += wrong
        return summary, problems


def compare_exact(conn: psycopg.Connection, sb: Sandbox) -> tuple[list[str], int, int]:
    """The warehouse's levels against the sandbox's listing: (problems, lost, wrong).

    Lost: a product the API lists that the warehouse lacks. Wrong: a level the API does not list,
    another ``on_hand`` or ``updated_at`` or ``raw``; a store's latest snapshot that is not its levels."""
    problems: list[str] = []
    lost = wrong = 0
    want = truth.inventory_levels(sb)
    rows = conn.execute("select store_id, product_id, on_hand, updated_at, raw::text from taptouch.inventory_levels")
    held = {(r[0], r[1]): r[2:] for r in rows}
    for key, record in sorted(want.items()):
        got = held.get(key)
        if got is None:
            lost += 1
            problems.append(f"lost: product {key} is listed by the API but has no level")
        elif (got[0], got[1], json.loads(got[2], parse_float=Decimal)) != (
            record["on_hand"],
            datetime.fromisoformat(record["updated_at"]),
            record,
        ):
            wrong += 1
            problems.append(
                f"wrong: product {key}: on_hand {got[0]} @{got[1]} != {record['on_hand']} @{record['updated_at']}"
            )
    for key in sorted(held.keys() - want.keys()):
        wrong += 1
        problems.append(f"wrong: product {key} has a level but the API no longer lists it")
    snaps = conn.execute(
        "select store_id, product_id, on_hand from taptouch.inventory_snapshots s where snapshot_date ="
        " (select max(snapshot_date) from taptouch.inventory_snapshots t where t.store_id = s.store_id)"
    ).fetchall()
    if {(r[0], r[1]): r[2] for r in snaps} != {k: v[0] for k, v in held.items()}:
        wrong += 1
        problems.append("wrong: a store's latest inventory snapshot differs from its levels")
    return problems, lost, wrong
