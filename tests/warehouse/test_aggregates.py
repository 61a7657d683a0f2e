"""The sales aggregates (migration 0018, pipelines/warehouse/aggregates.py) against the orders.

- A hypothesis state machine drives a sandbox on a fake clock (tests/support/state_model.py: the
  real client, sync and reconciliation) through new orders, edits (refunds, partial refunds, voids,
  completions, changed lines), deletions and restores at the source, hourly runs, full reloads
  and reconciliations; after every step the aggregates equal a from-scratch recomputation, and
  each of the five views that read them equals its former definition over every order
  (:data:`REFERENCE`: grouping analytics.sales_orders), row for row.
- The migration fills the aggregates of a warehouse that already holds orders.
- The check names a wrong aggregate and passes again once the store is recomputed; a business
  date re-derived outside the merge is repaired by ``refresh_store_days``.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from pipelines import sync
from pipelines.settings import RunSettings
from pipelines.warehouse import aggregates
from pipelines.warehouse.migrations import migrate
from pipelines.warehouse.rebuild import rebuild
from pipelines.warehouse.views import apply_views
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.state_model import DAY, World

EXAMPLES = int(os.environ.get("TAPTOUCH_AGGREGATES_EXAMPLES", "6"))
STEPS = int(os.environ.get("TAPTOUCH_AGGREGATES_STEPS", "14"))

# The five views as they were defined before the aggregates: grouping every sales order.
REFERENCE = {
    "daily_store_sales": """
select
    store_id,
    store_name,
    business_date,
    count(*) as order_count,
    round(sum(subtotal), 2) as gross_sales,
    round(sum(discount), 2) as discounts,
    round(sum(refunds), 2) as refunds,
    round(sum(net_total), 2) as net_sales,
    round(sum(tax), 2) as tax,
    round(sum(total) / count(*), 2) as avg_order_value,
    account,
    currency,
    day_complete
from analytics.sales_orders
group by store_id, store_name, business_date, account, currency, day_complete
""",
    "hourly_sales": """
select
    store_id,
    store_name,
    business_date,
    local_hour,
    count(*) as order_count,
    round(sum(refunds), 2) as refunds,
    round(sum(net_total), 2) as net_sales,
    account,
    currency,
    day_complete
from analytics.sales_orders
group by store_id, store_name, business_date, local_hour, account, currency, day_complete
""",
    "channel_mix": """
select
    store_id,
    store_name,
    business_date,
    source,
    fulfillment_type,
    count(*) as order_count,
    round(sum(refunds), 2) as refunds,
    round(sum(net_total), 2) as net_sales,
    account,
    currency,
    day_complete
from analytics.sales_orders
group by store_id, store_name, business_date, source, fulfillment_type, account, currency, day_complete
""",
    "payment_mix": """
with sales as (
    select order_id, store_id, business_date, account, day_complete
    from analytics.sales_orders
),
payments as (
    select
        sales.store_id,
        sales.business_date,
        sales.account,
        sales.day_complete,
        payments.method,
        payments.amount,
        payments.surcharge,
        payments.tip
    from taptouch.order_payments as payments
    join sales using (order_id)
),
daily as (
    select
        store_id,
        business_date,
        method,
        count(*) as payment_count,
        sum(amount) as amount,
        sum(surcharge) as surcharges,
        sum(tip) as tips,
        account,
        day_complete
    from payments
    group by store_id, business_date, method, account, day_complete
)
select
    daily.store_id,
    stores.name as store_name,
    daily.business_date,
    daily.method,
    daily.payment_count,
    round(daily.amount, 2) as amount,
    round(daily.surcharges, 2) as surcharges,
    round(daily.tips, 2) as tips,
    daily.account,
    stores.currency,
    daily.day_complete
from daily
left join taptouch.stores as stores using (store_id)
""",
    "product_sales": """
