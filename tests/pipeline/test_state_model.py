"""Model-based test of sync state: random histories of a merchant and a careless
server, driven through the real sync code, with invariants after every step and an exact
comparison at the end.

A hypothesis ``RuleBasedStateMachine`` (:class:`StateModel`) drives a small sandbox on a fake clock
(tests/support/state_model.py) with:

- the source: orders born as the clock passes them, new orders, edits, future-dated edits,
  deletions and re-listings, and edits or deletions *while a listing runs*;
- the server: empty and partial 200 answers, unsorted pages, listings sorted by id, a skewed API
  clock, 429 and 5xx bursts;
- the runs: the hourly incremental run (``sync_orders_window`` with the lookback), a full reload
  (every day, no lookback), the same reload as one ranged run (``sync_orders_windows``: two windows
  fetching and staging at once, each on its own connection, the merges in window order; whole, run
  termination raised in the calling thread after some page, or one window failing while others
  load), the reconciliation (``reconcile_orders`` with ``now`` = the fake
  clock), and runs killed part way (terminated while fetching, killed just before the merge,
  killed while the reconciliation lists), and two runs of one window overlapping (one fetches and
  stages, another runs whole and commits, then the first merges: a backfill and the hourly run);
  each history COPYs in batches of 3, 7 or 5,000 orders
  (``World.batch_size``), so its windows also COPY one batch while the next pages are decoded and
  look up the versions held on the load's second connection.

After every step: nothing moves backwards; no order a listing returned to a successful run is
marked deleted; no high-water mark passes its listing's start; a window proven complete stays so;
a proof holds every order the source served over what it covers; the check ``orders_proven``
finds no disagreement over an order the source never deleted. After the last step: faults off, a
full reload and two reconciliations TAPTOUCH_RECONCILE_CONFIRM_S apart, then the warehouse equals
the sandbox (ids, versions, raw, child rows, deletions, ``analytics.daily_store_sales``).

Short mode (CI): a few derandomized histories. Long mode: ``TAPTOUCH_MODEL_LONG=1`` (histories:
``TAPTOUCH_MODEL_EXAMPLES``, default 200; steps per history: ``TAPTOUCH_MODEL_STEPS``, default 60)
prints every history, its steps and faults, and the totals (docs/reliability.md).
"""

from __future__ import annotations

import math
import os
import signal
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pipelines.warehouse.views import apply_views
from taptouch_sandbox import Faults, OrdersPage, Sandbox, SandboxConfig
from tests.support.state_model import STORES, Tally, World

LONG = os.environ.get("TAPTOUCH_MODEL_LONG", "").strip() not in ("", "0")
EXAMPLES = int(os.environ.get("TAPTOUCH_MODEL_EXAMPLES", "200" if LONG else "25"))
STEPS = int(os.environ.get("TAPTOUCH_MODEL_STEPS", "60" if LONG else "25"))

pick = st.integers(0, 10**6)


