"""Deletions you can trust: two complete listings an hour apart, the share guard, unparseable
records, restores (looked for while TAPTOUCH_RESTORE_DAYS lasts, then settled), repairs, and no API
call under the merge lock. Sandbox over an httpx transport, real PostgreSQL, a fake clock for the
confirmation interval."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import dagster as dg
import httpx
import psycopg
import pytest

from pipelines.definitions import defs
from pipelines.reconcile import EARLIEST_DELETED_SQL, reconcile_orders
from pipelines.sync import sync_stores
from pipelines.warehouse import deletions
from pipelines.warehouse.loader import _LOCK_ORDERS
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchClient, TaptouchResource
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.windows import load_window

pytestmark = pytest.mark.postgres

HOUR = timedelta(hours=1)
order_deletions = defs.get_assets_def("order_deletions")  # as the code location registers it
_ORDERS = re.compile(r"/stores/(\d+)/orders$")


class Tamper(httpx.BaseTransport):
    """The sandbox's transport, with a hook that may rewrite or replace the answer of an orders
    request: ``hook(store_id, request, response) -> response``."""

    def __init__(self, sb: Sandbox):
        self.inner = sb.transport()
        self.hook: Callable[[int, httpx.Request, httpx.Response], httpx.Response] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        m = _ORDERS.search(request.url.path)
        if m and self.hook is not None:
            response.read()
            return self.hook(int(m.group(1)), request, response)
        return response


def _answer(response: httpx.Response, body: bytes) -> httpx.Response:
    return httpx.Response(response.status_code, headers={"content-type": "application/json"}, content=body)


def empty_answer(store: int):
    """An HTTP 200 envelope with ``data: []`` for every orders request of ``store``."""

    def hook(sid, request, response):
        if sid != store or response.status_code != 200:
            return response
        env = json.loads(response.content)
        env["data"] = []
        return _answer(response, json.dumps(env).encode())

    return hook


def _client(transport, sleep=lambda s: None) -> TaptouchClient:
    return TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=transport,
        requests_per_second=None,
        sleep=sleep,
        page_size=50,
    )


@pytest.fixture
def small(migrated_db):
    """One store left with exactly 3 orders (the others deleted at the source before the load)."""
    today = datetime.now(UTC).date()
    sb = Sandbox(SandboxConfig(seed=5, stores=2, days=4, end_date=today, orders_per_day=6))
    store = sb.store_ids()[0]
    now = datetime.now(UTC)
    keep = [o["id"] for o in sb.orders(store) if o["updated_at"] < (now - HOUR).isoformat()][-3:]
    for o in list(sb.orders(store)):
        if o["id"] not in keep:
            sb.delete_order(o["id"])
    tamper = Tamper(sb)
    client = _client(tamper)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        start = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=6)
        assert not load_window(client, conn, "all", start, now + timedelta(days=2)).failures
        assert _live(conn, store) == sorted(keep) and len(keep) == 3
        yield sb, tamper, client, conn, store


@pytest.fixture
def world(migrated_db):
    today = datetime.now(UTC).date()
    sb = Sandbox(SandboxConfig(seed=11, stores=2, days=10, end_date=today, orders_per_day=15))
    tamper = Tamper(sb)
    client = _client(tamper)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        sync_stores(client, conn)
        now = datetime.now(UTC)
        start = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=12)
        result = load_window(client, conn, "all", start, now + timedelta(days=2))
        assert not result.failures and result.counts.inserted > 100
        yield sb, tamper, client, conn


def _live(conn, store: int) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "select order_id from taptouch.orders where store_id = %s and deleted_at is null order by order_id",
            (store,),
        )
    ]


def _deleted(conn) -> set[int]:
    return {r[0] for r in conn.execute("select order_id from taptouch.orders where deleted_at is not null")}


def _candidates(conn) -> set[int]:
    return {r[0] for r in conn.execute("select order_id from taptouch.deletion_candidates")}


def _recent(conn, store: int, now: datetime, days: int = 3) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "select order_id from taptouch.orders where store_id = %s and updated_at >= %s and updated_at < %s"
            " order by order_id",
            (store, now - timedelta(days=days), now - HOUR),
        )
    ]


# ------------------------------------------------------------------------------------- two listings


def test_one_empty_answer_for_a_small_store_deletes_nothing(small):
    sb, tamper, client, conn, store = small
    now = datetime.now(UTC)
    tamper.hook = empty_answer(store)
    first = reconcile_orders(client, conn, days=7, now=now)
    assert first.deleted == 0 and not first.failures
    assert _candidates(conn) == set(_live(conn, store)) and len(_live(conn, store)) == 3  # candidates only
    # the same empty answer an hour later: 3 of 3 is an unusual share, refused loudly, nothing deleted
    second = reconcile_orders(client, conn, days=7, now=now + HOUR)
    assert second.deleted == 0 and _deleted(conn) == set()
    [(sid, error, transient)] = second.failures
    assert sid == store and not transient
    assert f"confirm_mass_deletion_stores: [{store}]" in error and "3 of the store's 3" in error
    # the API answers properly again: the candidates go, nothing was ever deleted
    tamper.hook = None
    third = reconcile_orders(client, conn, days=7, now=now + 2 * HOUR)
    assert third.deleted == 0 and not third.failures
    assert _candidates(conn) == set() and len(_live(conn, store)) == 3


def test_a_partial_answer_then_a_full_one_an_hour_later(world):
    sb, tamper, client, conn = world
    store = sb.store_ids()[0]
    now = datetime.now(UTC)
    recent = _recent(conn, store, now)
    gone = recent[len(recent) // 2]
    sb.delete_order(gone)  # one real deletion among the orders the partial answer leaves out

    def partial(sid, request, response):  # the first page cut to a third: short, so it looks like the end
        if sid != store or response.status_code != 200:
            return response
        env = json.loads(response.content)
        env["data"] = env["data"][: len(env["data"]) // 3]
        return _answer(response, json.dumps(env).encode())

    tamper.hook = partial
    first = reconcile_orders(client, conn, days=7, now=now)
    assert first.deleted == 0 and not first.failures
    assert gone in _candidates(conn) and len(_candidates(conn)) > 10  # the partial answer missed many
    tamper.hook = None
    # half an hour later: not yet confirmed
    early = reconcile_orders(client, conn, days=7, now=now + HOUR / 2)
    assert early.deleted == 0 and _candidates(conn) == {gone}
    # an hour after the first listing: the one order both complete listings missed is deleted, only it
    second = reconcile_orders(client, conn, days=7, now=now + HOUR)
    assert second.deleted == 1 and _deleted(conn) == {gone} and _candidates(conn) == set()
    assert (
        conn.execute("select deleted_at from taptouch.orders where order_id = %s", (gone,)).fetchone()[0] == now + HOUR
    )


def test_a_candidate_edited_and_loaded_meanwhile_is_not_deleted(world):
    sb, tamper, client, conn = world
    store = sb.store_ids()[0]
    now = datetime.now(UTC)
    oid = _recent(conn, store, now)[0]
    sb.delete_order(oid)  # the listings miss it
    reconcile_orders(client, conn, days=7, now=now)
    assert _candidates(conn) == {oid}
    # the order moves (edited at the source and loaded) out of the range a listing judges
    conn.execute("update taptouch.orders set updated_at = %s where order_id = %s", (now + timedelta(days=1), oid))
    second = reconcile_orders(client, conn, days=7, now=now + 2 * HOUR)
    assert second.deleted == 0 and _deleted(conn) == set() and _candidates(conn) == set()


# ------------------------------------------------------------------------------ unparseable records


def test_an_unparseable_record_counts_as_listed(world):
    sb, tamper, client, conn = world
    store = sb.store_ids()[0]
    now = datetime.now(UTC)
    as_string, bad_utf8 = _recent(conn, store, now)[:2]

    def hostile(sid, request, response):  # one record with a string id, one with bytes that are not UTF-8
        if sid != store or response.status_code != 200:
            return response
        body = response.content.replace(b'{"id":%d,' % as_string, b'{"id":"%d",' % as_string)
        body = re.sub(rb'(\{"id":%d,[^{]*?"number":")' % bad_utf8, lambda m: m.group(1) + b"\xff\xfe", body)
        return _answer(response, body)

    tamper.hook = hostile
    for at in (now, now + HOUR, now + 2 * HOUR):
        result = reconcile_orders(client, conn, days=7, now=at)
        assert result.deleted == 0 and not result.failures
    assert _deleted(conn) == set() and _candidates(conn) == set()
    # the hook really served them broken: the orders loader quarantines both
    start = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(days=12)
    load_window(client, conn, "all", start, now + timedelta(days=2))
    keys = {r[0] for r in conn.execute("select record_key from taptouch.quarantine where entity = 'order'")}
    assert {str(as_string), str(bad_utf8)} <= keys


def test_a_record_without_a_readable_id_deletes_nothing_at_its_store(world, caplog):
    sb, tamper, client, conn = world
    store, other = sb.store_ids()[:2]
    now = datetime.now(UTC)
    nameless = _recent(conn, store, now)[0]
    gone, gone_other = _recent(conn, store, now)[3], _recent(conn, other, now)[3]
    sb.delete_order(gone)
    sb.delete_order(gone_other)

    def no_id(sid, request, response):
        if sid != store or response.status_code != 200:
            return response
        return _answer(response, response.content.replace(b'{"id":%d,' % nameless, b'{"ident":%d,' % nameless))

    tamper.hook = no_id
    for at in (now, now + HOUR, now + 2 * HOUR):
        reconcile_orders(client, conn, days=7, now=at)
    assert _deleted(conn) == {gone_other}  # the other store's deletion went through, this store's did not
    assert "cannot be read" in caplog.text and f"store {store}" in caplog.text


# ------------------------------------------------------------------------------- restores, repairs


def listing_starts(starts: dict[int, datetime]):
    """A hook recording, per store, the earliest ``updated_from`` an orders request sent (the listing's
    start: later pages ask from their cursor), answers unchanged."""

    def hook(sid, request, response):
        sent = request.url.params.get("updated_from")
        if sent is not None:
            at = datetime.fromisoformat(sent)
            starts[sid] = min(at, starts.get(sid, at))
        return response

    return hook


def _oldest(conn, before: datetime) -> tuple[int, int, datetime]:
    """(order, store, updated_at) of the warehouse's oldest order updated before ``before``."""
    return conn.execute(
        "select order_id, store_id, updated_at from taptouch.orders where updated_at < %s order by updated_at limit 1",
        (before,),
    ).fetchone()


