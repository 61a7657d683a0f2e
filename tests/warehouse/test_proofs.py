"""Proven completeness per store and orders window (taptouch.listing_proofs, pipelines/warehouse/proofs.py),
against the sandbox's own records: each store's proven set of (order_id, version) is the set the
sandbox serves for the window; a store whose listing fails for one window is not proven there (even
with no order in it), the check names the store, the window and the partition to re-run, and passes
after the re-run; sets are compared, not counts."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import psycopg
import pytest

from pipelines.sync import day_window
from pipelines.warehouse import proofs
from pipelines.warehouse.db import libpq_url
from pipelines.warehouse.loader import load_stores
from pipelines.warehouse.records import exact_instant
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.windows import load_window

pytestmark = pytest.mark.postgres

END = date(2026, 11, 20)
DAYS = [END - timedelta(days=n) for n in (2, 1, 0)]
EMPTY = 7103


class FailingListings:
    """A client whose orders listing fails for chosen (store, window start) pairs; else the real one."""

    def __init__(self, client: TaptouchClient, failing: set[tuple[int, datetime]] | None = None):
        self._client = client
        self.failing = failing if failing is not None else set()

    def __getattr__(self, name):
        return getattr(self._client, name)

    def iter_order_record_pages(self, store_id, *, updated_from, updated_to, **kw):
        for sid, start in self.failing:
            if sid == store_id and updated_from <= start < updated_to:
                raise RuntimeError(f"listing of store {store_id} failed on purpose")
        return self._client.iter_order_record_pages(store_id, updated_from=updated_from, updated_to=updated_to, **kw)


def make_sandbox() -> Sandbox:
    return Sandbox(SandboxConfig(seed=11, stores=3, days=3, orders_per_day=15, end_date=END, empty_store_ids=(EMPTY,)))


def client_for(sb: Sandbox) -> TaptouchClient:
    return TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        page_size=7,
        requests_per_second=None,
    )


def load_day(client, conn, day: date, *, lookback: timedelta | None = None):
    start, end = day_window(day)
    return load_window(client, conn, day.isoformat(), start, end, lookback=lookback, store_workers=2)


def truth_set(sb: Sandbox, store_id: int, day: date) -> set[tuple[int, object]]:
    start, end = day_window(day)
    return {(o["id"], exact_instant(o["updated_at"])) for o in sb.orders_in_window(store_id, start, end)}


def proven_set(conn, store_id: int, day: date) -> set[tuple[int, object]] | None:
    row = conn.execute(
        'select proof_id, complete from taptouch.listing_proofs where store_id = %s and "window" = %s',
        (store_id, day.isoformat()),
    ).fetchone()
    if row is None or not row[1]:
        return None
    return set(
        conn.execute(
            "select order_id, updated_at_exact from taptouch.listing_proof_orders where proof_id = %s", (row[0],)
        ).fetchall()
    )


@pytest.fixture
def conn(migrated_db):
    with psycopg.connect(libpq_url(migrated_db), autocommit=True) as c:
        yield c


def test_each_store_window_is_proven_with_the_sandbox_set_and_a_failed_listing_is_not(conn):
    sb = make_sandbox()
    load_stores(conn, sb.stores())
    stores = sb.store_ids()
    failing_day = DAYS[1]
    client = FailingListings(client_for(sb), {(EMPTY, day_window(failing_day)[0])})
    for day in DAYS:
        result = load_day(client, conn, day)
        assert [f.store_id for f in result.failures] == ([EMPTY] if day == failing_day else [])

    for sid in stores:
        for day in DAYS:
            got = proven_set(conn, sid, day)
            if sid == EMPTY and day == failing_day:
                assert got is None  # the failed listing proved nothing, although the store has no orders
            else:
                assert got == truth_set(sb, sid, day), (sid, day)
    assert truth_set(sb, EMPTY, DAYS[0]) == set() and proven_set(conn, EMPTY, DAYS[0]) == set()  # zero orders, proven
    listed, first, last, n = conn.execute(
        "select listed_orders, first_updated_at, last_updated_at, proven_orders from taptouch.listing_proofs"
        ' where store_id = %s and "window" = %s',
        (stores[0], DAYS[0].isoformat()),
    ).fetchone()
    versions = sorted(v for _, v in truth_set(sb, stores[0], DAYS[0]))
    assert listed == n == len(versions) > 0
    assert abs(first.timestamp() - float(versions[0])) < 1e-5 and abs(last.timestamp() - float(versions[-1])) < 1e-5

    problems = proofs.window_problems(conn, [d.isoformat() for d in DAYS], stores)
    assert [(p.store_id, p.window, p.kind) for p in problems] == [(EMPTY, failing_day.isoformat(), "unproven")]
    assert "failed on purpose" in problems[0].detail
    hint = proofs.repair_hint(problems)
    assert f"--select orders --partition {failing_day.isoformat()}" in hint

    client.failing.clear()
    load_day(client, conn, failing_day)  # the repair: the partition re-run
    assert proven_set(conn, EMPTY, failing_day) == set()
    assert proofs.window_problems(conn, [d.isoformat() for d in DAYS], stores) == []


def test_sets_are_compared_not_counts(conn):
    """Same count, other order: the check names both the listed version the warehouse lacks and the
    version it holds that the listing did not return."""
    sb = make_sandbox()
    load_stores(conn, sb.stores())
    client = client_for(sb)
    day = DAYS[0]
    load_day(client, conn, day)
    store = sb.store_ids()[0]
    keys = [day.isoformat()]
    assert proofs.window_problems(conn, keys, sb.store_ids()) == []
    victim, *_ = sorted(truth_set(sb, store, day))
    # swap one order of the window for a copy under a new id: the count stays the same
    for child in ("order_items", "order_payments", "order_refunds"):
        conn.execute(f"delete from taptouch.{child} where order_id = %s", (victim[0],))
    conn.execute("update taptouch.orders set order_id = 990000001 where order_id = %s", (victim[0],))
    count = conn.execute(
        "select count(*) from taptouch.orders where store_id = %s and updated_at >= %s and updated_at < %s",
        (store, *day_window(day)),
    ).fetchone()[0]
    assert count == len(truth_set(sb, store, day))
    problems = proofs.window_problems(conn, keys, sb.store_ids())
    assert sorted(p.kind for p in problems) == ["extra", "missing"]
    assert all(p.store_id == store and p.window == day.isoformat() for p in problems)
    missing = next(p for p in problems if p.kind == "missing")
    assert f"{victim[0]} v{victim[1]} (not held)" in missing.detail
    assert "990000001" in next(p for p in problems if p.kind == "extra").detail
    conn.execute("delete from taptouch.orders where order_id = 990000001")
    load_day(client, conn, day)  # the re-run loads the missing order again
    assert proofs.window_problems(conn, keys, sb.store_ids()) == []
    # an older version held (as if an edit were never loaded): missing, named with the version held
    conn.execute(
        "update taptouch.orders set updated_at_exact = updated_at_exact - 1, raw_hash = null where order_id = %s",
        (victim[0],),
    )
    problems = proofs.window_problems(conn, keys, sb.store_ids())
    assert sorted(p.kind for p in problems) == ["extra", "missing"]  # both sides of the one order
    assert f"held at v{victim[1] - 1}" in next(p for p in problems if p.kind == "missing").detail
    assert (
        f"{victim[0]} v{victim[1] - 1} (listed v{victim[1]})" in next(p for p in problems if p.kind == "extra").detail
    )
    load_day(client, conn, day)  # the re-run repairs it
    assert proofs.window_problems(conn, keys, sb.store_ids()) == []


def test_an_incremental_listing_keeps_the_window_proven_and_follows_edits(conn):
    sb = make_sandbox()
    load_stores(conn, sb.stores())
    client = client_for(sb)
    day = DAYS[1]
    load_day(client, conn, day)
    store = sb.store_ids()[0]
    orders = sorted(truth_set(sb, store, day), key=lambda x: x[1])
    # edit the latest order of the window, still inside it; and move an early one out to the next day
    late = orders[-1][0]
    edited = sb.edit_order(
        late,
        updated_at=(
            datetime.fromtimestamp(float(orders[-1][1]), tz=day_window(day)[0].tzinfo) + timedelta(seconds=1)
        ).isoformat(),
    )
    assert day_window(day)[0] <= datetime.fromisoformat(edited["updated_at"]) < day_window(day)[1]
    load_day(client, conn, day, lookback=timedelta(minutes=5))  # from the mark: the edit only
    from_, complete, covered = conn.execute(
        'select listed_from, complete, covered_from from taptouch.listing_proofs where store_id = %s and "window" = %s',
        (store, day.isoformat()),
    ).fetchone()
    assert from_ > day_window(day)[0] and complete and covered == day_window(day)[0]
    assert proven_set(conn, store, day) == truth_set(sb, store, day)
    assert proofs.window_problems(conn, [day.isoformat()], sb.store_ids()) == []


def test_an_order_whose_new_version_is_quarantined_is_left_to_the_quarantine_warning(conn):
    """An edit served malformed is quarantined: the warehouse keeps the version before, which the
    listing no longer returns valid. That is the quarantine check's warning, not a disagreement."""
    sb = make_sandbox()
    load_stores(conn, sb.stores())
    client = client_for(sb)
    day = DAYS[0]
    load_day(client, conn, day)
    sb.faults.malformed_every = 3
    store = sb.store_ids()[0]
    start, end = day_window(day)
    broken = sorted(o["id"] for o in sb.orders_in_window(store, start, end) if o["id"] in sb.malformed_order_ids())
    assert broken
    result = load_day(client, conn, day)
    assert result.counts.quarantined >= len(broken)
    assert not {oid for oid, _ in proven_set(conn, store, day)} & set(broken)  # not proven: never read valid
    assert proofs.window_problems(conn, [day.isoformat()], sb.store_ids()) == []
    conn.execute("update taptouch.quarantine set resolved_at = now()")  # as if resolved: then it is one
    problems = proofs.window_problems(conn, [day.isoformat()], sb.store_ids())
    assert {p.kind for p in problems if p.store_id == store} == {"extra"}
    assert all(str(oid) in next(p for p in problems if p.store_id == store).detail for oid in broken[:10])


