"""The sandbox's data: stores, orders and stock levels, generated deterministically and lazily.

Each (seed, store, local day) seeds a cheap day *skeleton* (enough to select and sort an
``updated_at`` window) and each order its own *detail*, encoded once to the exact JSON the API
serves; only bounded LRU caches hold them, so memory does not grow with the volume. Helpers parse
the served text back (``parse_float=Decimal``), so they equal a served record by construction.
"""

from __future__ import annotations

import bisect
import hashlib
import random
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from . import catalog
from ._json import dumps, dumps_prepared, loads, money
from .config import SandboxConfig

STATUSES = ("completed", "open", "voided", "partially_refunded", "refunded")
COMPLETED, OPEN, VOIDED, PARTIAL, REFUNDED = range(5)
_PAID = (COMPLETED, PARTIAL, REFUNDED)  # statuses of an order paid in full once done
STATUS_CODE = {s: i for i, s in enumerate(STATUSES)}
MAX_EDIT_LAG = 3 * 86400  # updated_at - created_at never exceeds this (30 h edits + completion)
_ID_DAY = 10_000
_ID_STORE = 1_000_000
_ID_SPACE = 1_000  # store indexes per id space (stores <= 899)
# A store-day's orders past its 9,999th (orders_per_day above 8,000, a busy day) take ids above every
# other: id + (n // _ID_DAY) * _ID_HIGH, so the ids of the first 9,999 never change.
_ID_HIGH = 10**15
_HISTORIC_ORDERS_PER_DAY = 8_000  # up to this mean a store-day holds at most 9,999 orders, as it always did

# minute-of-day weights of a café: breakfast and lunch peaks, a thin evening of deliveries
_W = []
for _m in range(1440):
    _h = _m / 60
    _w = 0.02
    if 6 <= _h < 16:
        _w = 1.0
    elif 16 <= _h < 21:
        _w = 0.25
    if 7 <= _h < 9.5:
        _w += 3.0
    if 11.75 <= _h < 13.75:
        _w += 3.5
    _W.append(_w)
_CUM = []
_acc = 0.0
for _w in _W:
    _acc += _w
    _CUM.append(_acc)
_MINUTES = list(range(1440))
_CAT_CUM = []
for _ws in catalog.CATEGORY_WEIGHTS:
    _c, _a = [], 0
    for _x in _ws:
        _a += _x
        _c.append(_a)
    _CAT_CUM.append(_c)
_MENU_BY_CAT = {c: [p for p in catalog.MENU if p[3] == c] for c in catalog.CATEGORIES}
_SURCHARGE_BP = {"visa": 110, "mastercard": 110, "amex": 180, "eftpos": 0}