with sales as (
    select order_id, store_id, business_date, account, day_complete
    from analytics.sales_orders
),
items as (
    select
        sales.store_id,
        sales.business_date,
        sales.account,
        sales.day_complete,
        items.order_id,
        items.item_id,
        items.product_id,
        items.name as product_name,
        items.category,
        items.quantity,
        items.total,
        items.discount,
        items.modifiers
    from taptouch.order_items as items
    join sales using (order_id)
),
item_modifiers as (
    select
        items.order_id,
        items.item_id,
        sum(
            items.quantity
            * (modifier ->> 'price')::numeric
            * coalesce((modifier ->> 'quantity')::numeric, 1)
        ) as modifier_revenue
    from items
    cross join lateral jsonb_array_elements(items.modifiers) as modifier
    group by items.order_id, items.item_id
),
daily as (
    select
        items.store_id,
        items.business_date,
        items.product_id,
        items.product_name,
        items.category,
        count(distinct items.order_id) as order_count,
        sum(items.quantity) as units,
        sum(items.total) as net_item_sales,
        sum(items.discount) as item_discounts,
        coalesce(sum(item_modifiers.modifier_revenue), 0) as modifier_revenue,
        items.account,
        items.day_complete
    from items
    left join item_modifiers using (order_id, item_id)
    group by items.store_id, items.business_date, items.product_id, items.product_name, items.category,
             items.account, items.day_complete
)
select
    daily.store_id,
    stores.name as store_name,
    daily.business_date,
    daily.product_id,
    daily.product_name,
    daily.category,
    daily.order_count,
    daily.units,
    round(daily.net_item_sales, 2) as net_item_sales,
    round(daily.item_discounts, 2) as item_discounts,
    round(daily.modifier_revenue, 2) as modifier_revenue,
    daily.account,
    stores.currency,
    daily.day_complete
from daily
left join taptouch.stores as stores using (store_id)
""",
}


def differences(conn: psycopg.Connection) -> dict[str, object]:
    """Every way the aggregates or the views disagree with a recomputation from the orders."""
    found: dict[str, object] = {}
    with conn.transaction(), psycopg.ClientCursor(conn) as cur:
        cur.execute("set local jit = off")  # compiling costs seconds on these small tables
        found.update(aggregates.mismatches(cur))
        for view, reference in REFERENCE.items():
            cur.execute(
                f"(select '-' as side, * from (select * from analytics.{view} except all ({reference})) a)"
                f" union all (select '+', * from (({reference}) except all select * from analytics.{view}) b)"
            )
            rows = cur.fetchall()
            if rows:
                found[view] = rows
    return found


def sales_figures(conn: psycopg.Connection) -> tuple:
    """(store-days, sales orders) the views show: the histories must reach non-trivial states."""
    return conn.execute("select count(*), coalesce(sum(order_count), 0) from analytics.daily_store_sales").fetchone()


pick = st.integers(0, 10**6)


class Aggregates(RuleBasedStateMachine):
    db_url = ""
    deleted_seen = 0  # orders seen marked deleted in the warehouse, over every step of every history

    def __init__(self):
        super().__init__()
        self.world = World(self.db_url, seed=11)
        self.world.advance(DAY)
        note(self.world.sync(full=True))

    def teardown(self):
        self.world.close()

    @property
    def live(self) -> list[int]:
        return self.world.live

    @rule(seconds=st.integers(600, DAY))
    def time_passes(self, seconds):
        self.world.advance(seconds)

    @rule(store=pick)
    def new_order(self, store):
        self.world.new_order(self.world.store_ids[store % len(self.world.store_ids)])

    @precondition(lambda self: self.live)
    @rule(which=pick, variant=pick)
    def edit(self, which, variant):
        oid = self.live[which % len(self.live)]
        note(f"edit {oid}: {self.world.edit(oid, variant)}")

    @precondition(lambda self: self.live)
    @rule(which=pick)
    def delete_at_source(self, which):
        oid = self.live[which % len(self.live)]
        if self.world.can_delete(oid):
            self.world.delete(oid)
            note(f"deleted {oid}")

    @precondition(lambda self: self.live)
    @rule(which=pick)
    def delete_then_reconcile_twice(self, which):
        """A deletion at the source that the reconciliation confirms (two listings miss it)."""
        oid = self.live[which % len(self.live)]
        if self.world.can_delete(oid):
            self.world.delete(oid)
            for _ in range(2):
                self.world.advance(60)
                note(f"deleted {oid}, reconcile: " + self.world.reconcile(days=3))

    @precondition(lambda self: self.world.deleted)
    @rule(which=pick)
    def restore_at_source(self, which):
        oid = sorted(self.world.deleted)[which % len(self.world.deleted)]
        self.world.restore(oid)
        note(f"restored {oid}")

    @rule()
    def hourly_run(self):
        note("hourly: " + self.world.sync(full=False))

    @rule()
    def full_reload(self):
        note("full: " + self.world.sync(full=True))

    @rule()
    def reconcile(self):
        note("reconcile: " + self.world.reconcile(days=3))

    @invariant()
    def aggregates_are_exact(self):
        assert differences(self.world.conn) == {}
        deleted = self.world.conn.execute("select count(*) from taptouch.orders where deleted_at is not null")
        Aggregates.deleted_seen += deleted.fetchone()[0]


@pytest.mark.slow
def test_aggregates_and_views_stay_exact_through_edits_refunds_voids_deletions_and_reruns(migrated_db, monkeypatch):
    monkeypatch.setenv("TAPTOUCH_RECONCILE_CONFIRM_S", "0")  # a second listing confirms at once
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
    Aggregates.db_url = migrated_db
    run_state_machine_as_test(
        Aggregates,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        ),
    )
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        days, orders = sales_figures(conn)
        assert days >= 4 and orders >= 20  # the last history held real sales
        refunded = conn.execute(
            "select count(*) from taptouch.orders where status in ('refunded', 'partially_refunded')"
        ).fetchone()[0]
        assert refunded > 0, "no refund reached the warehouse"
    assert Aggregates.deleted_seen > 0, "no history had an order marked deleted in the warehouse"


# ---------------------------------------------------------------------------------------------------
# one warehouse, loaded once


@pytest.fixture
def loaded(migrated_db):
    """A warehouse with three days of two stores, loaded through the real sync, and the views."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
    world = World(migrated_db, seed=5)
    world.advance(DAY)
    world.sync(full=True)
    yield world
    world.close()