def test_a_listing_proves_a_day_only_for_what_had_settled_when_it_started(conn):
    """The API is eventually consistent: a record may reach its listings up to the lookback after its
    updated_at. A listing that started within the lookback of the day's end may have missed the
    day's last records, so it does not prove the day; one that started later does."""
    from pipelines.settings import DEFAULT_LOOKBACK
    from pipelines.warehouse.views import apply_views

    sb = make_sandbox()
    load_stores(conn, sb.stores())
    for day in DAYS:
        load_day(client_for(sb), conn, day)
    apply_views(conn)
    drift = conn.execute(
        "select count(*) from taptouch.listing_proofs"
        " where complete and settled_at <> least(listed_at, api_started_at) - %s",
        (DEFAULT_LOOKBACK,),
    ).fetchone()[0]
    assert drift == 0  # each proof settles the run's lookback (5 minutes) before its listing started
    store = next(s for s in sb.store_ids() if s != EMPTY)
    day = DAYS[1]
    complete, ends_at, windows = conn.execute(
        "select day_complete, day_ends_at, windows from analytics.load_coverage where store_id = %s"
        " and business_date = %s",
        (store, day),
    ).fetchone()
    assert complete  # listed days after it ended

    def listed(after_end: timedelta) -> bool:
        conn.execute(
            "update taptouch.listing_proofs set listed_at = %s, settled_at = %s"
            ' where store_id = %s and "window" = any(%s)',
            (ends_at + after_end, ends_at + after_end - DEFAULT_LOOKBACK, store, windows),
        )
        return conn.execute(
            "select day_complete from analytics.load_coverage where store_id = %s and business_date = %s",
            (store, day),
        ).fetchone()[0]

    assert listed(timedelta(minutes=1)) is False  # started 1 minute after the day ended: not settled
    assert listed(DEFAULT_LOOKBACK - timedelta(seconds=1)) is False
    assert listed(DEFAULT_LOOKBACK) is True
    assert listed(timedelta(hours=2)) is True