class StateModel(RuleBasedStateMachine):
    """One history. ``db_url`` is set by the test (one database per test; emptied per history)."""

    db_url = ""
    tallies: list[Tally] = []

    def __init__(self) -> None:
        super().__init__()
        self.world: World | None = None
        self.history: list[str] = []

    def step(self, text: str) -> None:
        self.history.append(text)
        note(text)
        if LONG:
            print(f"  {len(self.history):3d}. {text}", flush=True)

    def choose(self, ids: list[int], n: int) -> int | None:
        return ids[n % len(ids)] if ids else None

    # ---------------------------------------------------------------- start and end
    @initialize(seed=st.integers(1, 40))
    def start(self, seed: int) -> None:
        self.world = World(self.db_url, seed)
        w = self.world
        if LONG:
            print(
                f"history {len(self.tallies) + 1} (sandbox seed {seed}, {len(w.live)} orders live, "
                f"{len(w.unborn)} to be born)",
                flush=True,
            )

    def teardown(self) -> None:
        w = self.world
        if w is None:
            return
        try:
            problems = w.final_check()
            self.tallies.append(w.tally)
            t = w.tally
            summary = (
                f"{t.steps} steps, runs {t.runs}, faults {t.faults}, pages faulted {t.pages_faulted}, "
                f"{t.kills} kills, {t.edits} edits ({t.edits_during_listing} during a listing), "
                f"{t.deletions} deletions, {t.restores} re-listings, {t.births} births, {t.overlaps} overlaps; "
                f"lost {t.lost}, wrong {t.wrong}"
            )
            note(summary)
            if LONG:
                print("  => " + summary, flush=True)
            assert not problems, "after the final full reload and reconciliations:\n" + "\n".join(problems[:20])
        finally:
            w.close()

    @invariant()
    def state_holds(self) -> None:
        if self.world is not None:
            self.world.check_invariants()

    # ---------------------------------------------------------------- the source
    @rule(seconds=st.sampled_from([60, 300, 1200, 3600, 3 * 3600, 8 * 3600]))
    def advance_clock(self, seconds: int) -> None:
        w = self.world
        w.begin_step()
        w.advance(seconds)
        self.step(f"clock +{seconds}s -> {datetime.fromtimestamp(w.now, UTC):%d %H:%M:%S}")

    @rule(store=st.integers(0, STORES - 1))
    def new_order(self, store: int) -> None:
        w = self.world
        w.begin_step()
        oid = w.new_order(w.store_ids[store])
        self.step(f"new order {oid} at store {w.store_ids[store]}")

    @rule(n=pick, variant=st.integers(0, 5))
    def edit(self, n: int, variant: int) -> None:
        w = self.world
        w.begin_step()
        oid = self.choose(w.live, n)
        if oid is not None:
            self.step(f"edit {oid}: {w.edit(oid, variant)}")

    @rule(n=pick, hours=st.integers(1, 30))
    def future_dated_edit(self, n: int, hours: int) -> None:
        w = self.world
        w.begin_step()
        oid = self.choose(w.live, n)
        if oid is not None:
            w.tally.add(w.tally.faults, "future-dated")
            self.step(f"future-dated edit {oid}: {w.edit(oid, 5, at=w.now + hours * 3600)}")

    @rule(n=pick)
    def delete(self, n: int) -> None:
        w = self.world
        w.begin_step()
        oid = self.choose([o for o in w.live if w.can_delete(o)], n)
        if oid is not None:
            w.delete(oid)
            self.step(f"delete {oid}")

    @precondition(lambda self: self.world is not None and self.world.deleted)
    @rule(n=pick)
    def relist(self, n: int) -> None:
        w = self.world
        w.begin_step()
        oid = self.choose(sorted(w.deleted), n)
        w.restore(oid)
        self.step(f"re-list {oid}")

    @rule(edits=st.integers(1, 2), deletes=st.integers(0, 1))
    def change_during_next_listing(self, edits: int, deletes: int) -> None:
        w = self.world
        w.begin_step()
        w.listing_edits, w.listing_deletes = edits, deletes
        self.step(f"arm {edits} edit(s) and {deletes} deletion(s) during the next listing pages")

    # ---------------------------------------------------------------- the server
    @rule(
        kind=st.sampled_from(
            ["empty", "partial", "unsorted", "by id", "skew", "rate_limit", "server_error", "forbidden"]
        ),
        every=st.integers(2, 5),
        skew=st.integers(-900, 4 * 3600),  # ahead by more than the lookback too
    )
    def fault_on(self, kind: str, every: int, skew: int) -> None:
        w = self.world
        w.begin_step()
        f = w.sb.faults
        if kind == "empty":
            f.empty_orders_every = every
        elif kind == "partial":
            f.partial_orders_every = every
        elif kind == "unsorted":
            f.unsorted_pages = True
        elif kind == "by id":
            f.sorted_by_id = True
        elif kind == "skew":
            f.clock_skew = skew
        elif kind == "forbidden":
            f.forbidden_stores = {w.store_ids[every % len(w.store_ids)]}
        elif kind == "rate_limit":
            f.rate_limit_every, f.rate_limit_burst, f.retry_after = every, 2, "1"
        else:
            f.server_error_every, f.server_error_burst = every, 1
        w.tally.add(w.tally.faults, kind)
        self.step(
            f"fault on: {kind}"
            + (f" skew {skew}s" if kind == "skew" else "" if kind in ("unsorted", "by id") else f" every {every}")
        )

    @rule()
    def faults_off(self) -> None:
        w = self.world
        w.begin_step()
        w.sb.faults.reset()
        self.step("faults off")

    # ---------------------------------------------------------------- the runs
    @rule()
    def hourly_run(self) -> None:
        w = self.world
        w.begin_step()
        self.step("hourly run: " + w.sync(full=False))

    @rule()
    def full_reload(self) -> None:
        w = self.world
        w.begin_step()
        self.step("full reload: " + w.sync(full=True))

    @rule()
    def reconcile(self) -> None:
        w = self.world
        w.begin_step()
        self.step("reconcile: " + w.reconcile())

    @rule(kill=st.sampled_from([None, "interrupt", "window"]), after=st.integers(1, 16))
    def ranged_reload(self, kill: str | None, after: int) -> None:
        w = self.world
        w.begin_step()
        self.step(f"ranged reload{'' if kill is None else ' (' + kill + ')'}: " + w.ranged(kill=kill, after=after))

    @rule(
        outer=st.sampled_from(["hourly", "full"]),
        inner=st.sampled_from(["hourly", "full", "reconcile"]),
        at=st.integers(0, 8),
    )
    def overlapping_runs(self, outer: str, inner: str, at: int) -> None:
        w = self.world
        w.begin_step()
        self.step(f"{outer} run, overlapped by a {inner} run: " + w.overlapped(outer, inner, -1 - at))

    @rule(kind=st.sampled_from(["hourly-cancel", "hourly-merge", "full-merge", "reconcile"]))
    def killed_run(self, kind: str) -> None:
        w = self.world
        w.begin_step()
        if kind == "reconcile":
            self.step("killed reconcile: " + w.reconcile(kill=True))
        else:
            run, how = kind.split("-")
            self.step(f"killed {run} run ({how}): " + w.sync(full=run == "full", kill=how))