def test_the_migration_fills_the_aggregates_of_the_orders_held(loaded, migrated_db):
    conn = loaded.conn
    before = conn.execute("select count(*), sum(net_sales) from taptouch.sales_days").fetchone()
    assert before[0] >= 4
    conn.execute(
        "drop table taptouch.sales_days, taptouch.sales_hours, taptouch.sales_channels, taptouch.sales_payments,"
        " taptouch.sales_products cascade"
    )
    conn.execute("delete from taptouch_meta.schema_migrations where version = 18")
    assert migrate(migrated_db) == ["0018_sales_aggregates.sql"]
    apply_views(conn)
    assert conn.execute("select count(*), sum(net_sales) from taptouch.sales_days").fetchone() == before
    assert differences(conn) == {}


def test_the_check_names_a_wrong_aggregate_until_its_store_is_recomputed(loaded):
    conn = loaded.conn
    store_id, day = conn.execute(
        "select store_id, business_date from taptouch.sales_days order by store_id, business_date limit 1"
    ).fetchone()
    conn.execute(
        "update taptouch.sales_hours set net_sales = net_sales + 0.01 where (store_id, business_date) = (%s, %s)"
        " and local_hour = (select min(local_hour) from taptouch.sales_hours where (store_id, business_date) = (%s, %s))",
        (
            store_id,
            day,
            store_id,
            day,
        ),
    )
    start, end = loaded.first_utc, loaded.first_utc + timedelta(days=10)
    result = aggregates.check_result(conn, start, end, None, "orders")
    assert not result.passed
    assert result.metadata["tables_differing"].value == "sales_hours"
    assert str(store_id) in result.metadata["rows"].value
    with conn.transaction():
        assert aggregates.refresh_store_days(conn.cursor(), [store_id]) >= 1
    assert aggregates.check_result(conn, start, end, None, "orders").passed
    assert differences(conn) == {}


def test_business_dates_rederived_outside_the_merge_are_repaired_by_refresh_store_days(loaded):
    conn = loaded.conn
    store_id = loaded.store_ids[0]
    days_before = conn.execute(
        "select array_agg(business_date order by business_date) from taptouch.sales_days where store_id = %s",
        (store_id,),
    ).fetchone()[0]
    conn.execute("update taptouch.orders set business_date = business_date + 1 where store_id = %s", (store_id,))
    stale = differences(conn)
    assert "sales_days" in stale and "daily_store_sales" in stale
    with conn.transaction():
        aggregates.refresh_store_days(conn.cursor(), [store_id])
    assert differences(conn) == {}
    days_after = conn.execute(
        "select array_agg(business_date order by business_date) from taptouch.sales_days where store_id = %s",
        (store_id,),
    ).fetchone()[0]
    assert days_after == [d + timedelta(days=1) for d in days_before]


