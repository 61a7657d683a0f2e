"""Order history (taptouch.order_history), analytics.order_changes and analytics.daily_restatements
against truth computed in Python from the sandbox's own records, across edits, refunds, voids and
deletions; the retention (TAPTOUCH_HISTORY_DAYS).

Data goes through the production path (sandbox API in-process -> TaptouchClient ->
sync_orders_window -> loader -> PostgreSQL; deletions through reconcile_orders). The clock of the
loads is simulated: after run k the test stamps the versions that run first saw (and the orders it
marked deleted) with the instant T_k, so "as of the end of the next business day" is exercised on
days that lie in the past.
"""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipelines.settings import RunSettings
from pipelines.sync import OrdersRun, sync_orders_window
from pipelines.warehouse.db import libpq_url
from pipelines.warehouse.history import Retention
from pipelines.warehouse.loader import store_timezones
from pipelines.warehouse.views import apply_views
from tests.support.history_world import World, epoch, expected_changes, expected_history, expected_restatements

D = Decimal
VIEWS = ["order_changes", "daily_restatements"]


# ------------------------------------------------------------------------------------------ reading
def warehouse_history(conn: psycopg.Connection) -> set[tuple]:
    return set(
        conn.execute(
            "select order_id, version, first_seen_run_id, first_seen_at, status, total, refunds"
            " from taptouch.order_history"
        ).fetchall()
    )


def warehouse_changes(conn: psycopg.Connection) -> set[tuple]:
    return set(
        conn.execute(
            "select order_id, version, previous_version, store_id, business_date, status_before, status,"
            " status_changed, total_change, items_changed, refunds_change, refunded_after_close,"
            " voided_after_close from analytics.order_changes"
        ).fetchall()
    )


def warehouse_restatements(conn: psycopg.Connection) -> dict[tuple[int, date], tuple]:
    rows = conn.execute(
        "select store_id, business_date, first_loaded_orders, first_loaded_net, next_day_orders, next_day_net,"
        " now_orders, now_net, restated_after_next_day from analytics.daily_restatements"
    ).fetchall()
    out = {}
    for store_id, day, *figures, restated in rows:
        assert restated == figures[5] - figures[3]
        out[(store_id, day)] = tuple(figures)
    return out


def check(w: World) -> None:
    assert warehouse_history(w.conn) == expected_history(w)
    raws = dict(w.conn.execute("select order_id || ':' || version, raw::text from taptouch.order_history").fetchall())
    for (oid, version), s in w.seen.items():
        assert json.loads(raws[f"{oid}:{version}"], parse_float=D) == s["record"]
    assert warehouse_changes(w.conn) == expected_changes(w)
    assert warehouse_restatements(w.conn) == expected_restatements(w)
    # now_* is analytics.daily_store_sales, figure for figure
    dss = dict(
        ((s, d), (n, net))
        for s, d, n, net in w.conn.execute(
            "select store_id, business_date, order_count, net_sales from analytics.daily_store_sales"
        ).fetchall()
    )
    for key, figures in warehouse_restatements(w.conn).items():
        assert dss.get(key, (0, D(0))) == (figures[4], figures[5])


# ------------------------------------------------------------------------------------------ tests
@pytest.fixture
def world(migrated_db):
    with psycopg.connect(libpq_url(migrated_db)) as conn:
        apply_views(conn)
    w = World(migrated_db)
    yield w
    w.close()


@pytest.mark.slow
def test_history_and_views_follow_edits_refunds_voids_and_deletions(world):
    w = world
    w.run()
    w.run()  # nothing changed: no version added
    w.runs += 1  # the edits below are made 39 hours after the first run, after the first business date
    orders = w.live()
    first_day = min(w.business_date(o) for o in orders)
    completed = [o for o in orders if o["status"] == "completed" and w.business_date(o) == first_day]
    w.edit(completed[0], status="partially_refunded")  # a refund
    w.edit(completed[1], status="voided")  # a void
    item = dict(completed[2]["items"][0], quantity=completed[2]["items"][0]["quantity"] + 1)
    w.edit(completed[2], items=[item] + completed[2]["items"][1:])  # an edit of the lines
    w.sb.delete_order(completed[3]["id"])
    w.pending_deletes.add(completed[3]["id"])
    w.run()
    check(w)
    rows = w.conn.execute("select count(*) from analytics.order_changes where previous_version is not null").fetchone()
    assert rows[0] == 3  # three orders have a second version; the deleted one none
    changed = w.conn.execute(
        "select order_id, status_before, status, refunded_after_close, voided_after_close, items_changed"
        " from analytics.order_changes where previous_version is not null order by order_id"
    ).fetchall()
    assert sorted(changed) == sorted(
        [
            (completed[0]["id"], "completed", "partially_refunded", True, False, False),
            (completed[1]["id"], "completed", "voided", False, True, False),
            (completed[2]["id"], "completed", "completed", False, False, True),
        ]
    )  # every edit lies days after its business day (the simulated clock)
    deleted = w.conn.execute(
        "select deleted_at is not null from analytics.order_changes where order_id = %s", (completed[3]["id"],)
    ).fetchone()
    assert deleted == (True,)


