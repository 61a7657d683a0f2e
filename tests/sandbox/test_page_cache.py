"""The sandbox's page cache (``SandboxConfig.page_cache_mb``) serves exactly what the uncached
sandbox serves, sees every change of the data, and steps aside while a fault shapes pages; and a
store-day may hold more than 9,999 orders (a busy day) without changing any smaller day's ids."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from taptouch_sandbox import Faults, Sandbox, SandboxConfig
from taptouch_sandbox.cli import PAGE_CACHE_ENV, build_parser
from taptouch_sandbox.pagecache import PageCache

END = date(2026, 11, 27)
NOW = datetime(2026, 11, 28, 3, 0, tzinfo=UTC).timestamp()  # a fixed clock: both sandboxes stamp alike
DAY = (datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 26, tzinfo=UTC))
COUNT = 50


def make(cache_mb: int = 0, **overrides) -> Sandbox:
    cfg = dict(seed=3, stores=2, days=4, end_date=END, orders_per_day=120, page_cache_mb=cache_mb)
    cfg.update(overrides)
    return Sandbox(SandboxConfig(**cfg), faults=Faults(), clock=lambda: NOW)


def pages(sb: Sandbox, store_id: int, count: int = COUNT, **params) -> list[bytes]:
    """Every orders page of the store's window as the client receives it: the response bytes."""
    headers = {"Authorization": f"bearer {sb.issue_token()}"}
    query = {"updated_from": DAY[0].isoformat(), "updated_to": DAY[1].isoformat(), "count": count, **params}
    out = []
    with httpx.Client(base_url="https://api.taptouch.net", transport=sb.transport()) as c:
        for index in range(1000):
            r = c.get(f"/integration/v1/stores/{store_id}/orders", headers=headers, params={**query, "index": index})
            assert r.status_code == 200, r.text
            out.append(r.content)
            if len(json.loads(r.content)["data"]) < count:
                return out
    raise AssertionError("pagination never ended")


def listing(sb: Sandbox, count: int = COUNT, **params) -> list[bytes]:
    return [page for sid in sb.store_ids() for page in pages(sb, sid, count, **params)]


def test_a_cached_page_is_byte_for_byte_the_uncached_page():
    plain, cached = make(), make(cache_mb=64)
    want = listing(plain)
    assert len(want) >= 6  # several pages per store
    first = listing(cached)
    assert cached.page_cache is not None and len(cached.page_cache) == len(want)
    assert cached.page_cache.hits == 0
    again = listing(cached)
    assert cached.page_cache.hits == len(want)  # the second listing came from memory
    assert first == want and again == want
    assert cached.stats.orders_served == 2 * plain.stats.orders_served
    # another page size or status filter is another request: cached apart, served right
    assert listing(cached, count=7, status="refunded,voided") == listing(plain, count=7, status="refunded,voided")


def test_an_edit_deletion_or_restore_after_a_cached_read_is_served_at_once():
    plain, cached = make(), make(cache_mb=64)
    store = cached.store_ids()[0]
    before = pages(cached, store)
    pages(cached, store)  # now served from the cache
    served = json.loads(before[0], parse_float=Decimal)["data"]
    edited, deleted = served[1]["id"], served[2]["id"]
    for sb in (plain, cached):
        # the same instant inside the window, so the edited order stays in it (moved to that place)
        sb.edit_order(edited, status="refunded", updated_at=DAY[0] + timedelta(hours=23))
        sb.delete_order(deleted)
    after = pages(cached, store)
    assert after == pages(plain, store) and after != before
    orders = [o for page in after for o in json.loads(page, parse_float=Decimal)["data"]]
    assert deleted not in {o["id"] for o in orders}
    assert next(o for o in orders if o["id"] == edited)["status"] == "refunded"
    assert cached.page_cache is not None and cached.page_cache.invalidations == 1
    for sb in (plain, cached):
        sb.restore_order(deleted)
    assert pages(cached, store) == pages(plain, store)
    assert deleted in {o["id"] for page in pages(cached, store) for o in json.loads(page)["data"]}


