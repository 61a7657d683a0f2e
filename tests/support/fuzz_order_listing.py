"""A seeded fuzzer of the order listing's completeness (not a pytest module: run it as a script).

    PYTHONPATH=. .venv/bin/python tests/support/fuzz_order_listing.py [cases] [first_seed] [mode...]

Each case builds a FakeAPI (tests/support/contract_api.py) whose data changes between requests
(orders created, edited forward, bulk-edited to one instant, deleted), with timestamps of 0-9
fractional digits and random UTC offsets, page sizes 1-5, a server sorted by (updated_at, id), by id,
descending, or by a fixed random key, optionally shuffled within each page, optionally with pages
overlapping by one record. The property: when the listing says it is complete, every order that was
in [updated_from, updated_to) for the whole listing, untouched, was returned at that version, and
nothing returned is a version that never existed.

Modes (edits' stamps): "now" (default: an edit or a creation is stamped at the API's current time,
which moves forward), "late" (also up to ``late`` before it), "any" (anywhere forward: outside the
model the client is built on, reported separately).
"""

from __future__ import annotations

import json
import random
import sys
import traceback
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from taptouch_resource.errors import TaptouchError
from tests.support.contract_api import FakeAPI, client_of, instant, order, store

BASE = 1764100000  # whole seconds, UTC
SORTS = ["ts", "id", "desc", "random"]