@pytest.mark.slow
def test_random_histories_keep_sync_state_true(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
    StateModel.db_url = migrated_db
    StateModel.tallies = []
    previous = signal.getsignal(signal.SIGUSR1)  # the ranged runs' interrupt handler is the model's meanwhile
    try:
        run_state_machine_as_test(
            StateModel,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=STEPS,
                deadline=None,
                derandomize=not LONG,
                database=None,
                print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
            ),
        )
    finally:
        signal.signal(signal.SIGUSR1, signal.SIG_DFL if previous is None else previous)
    tallies = StateModel.tallies
    if LONG:
        faults: dict[str, int] = {}
        pages: dict[str, int] = {}
        for t in tallies:
            for k, v in t.faults.items():
                faults[k] = faults.get(k, 0) + v
            for k, v in t.pages_faulted.items():
                pages[k] = pages.get(k, 0) + v
        print(
            f"\n{len(tallies)} histories, {sum(t.steps for t in tallies)} steps, "
            f"{sum(sum(t.runs.values()) for t in tallies)} runs, {sum(t.kills for t in tallies)} kills, "
            f"faults switched on {faults}, pages faulted {pages}, "
            f"{sum(t.edits for t in tallies)} edits ({sum(t.edits_during_listing for t in tallies)} during a "
            f"listing), {sum(t.deletions for t in tallies)} deletions, {sum(t.restores for t in tallies)} "
            f"re-listings, {sum(t.overlaps for t in tallies)} overlapping runs; lost {sum(t.lost for t in tallies)}, wrong {sum(t.wrong for t in tallies)}"
        )
    assert tallies and all(t.lost == 0 and t.wrong == 0 for t in tallies)