def test_an_order_deleted_within_the_restore_days_is_looked_for_from_its_updated_at_and_restored(world):
    sb, tamper, client, conn = world
    now = datetime.now(UTC)
    old, store, updated_at = _oldest(conn, now - timedelta(days=8))
    # marked deleted 6 days ago (when it was recent, or by a wider TAPTOUCH_RECONCILE_DAYS), listed again since
    conn.execute("update taptouch.orders set deleted_at = %s where order_id = %s", (now - timedelta(days=6), old))
    starts: dict[int, datetime] = {}
    tamper.hook = listing_starts(starts)
    result = reconcile_orders(client, conn, days=2, now=now, restore_days=7)
    assert result.restored == 1 and _deleted(conn) == set()
    listed_from = [s.listed_from for s in result.stores if s.store_id == store][0]
    assert listed_from == updated_at  # not the period's start, now - 2 days
    assert starts[store] == updated_at - timedelta(seconds=1)  # what the client asked for (1 s of slack)
    other = [s for s in sb.store_ids() if s != store][0]  # a store without deletions lists its period only
    assert starts[other] == now - timedelta(days=2, seconds=1)
    # the default bound (TAPTOUCH_RESTORE_DAYS 30) covers a deletion of 6 days ago too
    conn.execute("update taptouch.orders set deleted_at = %s where order_id = %s", (now - timedelta(days=6), old))
    assert reconcile_orders(client, conn, days=2, now=now).restored == 1 and _deleted(conn) == set()