def test_an_edit_made_while_the_listing_runs_is_seen_by_the_next_page():
    """on_page edits (a merchant's edit during the listing): the pages after it are the new data's."""
    plain, cached = make(), make(cache_mb=64)
    store = cached.store_ids()[0]
    listing(cached)  # every page cached
    for sb in (plain, cached):
        target = sb.orders_in_window(store, *DAY)[-1]["id"]  # on the last page

        def edit(page, sb=sb, target=target):
            if page.index == 0:
                sb.edit_order(target, status="voided", updated_at=DAY[1] - timedelta(seconds=1))

        sb.on_page = edit
    got = pages(cached, store)
    assert got == pages(plain, store)
    last = json.loads(got[-1])["data"]
    assert any(o["id"] == target and o["status"] == "voided" for o in last)


@pytest.mark.parametrize(
    "fault",
    [
        {"unsorted_pages": True},
        {"malformed_every": 7},
        {"extra_fields": True},
        {"partial_orders_every": 3},
        {"empty_orders_every": 4},
        {"duplicate_page_boundary": True},
    ],
)
def test_a_fault_that_shapes_pages_is_served_as_without_the_cache(fault):
    plain, cached = make(), make(cache_mb=64)
    listing(cached)  # the faithful pages are cached ...
    for sb in (plain, cached):
        for name, value in fault.items():
            setattr(sb.faults, name, value)
    assert listing(cached) == listing(plain)  # ... and not served while the fault is on
    for sb in (plain, cached):
        sb.faults.reset()
    assert listing(cached) == listing(plain)


def test_the_cache_holds_at_most_its_capacity_least_recently_used_out_first():
    cache = PageCache(capacity=10)
    cache.put("a", 0, (1,), b"aaaa")
    cache.put("b", 0, (2,), b"bbbb")
    assert cache.get("a", 0) == ((1,), b"aaaa")  # a is now the most recently used
    cache.put("c", 0, (3,), b"cccc")  # 12 bytes > 10: b goes
    assert cache.get("b", 0) is None and cache.size == 8
    cache.put("huge", 0, (4,), b"x" * 11)  # larger than the whole cache: not kept
    assert cache.get("huge", 0) is None and len(cache) == 2
    assert cache.get("a", 1) is None and len(cache) == 0  # a newer generation of the data: emptied


def test_the_serve_command_takes_the_cache_size_from_its_flag_or_environment(monkeypatch):
    monkeypatch.delenv(PAGE_CACHE_ENV, raising=False)
    assert build_parser().parse_args(["serve"]).page_cache_mb == 0
    monkeypatch.setenv(PAGE_CACHE_ENV, "256")
    assert build_parser().parse_args(["serve"]).page_cache_mb == 256
    assert build_parser().parse_args(["serve", "--page-cache-mb", "0"]).page_cache_mb == 0
    monkeypatch.setenv(PAGE_CACHE_ENV, "lots")
    with pytest.raises(SystemExit):
        build_parser()
    with pytest.raises(ValueError, match="page_cache_mb"):
        SandboxConfig(page_cache_mb=-1)


def test_a_store_day_may_hold_more_than_9999_orders_with_ids_of_their_own():
    sb = make(stores=1, days=1, orders_per_day=12_000)
    ids = list(sb._data.all_order_ids(sb.store_ids()[0]))
    assert len(ids) > 9_999 and len(set(ids)) == len(ids)
    assert ids[:9_999] == list(range(ids[0], ids[0] + 9_999))  # the first 9,999 as on any day
    assert all(oid >= 10**15 for oid in ids[10_000:])  # the rest above every other id
    for oid in (ids[9_998], ids[10_000], ids[-1]):
        order = sb.order(oid)
        assert order["id"] == oid and order["number"].endswith(f"-{ids.index(oid) + 1:04d}")
    minutes = [sb.order(oid)["created_at"][:16] for oid in ids[9_990:10_010]]  # generated by minute
    assert minutes == sorted(minutes)  # the ids past 9,999 go on in created_at order
    with pytest.raises(ValueError, match="orders_per_day"):
        SandboxConfig(orders_per_day=60_001)