def _prove_again(conn, store: int, day: date, ids: list[tuple[int, object]], *, api_started_at, listed_at) -> int:
    """A listing of the store's window, started at ``api_started_at``, returning ``ids``, committed now."""
    start, end = day_window(day)
    with conn.transaction(), conn.cursor() as cur:
        proofs.create_source(cur)
        cur.executemany(f"insert into {proofs.SOURCE} values (%s, %s, %s)", [(store, o, v) for o, v in ids])
        return proofs.prove(
            cur, day.isoformat(), {store: (start, end, api_started_at)}, listed_at=listed_at, run_id="x"
        )


def _proof(conn, store: int, day: date) -> tuple:
    return conn.execute(
        "select listed_at, api_started_at, settled_at, proved_by from taptouch.listing_proofs"
        ' where store_id = %s and "window" = %s',
        (store, day.isoformat()),
    ).fetchone()


def test_a_listing_older_than_the_proof_committed_after_it_leaves_the_proof_alone(conn):
    """Two runs of one window overlap (a backfill listed first, an hourly run listed later and
    committed first): the backfill's older listing must not replace the newer proof's set (the next
    check would name orders it never missed) nor move its start back."""
    sb = make_sandbox()
    load_stores(conn, sb.stores())
    day = DAYS[1]
    load_day(client_for(sb), conn, day)
    store = next(s for s in sb.store_ids() if s != EMPTY)
    truth = truth_set(sb, store, day)
    newer = _proof(conn, store, day)
    older_listing = sorted(truth)[1:]  # the backfill's listing, one order short (not yet visible to it)
    hour = timedelta(hours=1)
    written = _prove_again(conn, store, day, older_listing, api_started_at=newer[1] - hour, listed_at=newer[0] - hour)
    assert written == 0
    assert _proof(conn, store, day) == newer
    assert proven_set(conn, store, day) == truth
    # a listing that started later does replace it
    later = newer[1] + timedelta(seconds=1)
    assert _prove_again(conn, store, day, older_listing, api_started_at=later, listed_at=newer[0] + hour) == 1
    assert _proof(conn, store, day)[1] == later and proven_set(conn, store, day) == set(older_listing)
    # a proof's start ahead of the database's clock (a clock since corrected) is no reason to refuse
    conn.execute(
        "update taptouch.listing_proofs set api_started_at = now() + interval '1 day' where store_id = %s"
        ' and "window" = %s',
        (store, day.isoformat()),
    )
    assert _prove_again(conn, store, day, sorted(truth), api_started_at=later, listed_at=newer[0] + hour) == 1
    assert proven_set(conn, store, day) == truth