def render(at: Decimal, digits: int, offset_min: int | None) -> str:
    sec = int(at // 1)
    frac = at - sec
    tz = UTC if offset_min is None else timezone(timedelta(minutes=offset_min))
    local = datetime.fromtimestamp(sec, tz)
    text = local.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + str(int(frac * 10**digits)).rjust(digits, "0")
    if offset_min is None:
        return text + "Z"
    sign = "+" if offset_min >= 0 else "-"
    m = abs(offset_min)
    return text + f"{sign}{m // 60:02d}:{m % 60:02d}"


class Case:
    def __init__(self, seed: int, mode: str = "now", trace: bool = False):
        self.seed, self.mode, self.trace = seed, mode, trace
        r = self.r = random.Random(seed)
        self.page_size = r.randint(1, 5)
        self.sort = r.choice(SORTS)
        self.shuffle = r.random() < 0.25
        self.overlap = 1 if (self.page_size > 1 and r.random() < 0.15) else 0
        self.rerender = r.random() < 0.2  # replicas: each answer renders an instant with its own offset
        self.late = timedelta(seconds=r.choice([0, 0, 2, 5]))
        self.change_rate = r.choice([0.0, 0.1, 0.3, 0.6, 1.0])
        # or changes at a few chosen requests only (a listing that mostly holds still)
        self.schedule = set(r.sample(range(1, 40), r.randint(1, 4))) if r.random() < 0.6 else None
        # or periodic changes: after each request for a given page index (every pass), one kind of change
        self.periodic = (
            {r.randint(0, 3): r.choice(["create", "edit", "bulk", "delete", "void"]) for _ in range(r.randint(1, 3))}
            if r.random() < 0.4
            else None
        )
        self.vnow = Decimal(BASE + 10) + Decimal(r.randint(0, 999)) / 1000
        self.start_now = self.vnow
        self.t0 = BASE + r.choice([0, 0, 3, 5])
        self.t1 = BASE + r.choice([4, 8, 9, 10, 11, 12, 15, 30])
        self.next_id = 1
        self.keys: dict[int, float] = {}
        self.history: set[tuple[int, str]] = set()
        self.touched: set[int] = set()
        self.log: list[str] = []
        n = r.randint(0, 16)
        seconds = [BASE + r.randint(-2, 10) for _ in range(r.randint(1, 4))]
        self.orders: list[dict] = []
        for _ in range(n):
            at = self.stamp_initial(seconds)
            self.orders.append(self.make(at))
        if r.random() < 0.5:  # a crowd: a bulk change stamped many orders alike
            crowd = self.stamp_initial(seconds)
            for _ in range(r.randint(2, 12)):
                self.orders.append(self.make((crowd[0], crowd[1])))
        r.shuffle(self.orders)
        self.initial = {o["id"]: o["updated_at"] for o in self.orders}
        self.requests = 0
        self.served: set[int] = set()

    # -- stamps ------------------------------------------------------------------------------------
    def digits(self) -> int:
        return self.r.choice([0, 0, 3, 6, 7, 9, self.r.randint(0, 9)])

    def offset(self) -> int | None:
        return self.r.choice([None, 0, 660, 600, -300, 345, -570, 840, -720, self.r.randint(-48, 56) * 15])

    def at_digits(self, at: Decimal, digits: int) -> Decimal:
        q = Decimal(1).scaleb(-digits)
        return at.quantize(q, rounding="ROUND_FLOOR")

    def stamp_initial(self, seconds: list[int]) -> tuple[Decimal, int]:
        r = self.r
        d = self.digits()
        sec = r.choice(seconds)
        frac = Decimal(r.randint(0, 10**d - 1)).scaleb(-d) if d and r.random() < 0.6 else Decimal(0)
        at = Decimal(sec) + frac
        if at >= self.vnow:
            at = self.at_digits(self.vnow - Decimal("0.5"), d)
        return at, d

    def make(self, stamped: tuple[Decimal, int]) -> dict:
        oid = self.next_id
        self.next_id += 1
        self.keys[oid] = self.r.random()
        o = order(oid, 1, "2026-01-01T00:00:00Z")
        self.restamp(o, stamped)
        return o

    def restamp(self, o: dict, stamped: tuple[Decimal, int]) -> None:
        at, d = stamped
        text = render(at, d, self.offset())
        o["updated_at"] = o["completed_at"] = text
        self.history.add((o["id"], text))

    def new_stamp(self, old: Decimal | None) -> tuple[Decimal, int]:
        """A stamp for an edit or a creation: the API's now (the model), or a bit before it (late)."""
        r = self.r
        d = self.digits()
        if self.mode == "any" and r.random() < 0.5:
            lo = old if old is not None else Decimal(BASE - 2)
            at = lo + Decimal(r.choice([0, 1, 2, 5])) + Decimal(r.randint(0, 999999999)).scaleb(-9)
        else:
            at = self.vnow
            if self.mode == "late" and self.late and r.random() < 0.5:
                at -= Decimal(r.randint(0, int(self.late.total_seconds() * 1000))) / 1000
        at = self.at_digits(at, d)
        if old is not None and at <= old:
            d = 9
            at = old + Decimal(r.choice([1, 1, 10, 1000])).scaleb(-9)
        return at, d

    # -- the server ----------------------------------------------------------------------------------
    def sort_key(self, o: dict):
        if self.sort == "ts":
            return (instant(o["updated_at"]), o["id"])
        if self.sort == "id":
            return o["id"]
        if self.sort == "desc":
            return (-instant(o["updated_at"]), -o["id"])
        return self.keys[o["id"]]

    def pager(self, rows: list, index: int, count: int) -> list:
        step = count - self.overlap
        page = rows[index * step : index * step + count]
        self.served = {o["id"] for o in page}
        if self.rerender:
            rr = random.Random(self.seed * 7919 + self.requests)
            page = [dict(o, updated_at=self.again(o["updated_at"], rr)) for o in page]
        if self.shuffle and page:
            rr = random.Random(hash(tuple(o["id"] for o in page)) ^ self.seed)
            page = list(page)
            rr.shuffle(page)
        return page

    def again(self, text: str, rr: random.Random) -> str:
        at = instant(text)
        digits = len(text[20:].split("+")[0].split("-")[0].rstrip("Z")) if text[19:20] == "." else 0
        out = render(at, digits, rr.choice([None, 0, 660, -300, 345, 840, -720]))
        return out

    def mutate(self, request) -> None:
        r = self.r
        self.requests += 1
        self.vnow += r.choice([Decimal(0), Decimal("1e-9"), Decimal("1e-6"), Decimal("0.3"), Decimal(1)])
        forced = None
        if self.periodic is not None:
            forced = self.periodic.get(int(request.url.params.get("index", -1)))
            if forced is None:
                return
        elif self.schedule is not None:
            if self.requests not in self.schedule:
                return
        elif r.random() >= self.change_rate:
            return
        for _ in range(1 if forced else r.choice([1, 1, 1, 2, 3])):
            op = {"create": 0.0, "edit": 0.3, "bulk": 0.6, "delete": 0.9, "void": 0.9}.get(forced, r.random())
            live = self.fake.orders[1]
            inside = [o for o in live if self.t0 <= instant(o["updated_at"]) < self.t1]
            behind = [o for o in live if o["id"] in self.served]  # what the paginator just passed
            pick = r.random()
            pool = behind if behind and pick < 0.5 else inside if inside and pick < 0.85 else live
            if op < 0.2 or not live:
                o = self.make(self.new_stamp(None))
                live.append(o)
                self.touched.add(o["id"])
                self.log.append(f"req{self.requests}: create {o['id']} at {o['updated_at']}")
            elif op < 0.55:
                o = r.choice(pool)
                self.restamp(o, self.new_stamp(instant(o["updated_at"])))
                self.touched.add(o["id"])
                self.log.append(f"req{self.requests}: edit {o['id']} to {o['updated_at']}")
            elif op < 0.75:
                group = r.sample(pool, min(len(pool), r.randint(2, 5)))
                old = max(instant(o["updated_at"]) for o in group)
                stamp = self.new_stamp(old)
                for o in group:
                    self.restamp(o, stamp)
                    self.touched.add(o["id"])
                self.log.append(f"req{self.requests}: bulk edit {[o['id'] for o in group]} to {group[0]['updated_at']}")
            else:
                created = [o for o in live if o["id"] not in self.initial]  # a new order voided and removed
                o = r.choice(created if created and (forced == "void" or r.random() < 0.4) else pool)
                live.remove(o)
                self.touched.add(o["id"])
                self.log.append(f"req{self.requests}: delete {o['id']}")

    def run(self) -> tuple[str, str]:
        self.fake = FakeAPI([store(1)], orders={1: self.orders})
        self.fake.sort = self.sort_key
        self.fake.pager = self.pager
        self.fake.clock = lambda: int(self.vnow // 1)
        trace = self.trace

        def after(request):
            if trace:
                p = dict(request.url.params)
                self.log.append(
                    f"req{self.requests + 1}: from={p.get('updated_from')} to={p.get('updated_to')} "
                    f"index={p.get('index')} count={p.get('count')}"
                )
            self.mutate(request)

        self.fake.after = after
        if trace:
            orig = self.fake.__call__

            class Wrap:
                def __call__(s, request):
                    resp = orig(request)
                    if not request.url.path.endswith("/token"):
                        data = json.loads(resp.content)["data"]
                        self.log.append("   -> " + str([(d["id"], d["updated_at"]) for d in data]))
                    return resp

            handler = Wrap()
        else:
            handler = self.fake
        start = float(self.start_now)
        client = client_of(handler, page_size=self.page_size, clock=lambda: start)
        t0 = datetime.fromtimestamp(self.t0, UTC)
        t1 = datetime.fromtimestamp(self.t1, UTC)
        try:
            listing = client.iter_order_record_pages(
                1, updated_from=t0, updated_to=t1, confirm_end=True, late=self.late
            )
            got = [json.loads(raw) for page in listing for raw in page]
        except TaptouchError as exc:
            return "loud", str(exc)[:100]
        returned = {(o["id"], instant(o["updated_at"])) for o in got}
        bogus = returned - {(oid, instant(text)) for oid, text in self.history}
        if bogus:
            return "BOGUS", str(sorted(bogus))
        if not listing.complete:
            return "incomplete", ""
        must = {
            (oid, instant(text))
            for oid, text in self.initial.items()
            if oid not in self.touched and self.t0 <= instant(text) < self.t1
        }
        missing = must - returned
        if missing:
            return "MISSED", str(sorted(missing))
        return "ok", ""

    def describe(self) -> str:
        return (
            f"seed={self.seed} mode={self.mode} page_size={self.page_size} sort={self.sort} shuffle={self.shuffle} "
            f"overlap={self.overlap} rerender={self.rerender} late={self.late} rate={self.change_rate} schedule={self.schedule} periodic={self.periodic} t0=BASE+{self.t0 - BASE} "
            f"t1=BASE+{self.t1 - BASE} now=BASE+{self.start_now - BASE} requests={self.requests}"
        )


def main(argv: list[str]) -> None:
    import logging

    logging.disable(logging.CRITICAL)
    cases = int(argv[1]) if len(argv) > 1 else 1000
    first = int(argv[2]) if len(argv) > 2 else 0
    modes = argv[3:] or ["now"]
    counts: dict[str, int] = {}
    shown = 0
    for seed in range(first, first + cases):
        for mode in modes:
            case = Case(seed, mode)
            try:
                verdict, detail = case.run()
            except Exception:
                verdict, detail = "CRASH", traceback.format_exc(limit=3)[-300:]
            key = f"{mode}:{verdict}"
            counts[key] = counts.get(key, 0) + 1
            if verdict in ("MISSED", "BOGUS", "CRASH") and shown < 30:
                shown += 1
                print(verdict, case.describe(), detail, flush=True)
    print(counts)


if __name__ == "__main__":
    main(sys.argv)