def _half_up_div(a: int, b: int) -> int:
    """round(a / b) half away from zero, integers only."""
    if a < 0:
        return -((-a * 2 + b) // (2 * b))
    return (a * 2 + b) // (2 * b)


def _seed64(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


class _LRU(OrderedDict):
    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def get_or(self, key, make: Callable[[], Any]):
        try:
            value = self[key]
            self.move_to_end(key)
            return value
        except KeyError:
            value = make()
            self[key] = value
            if len(self) > self.capacity:
                self.popitem(last=False)
            return value


@dataclass
class Store:
    idx: int
    id: int
    tz: ZoneInfo
    code: str
    surcharges: bool
    empty: bool
    text: str  # the store record as served


@dataclass
class _Override:
    store_id: int
    updated: int
    status: int
    text: str


class OrderData:
    """Deterministic data of one sandbox. Thread-safe; all public methods take the lock."""

    def __init__(self, config: SandboxConfig, end_date: date):
        self.config = config
        self.end_date = end_date
        self.first_date = end_date - timedelta(days=config.days - 1)
        self.first_ordinal = self.first_date.toordinal()
        self.end_ordinal = end_date.toordinal()
        # no updated_at at or after (end_date + 1 day) 00:00 UTC
        self.cap = int(datetime.combine(end_date + timedelta(days=1), time(0), UTC).timestamp())
        self._lock = threading.RLock()
        per_day = max(1, config.orders_per_day)
        self._skeletons = _LRU(max(32, 150_000 // per_day))
        self._texts = _LRU(20_000)
        self._windows = _LRU(8)
        self._overrides: dict[int, _Override] = {}
        self._deleted: set[int] = set()  # deleted at the source: no longer listed (no tombstone) [model]
        # Moves on with every change of what is served (an edit, a deletion, a restore): what was
        # served from an older generation may be stale (the page cache drops it).
        self.generation = 0
        self._inventory: dict[int, list[tuple[int, int, str]]] = {}
        self.stores: list[Store] = [self._make_store(i) for i in range(config.stores)]
        self.by_id: dict[int, Store] = {s.id: s for s in self.stores}

    # ---------------------------------------------------------------- stores
    def _make_store(self, idx: int) -> Store:
        cfg = self.config
        tzname, suburb, state, postcode, country, line1 = catalog.SITES[idx % len(catalog.SITES)]
        round_ = idx // len(catalog.SITES)
        store_id = cfg.store_id_base + idx
        name = f"{catalog.STORE_NAME_PREFIX} {suburb}" + (f" #{round_ + 1}" if round_ else "")
        if tzname == "Pacific/Auckland":
            name += " Café"
        tz = ZoneInfo(tzname)
        rng = random.Random(_seed64(cfg.seed, "store", store_id))
        slug = suburb.lower().replace(" ", "") + (str(round_ + 1) if round_ else "")
        created = datetime(2023, 1 + idx % 12, 1 + idx % 27, 9, 0, tzinfo=tz)
        updated = datetime.combine(
            self.end_date - timedelta(days=rng.randrange(5, 200)), time(rng.randrange(8, 18), rng.randrange(60)), tz
        )
        phone_cc = (
            "+64 9"
            if country == "NZ"
            else "+61 " + {"NSW": "2", "VIC": "3", "TAS": "3", "QLD": "7", "SA": "8", "WA": "8", "NT": "8"}[state]
        )
        record = {
            "id": store_id,
            "name": name,
            "business_name": catalog.BUSINESS_NAME,
            "status": "inactive" if store_id in cfg.inactive_store_ids else "active",
            "timezone": tzname,
            "currency": "AUD",
            "address": {
                "line1": line1,
                "line2": "Shop 2" if idx % 4 == 1 else None,
                "suburb": suburb,
                "state": state,
                "postcode": postcode,
                "country": country,
            },
            "phone": f"{phone_cc} {rng.randrange(1000, 9999)} {rng.randrange(1000, 9999)}",
            "email": f"{slug}@prosperity.example.com",
            "created_at": created.isoformat(),
            "updated_at": updated.isoformat(),
        }
        return Store(
            idx=idx,
            id=store_id,
            tz=tz,
            code=suburb[:3].upper() + (str(round_ + 1) if round_ else ""),
            surcharges=idx % 3 != 2,
            empty=store_id in cfg.empty_store_ids,
            text=dumps(record),
        )

    def store_ids(self) -> list[int]:
        return [s.id for s in self.stores]

    # ---------------------------------------------------------------- ids
    def order_id(self, store_idx: int, ordinal: int, n: int) -> int:
        # id_space > 0 (another client of the same server): another block of ids (Taptouch ids are global)
        high, n = divmod(n, _ID_DAY)
        return (
            ((self.config.id_space * _ID_SPACE + store_idx + 1) * _ID_STORE + ordinal) * _ID_DAY + n + high * _ID_HIGH
        )

    def day_ids(self, store_idx: int, ordinal: int, count: int) -> Iterator[int]:
        """The ids of a store-day's first ``count`` orders, in the generator's (created_at) order."""
        base = self.order_id(store_idx, ordinal, 0)
        yield from range(base, base + min(count, _ID_DAY))
        for high in range(1, (count + _ID_DAY - 1) // _ID_DAY):
            start = base + high * _ID_HIGH
            yield from range(start, start + min(_ID_DAY, count - high * _ID_DAY))

    def decode_id(self, order_id: int) -> tuple[Store, int, int] | None:
        high, order_id = divmod(order_id, _ID_HIGH)
        n = order_id % _ID_DAY + high * _ID_DAY
        rest = order_id // _ID_DAY
        ordinal = rest % _ID_STORE
        idx = rest // _ID_STORE - 1 - self.config.id_space * _ID_SPACE
        if not (0 <= idx < len(self.stores)) or not (self.first_ordinal <= ordinal <= self.end_ordinal):
            return None
        store = self.stores[idx]
        _, sk = self._skeleton(store, ordinal)
        if n >= len(sk):
            return None
        return store, ordinal, n

    # ---------------------------------------------------------------- skeletons
    def _skeleton(self, store: Store, ordinal: int) -> tuple[int, list[tuple[int, int, int, int, int]]]:
        return self._skeletons.get_or((store.idx, ordinal), lambda: self._make_skeleton(store, ordinal))

    def _make_skeleton(self, store: Store, ordinal: int):
        cfg = self.config
        day_seed = _seed64(cfg.seed, store.id, ordinal)
        if store.empty or cfg.orders_per_day == 0:
            return day_seed, []
        rng = random.Random(day_seed)
        day = date.fromordinal(ordinal)
        factor = (0.9, 1.0, 1.0, 1.0, 1.05, 1.15, 1.15)[day.weekday()]
        most = _ID_DAY - 1 if cfg.orders_per_day <= _HISTORIC_ORDERS_PER_DAY else 10 * _ID_DAY - 1
        count = min(most, max(0, round(cfg.orders_per_day * factor * rng.uniform(0.85, 1.15))))
        minutes = rng.choices(_MINUTES, cum_weights=_CUM, k=count)
        if count >= 4:  # a delivery just after and one just before local midnight, every day
            minutes[0] = rng.randrange(0, 15)
            minutes[1] = 23 * 60 + 50 + rng.randrange(10)
        minutes.sort()
        tz, y, mo, d = store.tz, day.year, day.month, day.day
        cap = self.cap
        rand, randint = rng.random, rng.randint
        out = []
        for minute in minutes:
            created = int(datetime(y, mo, d, minute // 60, minute % 60, rng.randrange(60), tzinfo=tz).timestamp())
            done = created + randint(20, 900)
            r = rand()
            if r < 0.02:
                status, updated = OPEN, created + randint(0, 1200)
            elif r < 0.05:
                status, updated = VOIDED, created + randint(30, 1800)
            elif r < 0.08:
                status, updated = PARTIAL, done + randint(120, 30 * 3600)
            elif r < 0.10:
                status, updated = REFUNDED, done + randint(120, 30 * 3600)
            else:
                status = COMPLETED
                updated = done + randint(300, 30 * 3600) if rand() < 0.06 else done
            if updated >= cap:
                updated = max(cap - 1, created)
            out.append((created, done, updated, status, minute))
        return day_seed, out

    # ---------------------------------------------------------------- order detail
    def _make_order(self, store: Store, ordinal: int, n: int) -> str:
        """The order's served JSON, drawn from its own seed.

        The draws come in a fixed order (channel, people, items, discount, payments, refund
        reason): reordering them changes every generated order.
        """
        day_seed, sk = self._skeleton(store, ordinal)
        created, done, updated, status, minute = sk[n]
        oid = self.order_id(store.idx, ordinal, n)
        rng = random.Random(day_seed + n + 1)
        tz = store.tz
        hour = minute // 60
        updated_at = _iso(updated, tz)
        source, fulfillment = _draw_channel(rng, hour)
        cashier, customer = _draw_people(rng, store)
        items, subtotal, largest = _draw_items(rng, hour)
        discount = _draw_order_discount(rng, subtotal)
        payments = _Payments(rng, store, oid)
        payments.settle(status, subtotal - discount, done, updated)
        total = subtotal - discount + payments.surcharge + payments.rounding
        order = {
            "id": oid,
            "number": f"{store.code}-{date.fromordinal(ordinal):%y%m%d}-{n + 1:04d}",
            "store_id": store.id,
            "source": source,
            "fulfillment_type": fulfillment,
            "status": STATUSES[status],
            "cashier": cashier,
            "customer": customer,
            "created_at": _iso(created, tz),
            "updated_at": updated_at,
            "completed_at": _iso(done, tz) if status in _PAID else None,
            "currency": "AUD",
            "subtotal": money(subtotal),
            "discount": money(discount),
            "surcharge": money(payments.surcharge),
            "rounding": money(payments.rounding),
            "tax": money(_half_up_div(total, 11)),
            "total": money(total),
            "tips": money(payments.tips),
            "redeem_points": payments.points,
            "items": items,
            "payments": payments.records,
            "refunds": _draw_refunds(rng, status, total, largest, oid, updated_at),
        }
        return dumps_prepared(order)

    # ---------------------------------------------------------------- order access
    def order_text(self, order_id: int) -> str:
        with self._lock:
            ov = self._overrides.get(order_id)
            if ov is not None:
                return ov.text

            def make() -> str:
                loc = self.decode_id(order_id)
                if loc is None:
                    raise KeyError(order_id)
                return self._make_order(*loc)

            return self._texts.get_or(order_id, make)

    def order(self, order_id: int) -> dict:
        return loads(self.order_text(order_id))

    def _days(self, store: Store, f: int, t: int) -> range:
        lo = datetime.fromtimestamp(max(f - MAX_EDIT_LAG, 0), store.tz).date().toordinal() if f > 0 else 0
        hi = datetime.fromtimestamp(min(t, self.cap + 86400), store.tz).date().toordinal()
        return range(max(lo, self.first_ordinal), min(hi, self.end_ordinal) + 1)

    def window_ids(
        self, store_id: int, f: int | None = None, t: int | None = None, statuses: frozenset[int] | None = None
    ) -> array:
        """Ids of the store's orders with f <= updated_at < t (epoch seconds), sorted by (updated_at, id)."""
        f = -(1 << 62) if f is None else f
        t = 1 << 62 if t is None else t
        key = (store_id, f, t, statuses)
        with self._lock:
            return self._windows.get_or(key, lambda: self._make_window(self.by_id[store_id], f, t, statuses))

    def _make_window(self, store: Store, f: int, t: int, statuses) -> array:
        rows = []
        overrides = self._overrides
        for ordinal in self._days(store, f, t):
            _, sk = self._skeleton(store, ordinal)
            for oid, row in zip(self.day_ids(store.idx, ordinal, len(sk)), sk, strict=True):
                u = row[2]
                if f <= u < t and (statuses is None or row[3] in statuses):
                    if overrides and oid in overrides:
                        continue
                    rows.append((u, oid))
        for oid, ov in overrides.items():
            if ov.store_id == store.id and f <= ov.updated < t and (statuses is None or ov.status in statuses):
                rows.append((ov.updated, oid))
        if self._deleted:
            rows = [r for r in rows if r[1] not in self._deleted]
        rows.sort()
        return array("q", [oid for _, oid in rows])

    def all_order_ids(self, store_id: int) -> Iterator[int]:
        """Every order id of a store, by created_at (ids ascend with it, up to a store-day's 9,999th order)."""
        store = self.by_id[store_id]
        for ordinal in range(self.first_ordinal, self.end_ordinal + 1):
            with self._lock:
                n_orders = len(self._skeleton(store, ordinal)[1])
            deleted = self._deleted
            yield from (oid for oid in self.day_ids(store.idx, ordinal, n_orders) if oid not in deleted)

    # ---------------------------------------------------------------- edits
    def edit_order(self, order_id: int, changes: dict[str, Any]) -> dict:
        """A new version of an order: apply ``changes``, recompute the arithmetic, move updated_at on."""
        with self._lock:
            old = self.order(order_id)
            store = self.by_id[old["store_id"]]
            new = recompute_order(old, changes, store.tz, order_id)
            status = STATUS_CODE.get(new["status"], COMPLETED)
            updated = int(datetime.fromisoformat(new["updated_at"]).timestamp())
            self._overrides[order_id] = _Override(store.id, updated, status, dumps(new))
            self.generation += 1
            self._windows.clear()
            self._texts.pop(order_id, None)
            return self.order(order_id)

    def delete_order(self, order_id: int) -> None:
        """Delete an order at the source: it is no longer listed (no tombstone, updated_at unchanged)."""
        with self._lock:
            if self.decode_id(order_id) is None and order_id not in self._overrides:
                raise KeyError(order_id)
            self._deleted.add(order_id)
            self.generation += 1
            self._windows.clear()

    def restore_order(self, order_id: int) -> None:
        """Undo :meth:`delete_order`: the order is listed again, as it was."""
        with self._lock:
            self._deleted.discard(order_id)
            self.generation += 1
            self._windows.clear()

    def deleted_order_ids(self) -> set[int]:
        with self._lock:
            return set(self._deleted)

    # ---------------------------------------------------------------- inventory
    def inventory_rows(self, store_id: int) -> list[tuple[int, int, str]]:
        """(updated epoch, product_id, served text) of every stock level, by product id."""
        with self._lock:
            rows = self._inventory.get(store_id)
            if rows is None:
                rows = self._inventory[store_id] = self._make_inventory(self.by_id[store_id])
            return rows

    def _make_inventory(self, store: Store) -> list[tuple[int, int, str]]:
        if store.empty:
            return []
        rng = random.Random(_seed64(self.config.seed, "inventory", store.id))
        products = sorted(rng.sample(catalog.STOCK, rng.randint(30, min(60, len(catalog.STOCK)))))
        end_local = datetime.combine(self.end_date, time(0), store.tz)
        rows = []
        for pid, sku, name, cat, unit, cost, sell in products:
            if unit == "each":
                on_hand = Decimal(rng.randint(-4, 120)) if rng.random() < 0.1 else Decimal(rng.randint(0, 120))
                reorder = Decimal(rng.choice((5, 10, 12, 20, 24)))
            else:
                low = -2500 if rng.random() < 0.1 else 0
                on_hand = Decimal(rng.randint(low, 40_000)).scaleb(-3)
                reorder = Decimal(rng.choice((500, 1000, 2500, 5000))).scaleb(-3)
            at = end_local - timedelta(days=rng.randrange(0, 14), minutes=rng.randrange(6 * 60, 20 * 60))
            at = at.replace(second=0, microsecond=0)
            at = datetime.fromtimestamp(int(at.timestamp()), store.tz)
            record = {
                "product_id": pid,
                "sku": sku,
                "name": name,
                "category": cat,
                "unit": unit,
                "on_hand": on_hand,
                "reorder_level": reorder,
                "cost_price": Decimal(cost).scaleb(-2),
                "sell_price": Decimal(sell).scaleb(-2),
                "updated_at": at.isoformat(),
            }
            rows.append((int(at.timestamp()), pid, dumps(record)))
        return rows


def _iso(epoch: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(epoch, tz).isoformat()


def _draw_channel(rng: random.Random, hour: int) -> tuple[str, str]:
    """The order's source and fulfillment type; late at night only the delivery platforms."""
    rand = rng.random
    if hour < 5 or hour >= 21:
        source = "ubereats" if rand() < 0.6 else "doordash"
    else:
        r = rand()
        source = (
            "pos"
            if r < 0.62
            else "kiosk"
            if r < 0.74
            else "online"
            if r < 0.84
            else "ubereats"
            if r < 0.93
            else "doordash"
        )
    if source in ("ubereats", "doordash"):
        return source, "delivery"
    if source == "online":
        return source, "pickup" if rand() < 0.85 else "delivery"
    return source, "dine_in" if rand() < 0.55 else "takeaway"


def _draw_people(rng: random.Random, store: Store) -> tuple[dict, dict | None]:
    """The order's cashier, and its customer (none on about 40% of orders)."""
    ci = rng.randrange(len(catalog.CASHIER_NAMES))
    cashier = {"id": (store.idx + 1) * 100 + ci, "name": catalog.CASHIER_NAMES[ci]}
    if rng.random() < 0.4:
        return cashier, None
    k = rng.randrange(len(catalog.CUSTOMER_NAMES))
    customer = {
        "id": 90_000 + k,
        "name": catalog.CUSTOMER_NAMES[k],
        "email": f"customer{90_000 + k}@example.com" if rng.random() < 0.8 else None,
    }
    return cashier, customer


def _draw_items(rng: random.Random, hour: int) -> tuple[list[dict], int, int]:
    """1 to 5 lines from the menu, by the time of day: (items, subtotal, largest line) in cents."""
    cat_cum = _CAT_CUM[0 if hour < 11 else 1 if hour < 15 else 2]
    r = rng.random()
    n_items = 1 if r < 0.38 else 2 if r < 0.68 else 3 if r < 0.85 else 4 if r < 0.94 else 5
    items = []
    subtotal = largest = 0
    for item_no in range(1, n_items + 1):
        item, line = _draw_item(rng, item_no, cat_cum)
        items.append(item)
        subtotal += line
        largest = max(largest, line)
    return items, subtotal, largest


def _draw_item(rng: random.Random, item_no: int, cat_cum: list[int]) -> tuple[dict, int]:
    """One order line and its total in cents (after its own discount)."""
    rand, randrange = rng.random, rng.randrange
    cat = catalog.CATEGORIES[bisect.bisect(cat_cum, randrange(cat_cum[-1]))]
    pid, sku, name, _, price, mod_group, mod_chance = _MENU_BY_CAT[cat][randrange(len(_MENU_BY_CAT[cat]))]
    r = rand()
    qty = 1 if r < 0.82 else 2 if r < 0.96 else 3
    mods, mod_sum = _draw_modifiers(rng, mod_group, mod_chance)
    gross = qty * (price + mod_sum)
    disc = _half_up_div(gross, 10) if rand() < 0.06 else 0
    line = gross - disc
    item = {
        "id": item_no,
        "product_id": pid,
        "sku": sku,
        "name": name,
        "category": cat,
        "quantity": qty,
        "unit_price": money(price),
        "discount": money(disc),
        "tax": money(_half_up_div(line, 11)),
        "total": money(line),
        "modifiers": mods,
    }
    return item, line


def _draw_modifiers(rng: random.Random, group: list, chance: float) -> tuple[list[dict], int]:
    """A line's modifiers (none, one or two of its group) and their price per unit in cents."""
    rand = rng.random
    mods = []
    mod_sum = 0
    if rand() < chance:
        for mid, mname, mprice in rng.sample(group, 1 if rand() < 0.75 else 2):
            mq = 2 if mid == 80 and rand() < 0.3 else 1
            mods.append({"id": mid, "name": mname, "quantity": mq, "price": money(mprice)})
            mod_sum += mprice * mq
    return mods, mod_sum


def _draw_order_discount(rng: random.Random, subtotal: int) -> int:
    """The order-level discount in cents: 10% on about 5% of orders, $5 off on 2% of those over $20."""
    r = rng.random()
    return _half_up_div(subtotal, 10) if r < 0.05 else 500 if r < 0.07 and subtotal > 2000 else 0


class _Payments:
    """One order's payments as they are drawn, and the surcharge, rounding, tips and points they add."""

    def __init__(self, rng: random.Random, store: Store, order_id: int):
        self.rng = rng
        self.tz = store.tz
        self.surcharges = store.surcharges
        self.order_id = order_id
        self.records: list[dict] = []
        self.surcharge = self.rounding = self.tips = self.points = 0

    def settle(self, status: int, due: int, done: int, updated: int) -> None:
        """Pay ``due`` cents as an order of ``status`` is paid: in full once done, in part if open."""
        rng = self.rng
        if status in _PAID:
            r = rng.random()
            if r < 0.16:  # cash: rounded to 5 cents
                self.rounding = _half_up_div(due, 5) * 5 - due
                self._add("cash", due + self.rounding, 0, 0, done)
            elif r < 0.24:  # gift card or points, the rest by card
                method = "gift_card" if r < 0.20 else "points"
                part_amount = min(due, (500, 1000, 2000, 2500)[rng.randrange(4)])
                if method == "points":
                    self.points = part_amount
                self._add(method, part_amount, 0, 0, done)
                if due > part_amount:
                    self._card(due - part_amount, done)
            else:
                self._card(due, done)
        elif status == OPEN and due > 100 and rng.random() < 0.3:  # a part paid by gift card
            self._add("gift_card", rng.randrange(100, due), 0, 0, updated)

    def _card(self, amount: int, at: int) -> None:
        """A card payment of ``amount`` plus the store's surcharge for the scheme, maybe a tip."""
        rand = self.rng.random
        r = rand()
        method = "visa" if r < 0.42 else "mastercard" if r < 0.72 else "amex" if r < 0.80 else "eftpos"
        bp = _SURCHARGE_BP[method] if self.surcharges else 0
        sur = _half_up_div(amount * bp, 10_000)
        tip = self.rng.randrange(100, 550, 50) if rand() < 0.08 else 0
        self.surcharge += sur
        self.tips += tip
        self._add(method, amount + sur, sur, tip, at)

    def _add(self, method: str, amount: int, sur: int, tip: int, at: int) -> None:
        self.records.append(
            {
                "id": self.order_id * 10 + len(self.records) + 1,
                "method": method,
                "amount": money(amount),
                "tip": money(tip),
                "surcharge": money(sur),
                "paid_at": _iso(at, self.tz),
            }
        )


def _draw_refunds(rng: random.Random, status: int, total: int, largest: int, order_id: int, at: str) -> list[dict]:
    """The refund of a refunded (all of it) or partially refunded (its largest line) order."""
    if status == REFUNDED:
        amount = total
    elif status == PARTIAL:
        amount = largest if 0 < largest < total else max(1, total // 2)
    else:
        return []
    refund = {
        "id": order_id * 10 + 5,
        "amount": money(amount),
        "reason": catalog.REFUND_REASONS[rng.randrange(len(catalog.REFUND_REASONS))],
        "refunded_at": at,
    }
    return [refund]


def _cents(value: Any) -> int:
    return int((Decimal(str(value)) * 100).to_integral_value())


def recompute_order(old: dict, changes: dict[str, Any], tz: ZoneInfo, order_id: int) -> dict:
    """Apply ``changes`` to an order and make every arithmetic rule of the contract hold again.

    Recognised: any top-level field; ``status`` "refunded"/"partially_refunded" adds a refund when
    none is given; "voided" drops payments; ``items`` recomputes the money. ``updated_at``
    (datetime or ISO string) defaults to one hour after the previous version.
    """
    new = {**old, **{k: v for k, v in changes.items() if k != "updated_at"}}
    upd_iso = _edited_at(old, changes.get("updated_at"), tz)
    new["updated_at"] = upd_iso
    status = new["status"]
    subtotal = _reprice_items(new["items"])
    pre = subtotal - _cents(new["discount"])
    if status == "voided" and "payments" not in changes:
        new["payments"] = []
    if status in ("open", "voided"):
        new["completed_at"] = None
    elif new.get("completed_at") is None:
        new["completed_at"] = upd_iso
    payments = new["payments"]
    surcharge = sum(_cents(p["surcharge"]) for p in payments)
    cash = any(p["method"] == "cash" for p in payments)
    rounding = _half_up_div(pre, 5) * 5 - pre if cash else 0
    total = pre + surcharge + rounding
    if status in ("completed", "partially_refunded", "refunded"):
        _balance_payments(payments, total, order_id, upd_iso)
    new["subtotal"] = Decimal(subtotal).scaleb(-2)
    new["surcharge"] = Decimal(surcharge).scaleb(-2)
    new["rounding"] = Decimal(rounding).scaleb(-2)
    new["total"] = Decimal(total).scaleb(-2)
    new["tax"] = Decimal(_half_up_div(total, 11)).scaleb(-2)
    new["tips"] = Decimal(sum(_cents(p["tip"]) for p in payments)).scaleb(-2)
    if "refunds" not in changes:
        new["refunds"] = _matching_refunds(new.get("refunds", []), status, total, order_id, upd_iso)
    return new


def _edited_at(old: dict, updated_at: datetime | str | None, tz: ZoneInfo) -> str:
    """The new version's updated_at in the store's zone, whole seconds; an hour on by default."""
    if updated_at is None:
        upd_dt = datetime.fromisoformat(old["updated_at"]) + timedelta(hours=1)
    elif isinstance(updated_at, str):
        upd_dt = datetime.fromisoformat(updated_at)
    else:
        upd_dt = updated_at
    if upd_dt.tzinfo is None:
        raise ValueError("updated_at must carry a UTC offset")
    return datetime.fromtimestamp(int(upd_dt.timestamp()), tz).isoformat()


def _reprice_items(items: list[dict]) -> int:
    """Set each line's total and tax from its quantity, price, modifiers and discount; the subtotal in cents."""
    subtotal = 0
    for item in items:
        mods = sum(_cents(m["price"]) * m["quantity"] for m in item.get("modifiers", []))
        line = int(Decimal(str(item["quantity"])) * (_cents(item["unit_price"]) + mods)) - _cents(item["discount"])
        item["total"] = Decimal(line).scaleb(-2)
        item["tax"] = Decimal(_half_up_div(line, 11)).scaleb(-2)
        subtotal += line
    return subtotal


def _balance_payments(payments: list[dict], total: int, order_id: int, paid_at: str) -> None:
    """Make a paid order's payments add up to its total: the last one takes the difference."""
    if not payments:
        payments.append(
            {
                "id": order_id * 10 + 1,
                "method": "eftpos",
                "amount": Decimal(0),
                "tip": Decimal("0.00"),
                "surcharge": Decimal("0.00"),
                "paid_at": paid_at,
            }
        )
    paid_other = sum(_cents(p["amount"]) for p in payments[:-1])
    payments[-1]["amount"] = Decimal(total - paid_other).scaleb(-2)


def _matching_refunds(refunds: list[dict], status: str, total: int, order_id: int, at: str) -> list[dict]:
    """The refunds the edited order's status calls for, when the edit gave none."""
    if status in ("refunded", "partially_refunded") and not refunds:
        amount = total if status == "refunded" else max(1, total // 2)
        return [
            {
                "id": order_id * 10 + 5,
                "amount": Decimal(amount).scaleb(-2),
                "reason": "customer complaint",
                "refunded_at": at,
            }
        ]
    if status == "refunded":
        refunds = [{**refunds[0], "amount": Decimal(total).scaleb(-2)}] + refunds[1:]
        if sum(_cents(r["amount"]) for r in refunds) > total:
            refunds = [{**refunds[0], "amount": Decimal(total).scaleb(-2)}]
        return refunds
    if status in ("completed", "open", "voided"):
        return []
    return refunds