def test_a_deletion_older_than_the_restore_days_is_settled_until_a_listing_of_its_day_returns_it(world):
    """Marked deleted 6 days ago, with TAPTOUCH_RESTORE_DAYS 5: the reconciliation lists only its
    period (no widening for it) and the order stays deleted though the API lists it in its own
    window; raising the bound (or loading its day) restores it."""
    sb, tamper, client, conn = world
    now = datetime.now(UTC)
    old, store, updated_at = _oldest(conn, now - timedelta(days=8))
    conn.execute("update taptouch.orders set deleted_at = %s where order_id = %s", (now - timedelta(days=6), old))
    window = client.iter_orders(store, updated_from=updated_at - HOUR, updated_to=updated_at + HOUR)
    assert old in {o["id"] for o in window}  # the API does list it, in its old window
    starts: dict[int, datetime] = {}
    tamper.hook = listing_starts(starts)
    settled = reconcile_orders(client, conn, days=2, now=now, restore_days=5)
    assert not settled.failures and settled.restored == 0 and _deleted(conn) == {old}
    assert [s.listed_from for s in settled.stores if s.store_id == store] == [now - timedelta(days=2)]
    assert starts[store] == now - timedelta(days=2, seconds=1)  # the period's start, not the order's updated_at
    # the bound raised past the deletion's age: looked for again from its updated_at, and restored
    starts.clear()
    raised = reconcile_orders(client, conn, days=2, now=now, restore_days=7)
    assert raised.restored == 1 and _deleted(conn) == set()
    assert starts[store] == updated_at - timedelta(seconds=1)
    # settled again, then an orders load of its UTC day returns it: restored by the load
    conn.execute("update taptouch.orders set deleted_at = %s where order_id = %s", (now - timedelta(days=6), old))
    assert reconcile_orders(client, conn, days=2, now=now, restore_days=5).restored == 0 and _deleted(conn) == {old}
    day = datetime(updated_at.year, updated_at.month, updated_at.day, tzinfo=UTC)
    assert not load_window(client, conn, day.date().isoformat(), day, day + timedelta(days=1)).failures
    assert _deleted(conn) == set()