def test_rebuild_recomputes_the_store_days_of_the_orders_it_re_derives(loaded):
    conn = loaded.conn
    oid, store_id = conn.execute(
        "select order_id, store_id from taptouch.orders where status = 'completed' and deleted_at is null"
        " order by order_id limit 1"
    ).fetchone()
    before = conn.execute("select sum(net_sales) from taptouch.sales_days where store_id = %s", (store_id,)).fetchone()
    # typed values that went wrong (say, an old parser's), with aggregates that followed them
    conn.execute(
        "update taptouch.orders set total = total + 100, business_date = business_date + 30 where order_id = %s",
        (oid,),
    )
    with conn.transaction():
        aggregates.refresh_store_days(conn.cursor(), [store_id])
    wrong = conn.execute("select sum(net_sales) from taptouch.sales_days where store_id = %s", (store_id,)).fetchone()
    assert wrong[0] == before[0] + 100
    rebuild(conn, batch_size=7)
    assert (
        conn.execute("select sum(net_sales) from taptouch.sales_days where store_id = %s", (store_id,)).fetchone()
        == before
    )
    assert differences(conn) == {}


@pytest.mark.parametrize("setting", ["on", "off"])
def test_a_recompute_plans_without_merge_joins_and_gives_the_transaction_its_setting_back(loaded, setting):
    """The recompute turns merge joins off for its own statements only (a merge join over a child's
    whole primary key was its slow plan at 10M orders): the transaction's own setting, whatever
    it was, holds again after it, and the recomputed aggregates are exact."""
    conn = loaded.conn
    store_id = conn.execute("select min(store_id) from taptouch.sales_days").fetchone()[0]
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("select set_config('enable_mergejoin', %s, true)", (setting,))
        assert aggregates.refresh_store_days(cur, [store_id]) >= 1
        assert cur.execute("show enable_mergejoin").fetchone() == (setting,)
    assert conn.execute("show enable_mergejoin").fetchone() == ("on",)
    assert differences(conn) == {}


def test_touched_finds_exactly_the_store_days_of_the_orders_updated_in_a_window(loaded):
    """``aggregates.TOUCHED`` (each store's range of its (store_id, updated_at) index) returns the
    same store-days as the plain filter on every order, for windows of every size and position,
    per account and for every account; an order of a store missing from taptouch.stores counts."""
    conn = loaded.conn
    plain = (
        "select distinct store_id, business_date from taptouch.orders where updated_at >= %(start)s"
        " and updated_at < %(end)s and (%(account)s::text is null or account = %(account)s)"
    )
    conn.execute(  # an order of a store the stores table does not hold
        "insert into taptouch.orders select (jsonb_populate_record(null::taptouch.orders,"
        ' to_jsonb(o) || \'{"order_id": 999999999, "store_id": 4242}\')).* from taptouch.orders o'
        " order by order_id limit 1"
    )
    assert conn.execute("select count(*) from taptouch.stores where store_id = 4242").fetchone() == (0,)
    first, last = conn.execute("select min(updated_at), max(updated_at) from taptouch.orders").fetchone()
    span = last - first
    windows = [(first, last + timedelta(microseconds=1)), (first, first), (last, first)]
    windows += [(first + span * k / 7, first + span * (k + 1) / 7) for k in range(7)]
    windows += [(first + timedelta(hours=h), first + timedelta(hours=h, minutes=30)) for h in (0, 5, 13, 30)]
    accounts = [None] + [a for (a,) in conn.execute("select distinct account::text from taptouch.orders")] + ["nobody"]
    seen = 0
    for start, end in windows:
        for account in accounts:
            params = {"start": start, "end": end, "account": account}
            want = set(conn.execute(plain, params).fetchall())
            got = conn.execute(aggregates.TOUCHED, params).fetchall()
            assert len(got) == len(set(got)) and set(got) == want, (start, end, account)
            seen += len(want)
    assert seen > 10  # the windows did find store-days
    assert any(
        store == 4242
        for store, _ in conn.execute(aggregates.TOUCHED, {"start": first, "end": last + span, "account": None})
    )


