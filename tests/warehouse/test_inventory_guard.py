"""Inventory delisting you can trust, and exact: one empty or cut answer delists nothing (the last
page is asked for twice, and a listing that misses held products lists the store once more); what
two listings in a row miss is delisted at once, an emptied store included (the contract:
``inventory_levels`` holds exactly what the API lists at the last successful sync). A single
suspicious listing loaded on its own (``load_inventory`` without the second listing) waits for a
second one TAPTOUCH_RECONCILE_CONFIRM_S later (sandbox over an httpx transport, real PostgreSQL, a
fake clock)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from pipelines.sync import sync_inventory, sync_stores
from pipelines.warehouse.loader import load_inventory, store_timezones
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig

pytestmark = pytest.mark.postgres

HOUR = timedelta(hours=1)
_INVENTORY = re.compile(r"/stores/(\d+)/inventory$")


class Listing(httpx.BaseTransport):
    """The sandbox's transport; ``keep(store_id, records) -> records`` rewrites inventory answers."""

    def __init__(self, sb: Sandbox):
        self.inner, self.keep = sb.transport(), None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        m = _INVENTORY.search(request.url.path)
        if m and self.keep is not None and response.status_code == 200:
            env = json.loads(response.read())
            env["data"] = self.keep(int(m.group(1)), env["data"])
            return httpx.Response(200, headers={"content-type": "application/json"}, content=json.dumps(env).encode())
        return response


@pytest.fixture
def world(migrated_db):
    sb = Sandbox(SandboxConfig(seed=3, stores=2, days=2, orders_per_day=5))
    transport = Listing(sb)
    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=transport,
        requests_per_second=None,
        sleep=lambda s: None,
        page_size=500,
    )
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        now = datetime.now(UTC)
        assert not sync_inventory(client, conn, timezones=store_timezones(conn), now=now).failures
        yield sb, transport, client, conn, now


def _products(conn, store: int) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "select product_id from taptouch.inventory_levels where store_id = %s order by product_id", (store,)
        )
    ]


def _waiting(conn, store: int) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "select product_id from taptouch.inventory_delist_candidates where store_id = %s order by product_id",
            (store,),
        )
    ]


def test_a_store_emptied_at_the_source_is_emptied_in_the_warehouse_by_one_sync(world):
    # the contract: inventory_levels holds exactly what the API lists at the last successful sync.
    # The first listing misses every held product, so the store is listed again at once; both agree
    sb, transport, client, conn, now = world
    store, other = sb.store_ids()
    held, held_other = _products(conn, store), _products(conn, other)
    assert len(held) > 10
    asked = []
    transport.keep = lambda sid, data: (asked.append(sid), [])[1] if sid == store else data
    result = sync_inventory(client, conn, timezones=store_timezones(conn), now=now + HOUR)
    assert result.per_store[store]["deleted"] == len(held) and not result.failures
    assert _products(conn, store) == [] and _waiting(conn, store) == []
    assert len(asked) == 4  # two listings, each asking for its (empty) last page twice
    assert _products(conn, other) == held_other  # the other store was never touched


def test_one_empty_answer_delists_nothing(world):
    sb, transport, client, conn, now = world
    store = sb.store_ids()[0]
    held = _products(conn, store)
    answers = []

    def once(sid, data):
        if sid != store:
            return data
        answers.append(len(answers))
        return [] if len(answers) == 1 else data

    transport.keep = once
    result = sync_inventory(client, conn, timezones=store_timezones(conn), now=now + HOUR)
    assert result.counts.deleted == 0 and _products(conn, store) == held