def test_the_recent_deletions_of_a_store_are_found_by_one_probe_of_the_partial_index(world):
    """The look-up run for every store on every reconciliation reads the partial index of deleted
    orders (migration 0021), never the store's orders."""
    sb, tamper, client, conn = world
    now = datetime.now(UTC)
    old, store, updated_at = _oldest(conn, now - timedelta(days=8))
    conn.execute("update taptouch.orders set deleted_at = %s where order_id = %s", (now - timedelta(days=6), old))
    conn.execute("analyze taptouch.orders")
    assert conn.execute(EARLIEST_DELETED_SQL, (store, now - timedelta(days=7))).fetchone()[0] == updated_at
    assert conn.execute(EARLIEST_DELETED_SQL, (store, now - timedelta(days=5))).fetchone()[0] is None
    plan = "\n".join(r[0] for r in conn.execute("explain " + EARLIEST_DELETED_SQL, (store, now)))
    assert "orders_store_deleted_at" in plan and "Seq Scan" not in plan, plan


def test_orders_the_warehouse_lacks_or_holds_older_are_repaired_through_the_merge(world):
    sb, tamper, client, conn = world
    store = sb.store_ids()[1]
    now = datetime.now(UTC)
    lost, stale = _recent(conn, store, now)[:2]
    conn.execute("delete from taptouch.orders where order_id = %s", (lost,))  # a record a listing skipped
    edited = sb.edit_order(stale, updated_at=(now - HOUR / 2).isoformat())  # an edit the hourly run missed
    result = reconcile_orders(client, conn, days=7, now=now)
    assert result.repaired == 2 and result.deleted == 0
    row = conn.execute("select raw ->> 'updated_at' from taptouch.orders where order_id = %s", (stale,)).fetchone()
    assert row[0] == edited["updated_at"]
    assert conn.execute("select count(*) from taptouch.order_items where order_id = %s", (lost,)).fetchone()[0] == len(
        sb.order(lost)["items"]
    )
    assert reconcile_orders(client, conn, days=7, now=now).repaired == 0  # nothing left to repair


# --------------------------------------------------------------------------------- mass deletions


def test_a_mass_deletion_is_refused_until_confirmed_by_the_judging_function(small):
    sb, tamper, client, conn, store = small
    for oid in _live(conn, store):
        sb.delete_order(oid)  # really gone: every one of the store's orders
    now = datetime.now(UTC)
    reconcile_orders(client, conn, days=7, now=now)
    refused = reconcile_orders(client, conn, days=7, now=now + HOUR)
    assert refused.deleted == 0 and refused.refused == 3 and [f[0] for f in refused.failures] == [store]
    confirmed = reconcile_orders(client, conn, days=7, now=now + HOUR, confirm_mass_deletion_stores=[store])
    assert confirmed.deleted == 3 and not confirmed.failures and _live(conn, store) == []