def test_a_store_quarter_of_product_sales_is_read_from_the_covering_index_alone(loaded):
    """Migration 0022: every column analytics.product_sales reads of taptouch.sales_products is in
    the index on (store_id, business_date), so a vacuumed store-quarter is an index-only scan (its
    rows lie scattered among every other store's on the heap: at 10M orders, ~1,900 heap pages).
    A column added to the view but not to the index turns this plan into a heap read."""
    conn = loaded.conn
    conn.execute("vacuum analyze taptouch.sales_products")
    store_id, day = conn.execute(
        "select store_id, max(business_date) from taptouch.sales_products group by 1"
    ).fetchone()
    top = (
        "select product_id, product_name, category, sum(order_count), sum(units), sum(net_item_sales),"
        " sum(item_discounts), sum(modifier_revenue), min(account) from analytics.product_sales"
        " where store_id = %s and business_date >= %s and business_date < %s"
        " group by product_id, product_name, category order by 6 desc limit 20"
    )
    args = (store_id, day - timedelta(days=90), day + timedelta(days=1))
    with conn.transaction():  # the table is tiny here: a sequential scan would win on cost alone
        conn.execute("set local enable_seqscan = off")
        conn.execute("set local enable_bitmapscan = off")
        plan = "\n".join(r[0] for r in conn.execute("explain (analyze, costs off) " + top, args))
        assert conn.execute(top, args).fetchall()  # the store-quarter has products sold
    assert "Index Only Scan using sales_products_store_date_covering" in plan, plan
    assert "Heap Fetches: 0" in plan, plan
    assert "sales_products_store_date" not in {
        r[0] for r in conn.execute("select indexname from pg_indexes where tablename = 'sales_products'")
    }
    # vacuumed after 2% of their rows changed, so that few pages need the heap between vacuums
    options = conn.execute(
        "select relname, reloptions from pg_class where relnamespace = 'taptouch'::regnamespace and relname = any(%s)",
        (list(aggregates.TABLES),),
    ).fetchall()
    assert sorted(options) == [
        (t, ["autovacuum_vacuum_scale_factor=0.02", "autovacuum_vacuum_insert_scale_factor=0.02"])
        for t in sorted(aggregates.TABLES)
    ]


def test_orders_loaded_before_their_store_take_its_local_hours_once_the_stores_load(migrated_db):
    """The orders asset dates a new store's orders by the API's listing, before the stores asset
    has written the store: its aggregates took no local hour then (the zone is read from
    ``taptouch.stores``), and the stores load recomputes them, though no business date moves."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
        sb = Sandbox(SandboxConfig(seed=7, stores=2, days=2, orders_per_day=20))
        client = TaptouchClient(
            client_id=sb.config.client_id,
            client_secret=sb.config.client_secret,
            transport=sb.transport(),
            requests_per_second=None,
        )
        listing = sync.list_stores(client, conn)  # read, not written: taptouch.stores stays empty
        start = datetime.combine(sb.end_date - timedelta(days=3), datetime.min.time(), tzinfo=UTC)
        run = sync.OrdersRun(timezones=listing.timezones, mode=sync.FULL_REFRESH, settings=RunSettings())
        sync.sync_orders_window(client, conn, sync.OrderWindow("w", start, start + timedelta(days=6)), run)
        hourless = "select count(*) from analytics.hourly_sales where local_hour is null"
        assert conn.execute(hourless).fetchone()[0] > 0  # the store's zone is not known yet
        assert conn.execute("select count(*) from taptouch.stores").fetchone()[0] == 0
        sync.sync_stores(client, conn)
        assert conn.execute(hourless).fetchone()[0] == 0
        assert differences(conn) == {}
        client.close()


def test_the_check_reads_one_snapshot_while_a_load_commits(loaded, migrated_db, monkeypatch):
    """An hourly run commits while the check runs (between its recomputation and its reads of the
    tables): the check sees neither half of it, so exact aggregates pass."""
    import contextlib

    from tests.support.state_model import instant

    world = loaded
    real = aggregates.index_joins
    committed = []

    @contextlib.contextmanager
    def a_load_commits_meanwhile(cur):
        if not committed:
            world.advance(3 * 3600)
            world.new_order(world.store_ids[0])
            committed.append(world.sync(full=False))
        with real(cur):
            yield

    monkeypatch.setattr(aggregates, "index_joins", a_load_commits_meanwhile)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        result = aggregates.check_result(conn, world.first_utc, instant(world.now + DAY), None, "orders")
    assert committed and result.passed, result.metadata["tables_differing"]
    assert differences(world.conn) == {}