def test_a_listing_that_drops_most_products_delists_them_and_merges_what_it_lists(world):
    sb, transport, client, conn, now = world
    store = sb.store_ids()[0]
    held = _products(conn, store)
    few = held[: len(held) // 3]

    def partial(sid, data):
        if sid != store:
            return data
        kept = [r for r in data if r["product_id"] in few]
        kept[0]["on_hand"] = 4321  # the levels it does list merge
        return kept

    transport.keep = partial
    first = sync_inventory(client, conn, timezones=store_timezones(conn), now=now + HOUR)
    assert first.per_store[store]["deleted"] == len(held) - len(few) and _products(conn, store) == few
    assert (
        conn.execute(
            "select on_hand from taptouch.inventory_levels where store_id = %s and product_id = %s", (store, few[0])
        ).fetchone()[0]
        == 4321
    )
    assert _waiting(conn, store) == []
    transport.keep = None  # the products come back: listed again
    sync_inventory(client, conn, timezones=store_timezones(conn), now=now + 3 * HOUR)
    assert _products(conn, store) == held and _waiting(conn, store) == []


def test_an_ordinary_listing_still_delists_at_once(world):
    sb, transport, client, conn, now = world
    store = sb.store_ids()[0]
    held = _products(conn, store)
    gone = held[:3]
    transport.keep = lambda sid, data: [r for r in data if r["product_id"] not in gone] if sid == store else data
    result = sync_inventory(client, conn, timezones=store_timezones(conn), now=now + HOUR)
    assert result.per_store[store]["deleted"] == 3
    assert _products(conn, store) == held[3:] and _waiting(conn, store) == []


def test_a_page_cut_short_once_delists_nothing(migrated_db):
    """A 200 answer cut short looks exactly like the last page. Inventory's end is asked for twice:
    a second answer that is a full page means the listing goes on, and nothing listed is delisted."""
    sb = Sandbox(SandboxConfig(seed=3, stores=1, days=2, orders_per_day=5))
    inner, cuts = sb.transport(), []

    def handler(request: httpx.Request) -> httpx.Response:
        response = inner.handle_request(request)
        if _INVENTORY.search(request.url.path) and request.url.params.get("index") == "1" and not cuts:
            env = json.loads(response.read())
            cuts.append(len(env["data"]))
            env["data"] = env["data"][: len(env["data"]) // 2]  # once: the next answer is whole
            return httpx.Response(200, headers={"content-type": "application/json"}, content=json.dumps(env).encode())
        return response

    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=httpx.MockTransport(handler),
        requests_per_second=None,
        sleep=lambda s: None,
        page_size=10,
    )
    sid = sb.store_ids()[0]
    assert len(sb.inventory(sid)) >= 30  # pages 0-2 are full: half of page 1 is a short page
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        cuts.append("loaded")  # the first sync reads whole pages
        held = "select product_id from taptouch.inventory_levels where store_id = %s order by 1"
        assert not sync_inventory(client, conn, timezones=store_timezones(conn)).failures
        listed = sorted(r["product_id"] for r in sb.inventory(sid))
        assert [r[0] for r in conn.execute(held, (sid,))] == listed
        cuts.clear()  # now page 1 comes back cut short, once
        result = sync_inventory(client, conn, timezones=store_timezones(conn))
        assert cuts == [10] and result.counts.deleted == 0
        assert [r[0] for r in conn.execute(held, (sid,))] == listed


def _raw_records(client, store: int) -> list[bytes]:
    return list(client.iter_inventory_records(store))


def _clock(conn) -> datetime:
    return conn.execute("select clock_timestamp()").fetchone()[0]


def test_of_two_overlapping_listings_the_newer_decides_whichever_commits_first(world):
    """Listing A reads product P; P is deleted at the source; listing B starts later and misses it.
    A commits first, then B: B is the latest listing, so P is gone (before: B kept P because A's load
    wrote it after B was requested). And the other way round: A is skipped, P stays gone."""
    from pipelines.warehouse.loader import load_inventory

    sb, _, client, conn, now = world
    store = sb.store_ids()[0]
    day = now.date()
    gone = _products(conn, store)[2]
    a_since = _clock(conn)
    a_records = []
    for raw in _raw_records(client, store):  # P restocked just before A reads it: A writes its level
        record = json.loads(raw)
        if record["product_id"] == gone:
            record["on_hand"] += 5
            record["updated_at"] = (now + timedelta(minutes=1)).isoformat()
        a_records.append(json.dumps(record).encode())
    b_since = _clock(conn)
    b_records = [r for r in a_records if json.loads(r)["product_id"] != gone]
    assert load_inventory(conn, store, a_records, snapshot_date=day, listed_since=a_since).updated == 1
    counts = load_inventory(conn, store, b_records, snapshot_date=day, listed_since=b_since)
    assert counts.deleted == 1 and gone not in _products(conn, store)

    older = load_inventory(conn, store, a_records, snapshot_date=day, listed_since=a_since)  # committed last
    assert older.inserted == older.updated == older.deleted == 0
    assert gone not in _products(conn, store)


def test_a_skipped_older_listing_keeps_its_malformed_records_resolved(world):
    """An older listing committed after a newer one changes nothing: its malformed record is kept in
    the quarantine (nothing is dropped) but resolved at once, since the newer listing stands."""
    from pipelines.warehouse.loader import load_inventory

    sb, _, client, conn, now = world
    store = sb.store_ids()[0]
    old_since = _clock(conn)
    records = _raw_records(client, store)
    bad = json.loads(records[0])
    bad["on_hand"] = "lots"
    load_inventory(conn, store, records, snapshot_date=now.date(), listed_since=_clock(conn))  # the newer one
    before = _products(conn, store)
    older = load_inventory(
        conn, store, [json.dumps(bad).encode(), *records[1:]], snapshot_date=now.date(), listed_since=old_since
    )
    assert older.quarantined == 1 and _products(conn, store) == before
    rows = conn.execute(
        "select resolved_at is not null from taptouch.quarantine where entity = 'inventory' and record_key = %s",
        (str(bad["product_id"]),),
    ).fetchall()
    assert rows == [(True,)]


def test_one_suspicious_listing_loaded_on_its_own_waits_for_a_second_one_later(world):
    # load_inventory without sync_inventory's second listing: an empty listing of a store holding
    # levels delists nothing until another one at least confirm_s later agrees
    sb, _, _, conn, now = world
    store = sb.store_ids()[0]
    held = _products(conn, store)
    day = now.date()
    first = load_inventory(conn, store, [], snapshot_date=day, now=now + HOUR, confirm_s=3600)
    assert first.deleted == 0 and _products(conn, store) == held and _waiting(conn, store) == held
    soon = load_inventory(conn, store, [], snapshot_date=day, now=now + HOUR + HOUR / 2, confirm_s=3600)
    assert soon.deleted == 0 and _products(conn, store) == held
    later = load_inventory(conn, store, [], snapshot_date=day, now=now + 2 * HOUR, confirm_s=3600)
    assert later.deleted == len(held) and _products(conn, store) == [] and _waiting(conn, store) == []