def test_unusual_share_rule():
    assert not deletions.unusual_share(0, 0, 0)
    assert deletions.unusual_share(1, 1, 0)  # an empty listing never deletes
    assert not deletions.unusual_share(1, 3, 2) and not deletions.unusual_share(2, 3, 1)
    assert deletions.unusual_share(3, 3, 5)  # more than 2 of a small store
    assert not deletions.unusual_share(10, 100, 90) and deletions.unusual_share(11, 100, 89)
    assert deletions.listed_id(b'{"id":"58231907","x":1}') == 58231907
    assert deletions.listed_id(b'{"id":58231907,"number":"\xff"}') == 58231907
    assert deletions.listed_id(b'{"number":"A"}') is None and deletions.listed_id(b'{"id":"A-1"}') is None


def test_mass_deletion_refused_then_confirmed_with_run_config(small, migrated_db, monkeypatch):
    sb, tamper, client, conn, store = small
    monkeypatch.setenv("TAPTOUCH_RECONCILE_CONFIRM_S", "0")  # the asset reads the clock: no interval here
    for oid in _live(conn, store):
        sb.delete_order(oid)

    def run(config: dict | None = None):
        with sb.serve() as url:
            return dg.materialize(
                [order_deletions],
                raise_on_error=False,
                run_config=config,
                resources={
                    "taptouch": TaptouchResource(
                        client_id="sandbox-client", client_secret="sandbox-secret", base_url=url, requests_per_second=0
                    ),
                    "warehouse": PostgresResource(database_url=migrated_db),
                },
            )

    first = run()  # candidates only
    assert first.success and _candidates(conn) == {*_candidates(conn)} and len(_candidates(conn)) == 3
    assert first.asset_materializations_for_node("order_deletions")[0].metadata["newly_missing"].value == 3
    second = run()  # the second listing agrees: 3 of 3 is unusual, refused, the run fails naming the store
    assert not second.success and len(_live(conn, store)) == 3
    failure = [e for e in second.all_events if e.event_type_value == "STEP_FAILURE"][0]
    text = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
    assert f"store {store}" in text and "confirm_mass_deletion_stores" in text
    third = run({"ops": {"order_deletions": {"config": {"confirm_mass_deletion_stores": [store]}}}})
    assert third.success and _live(conn, store) == []
    md = third.asset_materializations_for_node("order_deletions")[0].metadata
    assert md["deleted"].value == 3


# ------------------------------------------------------------------------------ no API call under a lock


def test_a_429_during_the_listing_never_blocks_an_orders_merge(world, migrated_db):
    sb, tamper, client, conn = world
    store = sb.store_ids()[0]
    now = datetime.now(UTC)
    sb.delete_order(_recent(conn, store, now)[2])  # something missing: the old code listed again under the lock
    probes: list[bool] = []
    rejected = threading.local()

    def retry_after(sid, request, response):  # every listing's first answer is a 429 with Retry-After
        first = request.url.params.get("index") == "0"
        if first and not getattr(rejected, "done", False):
            rejected.done = True
            return httpx.Response(
                429,
                headers={"Retry-After": "2", "content-type": "application/json"},
                content=b'{"status":{"timestamp":1,"ack":429,"errors":{"code":"rate_limited"}},"data":null}',
            )
        rejected.done = False
        return response

    def stalled(seconds: float) -> None:  # while the client waits out Retry-After, another run merges
        with psycopg.connect(migrated_db, autocommit=True) as other:
            other.execute("set lock_timeout = '300ms'")
            try:
                with other.transaction():
                    other.execute("select pg_advisory_xact_lock(%s)", (_LOCK_ORDERS,))
                probes.append(True)
            except psycopg.errors.LockNotAvailable:
                probes.append(False)

    tamper.hook = retry_after
    slow = _client(tamper, sleep=stalled)
    for at in (now, now + HOUR):
        result = reconcile_orders(slow, conn, days=7, now=at)
        assert not result.failures
    assert probes and all(probes), probes
    assert len(_deleted(conn)) == 1