def test_a_proof_settles_by_the_api_clock_when_this_machine_runs_ahead(conn):
    """This machine's clock 15 minutes ahead of the API's: a listing that started at 15:50 on the API's
    clock holds only for what was updated before 15:45 (the lookback), never 16:00 - 5 minutes: a
    business day ending at 16:00 UTC is not settled by it."""
    from pipelines.settings import DEFAULT_LOOKBACK

    sb = make_sandbox()
    load_stores(conn, sb.stores())
    day = DAYS[1]
    store = next(s for s in sb.store_ids() if s != EMPTY)
    start, _ = day_window(day)
    api_start = start + timedelta(hours=15, minutes=50)
    _prove_again(
        conn,
        store,
        day,
        sorted(truth_set(sb, store, day)),
        api_started_at=api_start,
        listed_at=api_start + timedelta(minutes=15),
    )
    listed_at, api_started_at, settled_at, _ = _proof(conn, store, day)
    assert (listed_at - api_started_at) == timedelta(minutes=15)
    assert settled_at == api_start - DEFAULT_LOOKBACK


def test_an_order_a_listing_read_unchanged_is_proven_at_the_version_it_read(conn, migrated_db):
    """An order recognised as unchanged (the warehouse held those bytes) is proven at the version the
    listing read, not at what the warehouse holds at the commit: another run may merge a newer
    version meanwhile, which this listing never saw."""
    sb = make_sandbox()
    load_stores(conn, sb.stores())
    client = client_for(sb)
    day = DAYS[1]
    load_day(client, conn, day)
    store = next(s for s in sb.store_ids() if s != EMPTY)
    oid, version = sorted(truth_set(sb, store, day))[0]

    def another_run_merges_a_newer_version() -> None:
        with psycopg.connect(libpq_url(migrated_db), autocommit=True) as other:
            other.execute(
                "update taptouch.orders set updated_at = updated_at + interval '1 hour',"
                " updated_at_exact = updated_at_exact + 3600 where order_id = %s",
                (oid,),
            )

    start, end = day_window(day)
    again = load_window(client, conn, day.isoformat(), start, end, before_merge=another_run_merges_a_newer_version)
    assert again.counts.unchanged > 0 and again.counts.updated == 0
    assert (oid, version) in proven_set(conn, store, day)


def test_a_reconciliation_that_reads_an_order_malformed_leaves_it_to_the_quarantine_warning(conn):
    """The reconciliation re-proves each whole day it listed, from every version it read, and its
    repair of a malformed one is quarantined: the warehouse keeps the version before (or none). As
    for an orders load, that is the quarantine check's warning, not a ``missing`` disagreement."""
    from pipelines.reconcile import reconcile_orders

    sb = make_sandbox()
    load_stores(conn, sb.stores())
    client = client_for(sb)
    for day in DAYS:
        load_day(client, conn, day)
    sb.faults.malformed_every = 3
    store = sb.store_ids()[0]
    day = DAYS[0]
    start, end = day_window(day)
    broken = sorted(o["id"] for o in sb.orders_in_window(store, start, end) if o["id"] in sb.malformed_order_ids())
    assert broken
    for oid in broken:  # a new version of each, served malformed: the reconciliation's repair
        sb.edit_order(oid, status="refunded", updated_at=end - timedelta(seconds=1))
    result = reconcile_orders(client, conn, days=7, now=end + timedelta(days=2))
    assert sum(s.quarantined for s in result.stores) >= len(broken)
    assert proofs.window_problems(conn, [day.isoformat()], sb.store_ids()) == []  # no missing, no extra
    # another day's quarantine row of the order says nothing of this day's proof: a version the
    # warehouse holds deleted while the source lists it is still named
    oid = broken[0]
    conn.execute("update taptouch.quarantine set \"window\" = 'elsewhere' where record_key = %s", (str(oid),))
    conn.execute("update taptouch.orders set deleted_at = now() where order_id = %s", (oid,))
    problems = proofs.window_problems(conn, [day.isoformat()], sb.store_ids())
    assert [(p.store_id, p.kind) for p in problems] == [(store, "missing")] and f"{oid} v" in problems[0].detail