@pytest.mark.slow
def test_views_follow_a_business_day_start_of_0400(migrated_db):
    """With TAPTOUCH_BUSINESS_DAY_START=04:00 a day ends at 04:00 local: order_changes' day_ends_at
    and the after-close flags, and daily_restatements' next day, follow it (the truth shifts by it)."""
    with psycopg.connect(libpq_url(migrated_db)) as conn:
        apply_views(conn)
    w = World(migrated_db, seed=9, day_start=timedelta(hours=4))
    try:
        w.run()
        w.runs += 2
        for o in [o for o in w.live() if o["status"] == "completed"][:4]:
            w.edit(o, status="partially_refunded")
        w.run()
        check(w)
        ends = w.conn.execute(
            "select distinct extract(hour from day_ends_at at time zone s.timezone)"
            " from analytics.order_changes c join taptouch.stores s using (store_id)"
        ).fetchall()
        assert ends == [(4,)]
    finally:
        w.close()


@pytest.mark.slow
def test_a_relisting_of_the_same_versions_adds_nothing(world):
    w = world
    w.run()
    before = w.conn.execute("select count(*), max(first_seen_at) from taptouch.order_history").fetchone()
    assert before[0] == len(w.live()) > 0
    w.run()  # the same versions listed again (skipped as unchanged, or staged and refused by the key)
    after = w.conn.execute("select count(*), max(first_seen_at) from taptouch.order_history").fetchone()
    assert after == before
    assert (
        w.conn.execute("select count(*) from taptouch.order_history where first_seen_run_id = 'run-1'").fetchone()[0]
        == 0
    )
    check(w)


def test_retention_prunes_old_superseded_versions_never_the_current_one(world):
    w = world
    w.run()
    orders = [o for o in w.live() if o["status"] == "completed"][:3]
    for o in orders:
        w.edit(o, status="partially_refunded")
    w.run()
    # every version is now "old": first seen 10 days ago
    w.conn.execute("update taptouch.order_history set first_seen_at = now() - interval '10 days'")
    total = w.conn.execute("select count(*) from taptouch.order_history").fetchone()[0]
    orders_run = OrdersRun(timezones=store_timezones(w.conn), settings=RunSettings(history_days=5), run_id="prune-run")
    result = sync_orders_window(w.client, w.conn, w.windows[0], orders_run)  # any load prunes
    assert not result.failures
    left = w.conn.execute("select count(*) from taptouch.order_history").fetchone()[0]
    assert left == total - 3  # the three superseded versions; every current one stays
    assert (
        w.conn.execute(
            "select count(*) from taptouch.order_history h join taptouch.orders o using (order_id)"
            " where h.version <> o.updated_at_exact"
        ).fetchone()[0]
        == 0
    )
    state = w.conn.execute("select days, pruned from taptouch_meta.history_retention").fetchone()
    assert state == (5, 3)
    # a version superseded later, first seen long ago, goes at the load that supersedes it
    victim = [o for o in w.live() if o["status"] == "completed"][0]
    w.edit(victim, status="voided")
    windows = [win for win in w.windows]
    for win in windows:
        assert not sync_orders_window(w.client, w.conn, win, orders_run).failures
    versions = w.conn.execute(
        "select count(*) from taptouch.order_history where order_id = %s", (victim["id"],)
    ).fetchone()[0]
    assert versions == 1  # its old version (first seen 10 days ago) was pruned by the load that replaced it
    # unset: nothing pruned, the progress forgotten
    keep = OrdersRun(timezones=store_timezones(w.conn), settings=RunSettings(history_days=None))
    w.conn.execute("update taptouch.order_history set first_seen_at = now() - interval '10 days'")
    other = [o for o in w.live() if o["status"] == "completed"][0]
    w.edit(other, status="voided")
    for win in windows:
        assert not sync_orders_window(w.client, w.conn, win, keep).failures
    assert (
        w.conn.execute("select count(*) from taptouch.order_history where order_id = %s", (other["id"],)).fetchone()[0]
        == 2
    )
    assert w.conn.execute("select count(*) from taptouch_meta.history_retention").fetchone()[0] == 0
    assert Retention(None).days is None