def test_a_bounded_listing_records_candidates_but_only_an_open_ended_one_confirms(world):
    sb, tamper, client, conn = world
    store = sb.store_ids()[0]
    now = datetime.now(UTC)
    recent = _recent(conn, store, now)
    moved = recent[0]
    day_from, day_to = now - timedelta(days=3), now - HOUR
    inside = set(_recent(conn, store, now)) - {moved}

    def judge(at, to):
        with conn.transaction(), conn.cursor() as cur:
            return deletions.judge_listing(
                cur, store, inside, listed_from=day_from, listed_to=to, started_at=day_to, now=at, confirm_s=3600
            )

    # an edit moved it past the window's end; the warehouse still holds the old version in the window
    first = judge(now, day_to)
    assert first.candidates == [moved]
    later = judge(now + 2 * HOUR, day_to)  # another bounded listing, two hours later: still not confirmed
    assert later.deleted == [] and later.waiting == [moved] and _deleted(conn) == set()
    # the open-ended listing (the reconciliation's) confirms a candidate it misses too
    assert judge(now + 2 * HOUR, None).deleted == [moved]


# ------------------------------------------------------------------- any complete listing counts


def test_a_complete_orders_listing_is_the_first_of_the_two(world):
    """A full reload (any complete listing of the orders asset) records what it misses as candidates;
    the reconciliation an hour later confirms them. A bounded listing never confirms by itself, and
    it speaks only for its own range (a candidate outside it stays)."""
    sb, tamper, client, conn = world
    store = sb.store_ids()[0]
    now = datetime.now(UTC)
    day = now - timedelta(days=2)
    gone = _recent(conn, store, now, days=1)[0]
    sb.delete_order(gone)
    outside = conn.execute(
        "select min(order_id) from taptouch.orders where store_id = %s and updated_at < %s",
        (store, day - timedelta(days=2)),
    ).fetchone()[0]  # still listed, but not in range
    conn.execute(
        "insert into taptouch.deletion_candidates (order_id, store_id, first_missing_at, last_missing_at)"
        " values (%s, %s, %s, %s)",
        (outside, store, now, now),
    )
    result = load_window(client, conn, "all", day, now + timedelta(days=2))
    assert not result.failures and not result.incomplete
    assert _candidates(conn) == {gone, outside} and _deleted(conn) == set()  # recorded, nothing deleted
    again = load_window(client, conn, "all", day, now + timedelta(days=2))
    assert not again.failures and _deleted(conn) == set()  # a second bounded listing still does not confirm
    reconciled = reconcile_orders(client, conn, days=7, now=now + HOUR + timedelta(minutes=1))
    assert not reconciled.failures and _deleted(conn) == {gone}
    assert _candidates(conn) == set()  # the reconciliation listed the other one: it exists


@pytest.mark.parametrize("skew", [-7200, 10 * 365 * 86400])
def test_the_hour_between_two_listings_is_timed_by_one_clock(world, skew):
    """The API's clock 2 hours behind, or 10 years ahead: a candidate recorded by a full reload still
    waits exactly TAPTOUCH_RECONCILE_CONFIRM_S on this machine's clock, neither confirmed a minute
    later nor never."""
    sb, tamper, client, conn = world
    store = sb.store_ids()[0]
    now = datetime.now(UTC)
    gone = _recent(conn, store, now, days=1)[0]
    sb.delete_order(gone)
    sb.faults.clock_skew = skew
    day = now - timedelta(days=2)
    assert not load_window(client, conn, "all", day, now + timedelta(days=2)).failures
    # a clock 2 h behind is believed (and its listing judged); one 10 years ahead is not, so that
    # listing proves nothing (no candidate) and the reconciliations below start the wait
    assert _candidates(conn) == ({gone} if skew < 0 else set())
    sb.faults.clock_skew = 0
    soon = reconcile_orders(client, conn, days=7, now=now + timedelta(minutes=1), confirm_s=3600)
    assert not soon.failures and _deleted(conn) == set()
    later = reconcile_orders(client, conn, days=7, now=now + 2 * HOUR + timedelta(minutes=2), confirm_s=3600)
    assert not later.failures and _deleted(conn) == {gone}