def _replay(migrated_db: str, monkeypatch) -> StateModel:
    """A model whose steps a test calls itself (a history the model found, replayed as written)."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
    StateModel.db_url = migrated_db
    StateModel.tallies = []
    monkeypatch.setattr(f"{__name__}.note", lambda text: None)  # hypothesis' notes need a hypothesis test
    return StateModel()


@pytest.mark.slow
def test_a_history_the_model_found_on_a_server_sorted_by_id(migrated_db, monkeypatch):
    """The model's shrunk history (2026-12-05, 260th history of a long run on the code before the
    listings checked the range a keyset cursor jumps over): a server sorted by id, deletions and a
    future-dated edit, then two full reloads overlapping. A page that looked in order ended at an
    order stamped later than the next pages' orders; the cursor jumped, the reload's mark passed 3
    orders the warehouse lacked, and the proof of that day said complete."""
    state = _replay(migrated_db, monkeypatch)
    try:
        state.start(seed=4)
        state.overlapping_runs(at=0, inner="hourly", outer="hourly")
        state.faults_off()
        state.overlapping_runs(at=0, inner="hourly", outer="hourly")
        state.delete(n=13666)
        state.fault_on(every=4, kind="empty", skew=13501)
        state.faults_off()
        state.fault_on(every=3, kind="by id", skew=2061)
        state.delete(n=5975)
        state.delete(n=18691)
        state.future_dated_edit(hours=25, n=673)
        state.delete(n=76)
        state.overlapping_runs(at=0, inner="full", outer="full")
        state.state_holds()
    finally:
        state.teardown()
    assert StateModel.tallies[-1].lost == 0 and StateModel.tallies[-1].wrong == 0


@pytest.mark.slow
def test_a_history_the_model_found_an_order_moved_to_a_later_day(migrated_db, monkeypatch):
    """The model's history (2026-12-05): a full reload, then a future-dated edit moves order
    17399400010 out of today's UTC day into tomorrow's, then the hourly run lists its store's part
    of today and finds nothing there. That complete listing proved the window without the order,
    but a store whose listing returned no record was never judged, so the order was no deletion
    candidate either: ``orders_proven`` reported it as ``extra`` on every run until tomorrow's
    window loaded it. It is now a candidate (the reconciliation, which lists open-ended, finds the
    edit and loads it)."""
    state = _replay(migrated_db, monkeypatch)
    try:
        state.start(seed=1)
        state.delete(n=0)  # 17399390000
        state.full_reload()
        state.future_dated_edit(n=19, hours=18)  # 17399400010, to 00:00:00 tomorrow
        state.hourly_run()
        state.state_holds()
    finally:
        state.teardown()
    assert StateModel.tallies[-1].lost == 0 and StateModel.tallies[-1].wrong == 0


# ------------------------------------------------------------------------------------------------
# the sandbox's knobs the model relies on


def _sandbox(**faults) -> tuple[Sandbox, httpx.Client, list[OrdersPage]]:
    now = [datetime(2026, 11, 29, tzinfo=UTC).timestamp()]  # after every record
    sb = Sandbox(
        SandboxConfig(seed=3, stores=1, days=2, end_date=datetime(2026, 11, 27).date(), orders_per_day=30),
        faults=Faults(**faults),
        clock=lambda: now[0],
    )
    sb.now = now
    seen: list[OrdersPage] = []
    sb.on_page = seen.append
    http = httpx.Client(
        base_url="https://api.taptouch.net",
        transport=sb.transport(),
        headers={"Authorization": f"Bearer {sb.issue_token()}"},
    )
    return sb, http, seen


def _page(http: httpx.Client, store: int, index: int, count: int = 10) -> dict:
    r = http.get(f"/integration/v1/stores/{store}/orders", params={"index": index, "count": count})
    assert r.status_code == 200
    return r.json()


def _ids(body: dict) -> list[int]:
    return [o["id"] for o in body["data"]]


def test_empty_and_partial_answers_every_n_orders_requests():
    sb, http, seen = _sandbox(empty_orders_every=3, partial_orders_every=2)
    store = sb.store_ids()[0]
    want = [o["id"] for o in sb.orders_in_window(store, None, None)][:10]
    assert _ids(_page(http, store, 0)) == want
    assert _ids(_page(http, store, 0)) == want[:5]  # 2nd: partial (half the page)
    assert _ids(_page(http, store, 0)) == []  # 3rd: empty 200 answer
    assert [p.fault for p in seen] == [None, "partial", "empty"]
    assert [p.ids for p in seen] == [tuple(want), tuple(want[:5]), ()]
    sb.faults.reset()
    assert _ids(_page(http, store, 0)) == want


def test_unsorted_pages_hold_the_same_records_in_another_order():
    sb, http, seen = _sandbox(unsorted_pages=True)
    store = sb.store_ids()[0]
    want = [o["id"] for o in sb.orders_in_window(store, None, None)][:10]
    got = _ids(_page(http, store, 0))
    assert got != want and sorted(got) == sorted(want)
    assert seen[0].fault == "unsorted" and list(seen[0].ids) == got


def test_clock_skew_moves_the_api_clock_only():
    sb, http, seen = _sandbox(clock_skew=-600)
    body = _page(http, sb.store_ids()[0], 0)
    assert body["status"]["timestamp"] == math.floor(sb.now[0]) - 600 == seen[0].timestamp
    assert sb.token_is_valid(http.headers["Authorization"].split()[1])  # tokens keep the record clock


def test_an_edit_during_a_listing_read_by_page_number_skips_the_boundary_record():
    sb, http, seen = _sandbox(edits_during_listing=1)
    store = sb.store_ids()[0]
    before = [o["id"] for o in sb.orders_in_window(store, None, None)]
    read: list[int] = []
    index = 0
    while True:
        ids = _ids(_page(http, store, index))
        read += ids
        if len(ids) < 10:
            break
        index += 1
    edited = seen[0].ids[0]
    assert sb.faults.edits_during_listing == 0
    assert (
        sb.order(edited)["updated_at"]
        == datetime.fromtimestamp(sb.now[0], UTC)
        .astimezone(datetime.fromisoformat(sb.order(edited)["created_at"]).tzinfo)
        .isoformat()
    )
    missed = set(before) - set(read)
    assert missed == {before[10]}  # the first record of page 1 moved onto page 0, already read
    assert read.count(edited) == 2  # read on page 0, and again at the end in its new version


def test_on_page_runs_after_serving_and_may_change_the_source():
    sb, http, seen = _sandbox()
    store = sb.store_ids()[0]
    first = _ids(_page(http, store, 0))
    sb.on_page = lambda page: sb.delete_order(page.ids[-1])
    again = _ids(_page(http, store, 0))
    assert again == first  # served before the deletion
    assert first[-1] not in _ids(_page(http, store, 0, 20))