# ------------------------------------------------------------------------------- state machine
class HistoryMachine(RuleBasedStateMachine):
    """Edits, refunds, voids, deletions and runs in any order; after every run the history and both
    views equal the truth exactly."""

    url: str = ""

    moved = 0  # across histories: some moved an order to another day

    @initialize()
    def start(self):
        self.w = World(self.url, seed=11)
        self.w.run()

    def teardown(self):
        if hasattr(self, "w"):
            self.w.close()

    def _pick(self, data, statuses) -> dict | None:
        candidates = [o for o in self.w.live() if o["status"] in statuses and o["id"] not in self.w.pending_deletes]
        return data.draw(st.sampled_from(candidates)) if candidates else None

    @rule(data=st.data())
    def refund(self, data):
        o = self._pick(data, {"completed"})
        if o:
            self.w.edit(o, status="partially_refunded")

    @rule(data=st.data())
    def void(self, data):
        o = self._pick(data, {"completed", "open", "partially_refunded"})
        if o:
            self.w.edit(o, status="voided")

    @rule(data=st.data())
    def edit_lines(self, data):
        o = self._pick(data, {"completed", "open"})
        if o:
            first = dict(o["items"][0], quantity=o["items"][0]["quantity"] + 1)
            self.w.edit(o, items=[first] + o["items"][1:])

    @rule(data=st.data(), days=st.sampled_from([-1, 1]))
    def move_to_another_day(self, data, days):
        """created_at corrected by a day: the version lies on another business date."""
        o = self._pick(data, {"completed", "partially_refunded", "refunded"})
        if o:
            created = datetime.fromisoformat(o["created_at"]) + timedelta(days=days)
            self.w.edit(o, created_at=created.isoformat())
            type(self).moved += 1

    @precondition(lambda self: len(self.w.deleted_at) + len(self.w.pending_deletes) < 2)
    @rule(data=st.data())
    def delete(self, data):
        o = self._pick(data, {"completed", "open", "partially_refunded", "refunded", "voided"})
        if o:
            self.w.sb.delete_order(o["id"])
            self.w.pending_deletes.add(o["id"])

    @rule()
    def run(self):
        self.w.run()
        check(self.w)

    @invariant()
    def runs_bounded(self):
        assert self.w.runs <= 12


@pytest.mark.slow
def test_state_machine(migrated_db):
    with psycopg.connect(libpq_url(migrated_db)) as conn:
        apply_views(conn)
    HistoryMachine.url = migrated_db
    machine = HistoryMachine.TestCase
    machine.settings = settings(
        max_examples=int(os.environ.get("TAPTOUCH_HISTORY_EXAMPLES", "6")),
        stateful_step_count=8,
        deadline=None,
        derandomize=not os.environ.get("TAPTOUCH_HISTORY_EXAMPLES"),
        suppress_health_check=list(HealthCheck),
    )
    machine().runTest()
    assert HistoryMachine.moved > 0, "no history moved an order to another business date"


def test_history_days_setting(monkeypatch):
    from pipelines.settings import SettingError, history_days

    monkeypatch.delenv("TAPTOUCH_HISTORY_DAYS", raising=False)
    assert history_days() is None  # unset: keep every version
    monkeypatch.setenv("TAPTOUCH_HISTORY_DAYS", " 30 ")
    assert history_days() == 30
    for bad in ("0", "-1", "1.5", "36501", "a week"):
        monkeypatch.setenv("TAPTOUCH_HISTORY_DAYS", bad)
        with pytest.raises(SettingError, match="TAPTOUCH_HISTORY_DAYS must be a whole number of days"):
            history_days()


@pytest.mark.slow
def test_a_version_rebuild_loads_from_the_quarantine_joins_the_history(world):
    """A version an older rule quarantined, loaded by ``taptouch-sync rebuild`` once it passes, is a
    version the warehouse holds: it joins the history (seen by no run), after the version it replaced."""
    from pipelines.cli import main
    from taptouch_resource import jsonutil

    w = world
    w.run()
    order = next(o for o in w.live() if o["status"] == "completed")
    newer = dict(order, status="voided", payments=[], completed_at=None)
    newer["updated_at"] = "2030-01-01T00:00:00+00:00"  # newer than anything the sandbox serves
    w.conn.execute(
        "insert into taptouch.quarantine (entity, record_key, store_id, reason, raw) values"
        " ('order', %s, %s, 'an old rule refused it', %s::jsonb)",
        (str(order["id"]), order["store_id"], jsonutil.dumps(newer)),
    )
    assert main(["rebuild", "--database-url", w.url]) == 0
    rows = w.conn.execute(
        "select version, status, first_seen_run_id from taptouch.order_history where order_id = %s order by version",
        (order["id"],),
    ).fetchall()
    assert rows == [(epoch(order["updated_at"]), "completed", "run-0"), (D(1893456000), "voided", None)]
    assert w.conn.execute("select status from taptouch.orders where order_id = %s", (order["id"],)).fetchone() == (
        "voided",
    )


def test_a_version_counts_on_its_own_business_date(world):
    """An order whose created_at was corrected by a day: as first loaded it counts on its first date,
    now on its new one (before: every version on the order's current date)."""
    w = world
    w.run()
    order = next(o for o in w.live() if o["status"] == "completed")
    first_day = w.business_date(order)
    w.edit(order, created_at=(datetime.fromisoformat(order["created_at"]) + timedelta(days=1)).isoformat())
    assert w.business_date(w.sb.order(order["id"])) == first_day + timedelta(days=1)
    w.run()
    check(w)
    got = warehouse_restatements(w.conn)
    store = order["store_id"]
    first_orders, _, _, _, now_orders, _ = got[(store, first_day)]
    assert first_orders == now_orders + 1  # the order was first loaded on its first date, and is gone from it now
