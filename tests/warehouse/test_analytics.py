"""The analytics views against ground truth computed independently in Python from the sandbox.

Data goes through the production path (sandbox API in-process -> TaptouchClient -> sync_orders_window
-> loader -> real PostgreSQL -> apply_views); the expected figures are plain Python over the
sandbox's clean records (Decimal, zoneinfo), compared exactly, to the cent.
"""

from __future__ import annotations

import base64
import math
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from pipelines.settings import DEFAULT_LOOKBACK
from pipelines.sync import day_window
from pipelines.warehouse import aggregates
from pipelines.warehouse.db import libpq_url
from pipelines.warehouse.loader import load_inventory, load_stores
from pipelines.warehouse.migrations import migrate
from pipelines.warehouse.views import ViewConflictError, apply_views, view_sql
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support import truth
from tests.support.windows import load_window

D = Decimal
CENT = D("0.01")
ZERO = D("0.00")
SALES = truth.SALES_STATUSES
STORES = 3
ROOT = Path(__file__).resolve().parents[2]
DAYS = 5


# ------------------------------------------------------------------------------------------ loading
def make_sandbox() -> Sandbox:
    # end_date = today (UTC): inventory_status looks at the 28 days before today in each store's zone
    return Sandbox(
        SandboxConfig(seed=7, stores=STORES, days=DAYS, orders_per_day=40, end_date=datetime.now(UTC).date())
    )


def client_for(sb: Sandbox) -> TaptouchClient:
    return TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        page_size=500,
        requests_per_second=None,
    )


def utc_days(sb: Sandbox) -> list[date]:
    """Every UTC day an updated_at can fall on: stores east of UTC start their first day the day
    before; late edits may be published the day after end_date."""
    first = sb.end_date - timedelta(days=DAYS)
    return [first + timedelta(days=i) for i in range(DAYS + 2)]


def sync_day(client: TaptouchClient, conn: psycopg.Connection, day: date) -> None:
    start, end = day_window(day)
    result = load_window(client, conn, day.isoformat(), start, end, store_workers=2)
    assert not result.failures, result.failures


def inventory_days(sb: Sandbox) -> list[date]:
    return [sb.end_date - timedelta(days=i) for i in range(3, -1, -1)]


def inventory_records(sb: Sandbox, store_id: int, day: date) -> list[dict]:
    """The store's stock list as the API serves it, varied per snapshot day; the first products are
    forced to negative and zero stock so the stock-out and value rules are exercised every time."""
    records = [dict(r) for r in sb.inventory(store_id)]
    shift = (sb.end_date - day).days
    for i, rec in enumerate(records):
        if i == 0:
            rec["on_hand"] = D("-3")
        elif i == 1:
            rec["on_hand"] = D("0")
        else:
            rec["on_hand"] = rec["on_hand"] + shift
    return records


def sell_stock_products(sb: Sandbox) -> list[int]:
    """Late edits: add lines of stock products to some orders of every store (every day, every status),
    as the shop's retail sales of beans. Returns the edited order ids."""
    edited = []
    stock = {sid: {r["product_id"]: r for r in sb.inventory(sid)} for sid in sb.store_ids()}
    for sid in sb.store_ids():
        # the sandbox's menu and stock catalogues do not overlap: sell stock products through edits,
        # among them the first listed, whose stock inventory_records forces negative
        listed = sorted(stock[sid])
        sold = [listed[0], listed[5], listed[6]]
        for order in list(sb.orders(sid))[::9]:
            rec = stock[sid][sold[order["id"] % len(sold)]]
            line = {
                "id": len(order["items"]) + 1,
                "product_id": rec["product_id"],
                "sku": rec["sku"],
                "name": rec["name"],
                "category": rec["category"],
                "quantity": 1 + order["id"] % 3,
                "unit_price": rec["sell_price"],
                "discount": ZERO,
                "tax": ZERO,
                "total": ZERO,
                "modifiers": [],
            }
            sb.edit_order(
                order["id"],
                items=order["items"] + [line],
                updated_at=datetime.fromisoformat(order["updated_at"]) + timedelta(minutes=5),
            )
            edited.append(order["id"])
    return edited


def load_sandbox(url: str, sb: Sandbox) -> psycopg.Connection:
    conn = psycopg.connect(libpq_url(url), autocommit=True)
    load_stores(conn, sb.stores())
    client = client_for(sb)
    for day in utc_days(sb):
        sync_day(client, conn, day)
    for day in inventory_days(sb):
        for sid in sb.store_ids():
            load_inventory(conn, sid, inventory_records(sb, sid, day), snapshot_date=day)
    apply_views(conn)
    return conn


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    sb = make_sandbox()
    sell_stock_products(sb)
    return sb


@pytest.fixture(scope="module")
def loaded(make_database, sandbox):
    """One migrated database holding the whole sandbox, shared by the read-only tests of this module."""
    url = make_database()
    migrate(url)
    conn = load_sandbox(url, sandbox)
    yield url, conn
    conn.close()


# ------------------------------------------------------------------------------------- ground truth
def tz_of(sb: Sandbox) -> dict[int, ZoneInfo]:
    return {s["id"]: ZoneInfo(s["timezone"]) for s in sb.stores()}


def sales_orders(sb: Sandbox):
    """(store_id, business_date, local created_at, order) of every sales order, latest versions."""
    tz = tz_of(sb)
    for sid in sb.store_ids():
        for order in sb.orders(sid):
            if order["status"] in SALES:
                local = datetime.fromisoformat(order["created_at"]).astimezone(tz[sid])
                yield sid, local.date(), local, order


def refunded(order: dict) -> Decimal:
    return sum((r["amount"] for r in order["refunds"]), ZERO)


def truth_sales_orders(sb):
    return {
        (order["id"],): {
            "store_id": sid,
            "business_date": day,
            "local_hour": local.hour,
            "status": order["status"],
            "total": order["total"],
            "refunds": refunded(order),
            "net_total": order["total"] - refunded(order),
        }
        for sid, day, local, order in sales_orders(sb)
    }


def truth_hourly_sales(sb):
    acc = defaultdict(lambda: {"order_count": 0, "refunds": ZERO, "net_sales": ZERO})
    for sid, day, local, order in sales_orders(sb):
        row = acc[(sid, day, local.hour)]
        row["order_count"] += 1
        row["refunds"] += refunded(order)
        row["net_sales"] += order["total"] - refunded(order)
    return dict(acc)


def truth_product_sales(sb):
    acc = defaultdict(
        lambda: {
            "order_ids": set(),
            "units": D(0),
            "net_item_sales": ZERO,
            "item_discounts": ZERO,
            "modifier_revenue": D(0),
        }
    )
    for sid, day, _, order in sales_orders(sb):
        for item in order["items"]:
            row = acc[(sid, day, item["product_id"], item["name"], item["category"])]
            row["order_ids"].add(order["id"])
            row["units"] += D(item["quantity"])
            row["net_item_sales"] += item["total"]
            row["item_discounts"] += item["discount"]
            for m in item["modifiers"]:
                row["modifier_revenue"] += D(item["quantity"]) * m["price"] * D(m.get("quantity") or 1)
    return {
        k: {
            "order_count": len(v["order_ids"]),
            "units": v["units"],
            "net_item_sales": v["net_item_sales"],
            "item_discounts": v["item_discounts"],
            "modifier_revenue": v["modifier_revenue"].quantize(CENT, ROUND_HALF_UP),
        }
        for k, v in acc.items()
    }


def truth_payment_mix(sb):
    acc = defaultdict(lambda: {"payment_count": 0, "amount": ZERO, "surcharges": ZERO, "tips": ZERO})
    for sid, day, _, order in sales_orders(sb):
        for p in order["payments"]:
            row = acc[(sid, day, p["method"])]
            row["payment_count"] += 1
            row["amount"] += p["amount"]
            row["surcharges"] += p["surcharge"]
            row["tips"] += p["tip"]
    return dict(acc)


def truth_channel_mix(sb):
    acc = defaultdict(lambda: {"order_count": 0, "refunds": ZERO, "net_sales": ZERO})
    for sid, day, _, order in sales_orders(sb):
        row = acc[(sid, day, order["source"], order["fulfillment_type"])]
        row["order_count"] += 1
        row["refunds"] += refunded(order)
        row["net_sales"] += order["total"] - refunded(order)
    return dict(acc)


def units_by_day(sb) -> dict[tuple[int, date, int], tuple[Decimal, Decimal]]:
    acc = defaultdict(lambda: [D(0), ZERO])
    for sid, day, _, order in sales_orders(sb):
        for item in order["items"]:
            row = acc[(sid, day, item["product_id"])]
            row[0] += D(item["quantity"])
            row[1] += item["total"]
    return {k: tuple(v) for k, v in acc.items()}


def stock_value(on_hand: Decimal, cost: Decimal | None) -> Decimal | None:
    return None if cost is None else (max(on_hand, D(0)) * cost).quantize(CENT, ROUND_HALF_UP)


def truth_inventory_status(sb, now: datetime):
    tz = tz_of(sb)
    units = units_by_day(sb)
    out = {}
    for sid in sb.store_ids():
        today = now.astimezone(tz[sid]).date()
        for rec in inventory_records(sb, sid, sb.end_date):  # the last snapshot loaded is the current level
            pid, on_hand = rec["product_id"], D(rec["on_hand"])
            sold = sum((units.get((sid, today - timedelta(days=k), pid), (D(0),))[0] for k in range(1, 29)), D(0))
            out[(sid, pid)] = {
                "on_hand": on_hand,
                "stock_value": stock_value(on_hand, rec["cost_price"]),
                "below_reorder": on_hand < rec["reorder_level"],
                "stock_out": on_hand <= 0,
                "units_sold_28d": sold,
                "avg_daily_units_28d": (sold / 28).quantize(D("0.001"), ROUND_HALF_UP),
                "days_of_cover": (max(on_hand, D(0)) * 28 / sold).quantize(D("0.1"), ROUND_HALF_UP) if sold else None,
            }
    return out


def truth_inventory_history(sb):
    units = units_by_day(sb)
    out = {}
    for day in inventory_days(sb):
        for sid in sb.store_ids():
            for rec in inventory_records(sb, sid, day):
                u, s = units.get((sid, day, rec["product_id"]), (D(0), ZERO))
                out[(day, sid, rec["product_id"])] = {
                    "on_hand": D(rec["on_hand"]),
                    "stock_value": stock_value(D(rec["on_hand"]), rec["cost_price"]),
                    "units_sold": u,
                    "item_sales": s,
                }
    return out


# ------------------------------------------------------------------------------------- comparison
KEYS = {
    "sales_orders": ("order_id",),
    "daily_store_sales": ("store_id", "business_date"),
    "hourly_sales": ("store_id", "business_date", "local_hour"),
    "product_sales": ("store_id", "business_date", "product_id", "product_name", "category"),
    "payment_mix": ("store_id", "business_date", "method"),
    "channel_mix": ("store_id", "business_date", "source", "fulfillment_type"),
    "inventory_status": ("store_id", "product_id"),
    "inventory_history": ("snapshot_date", "store_id", "product_id"),
}


def db_now(conn) -> datetime:
    return conn.execute("select now()").fetchone()[0]


def expected(view: str, sb: Sandbox, now: datetime) -> dict:
    return {
        "sales_orders": lambda: truth_sales_orders(sb),
        "daily_store_sales": lambda: truth.daily_store_sales(sb),
        "hourly_sales": lambda: truth_hourly_sales(sb),
        "product_sales": lambda: truth_product_sales(sb),
        "payment_mix": lambda: truth_payment_mix(sb),
        "channel_mix": lambda: truth_channel_mix(sb),
        "inventory_status": lambda: truth_inventory_status(sb, now),
        "inventory_history": lambda: truth_inventory_history(sb),
    }[view]()


def actual(conn, view: str, columns) -> dict:
    keys = KEYS[view]
    cur = conn.execute(f"select {', '.join(keys + tuple(columns))} from analytics.{view}")
    return {row[: len(keys)]: dict(zip(columns, row[len(keys) :], strict=False)) for row in cur.fetchall()}


def assert_view_matches(conn, view: str, sb: Sandbox) -> dict:
    want = expected(view, sb, db_now(conn))
    columns = next(iter(want.values())).keys()
    got = actual(conn, view, columns)
    assert got.keys() == want.keys(), (view, sorted(got.keys() ^ want.keys(), key=str)[:5])
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, (view, list(wrong.items())[:3])
    for _k, row in got.items():  # money stays exact: Decimal with cents, never float
        for col, value in row.items():
            assert not isinstance(value, float), (view, col)
    return got


# ------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("view", sorted(KEYS))
def test_view_matches_ground_truth(loaded, sandbox, view):
    _, conn = loaded
    got = assert_view_matches(conn, view, sandbox)
    assert len(got) > 0


def test_data_covers_midnight_refunds_voids_and_open_orders(loaded, sandbox):
    """The data the views are checked on holds the hard cases (so the comparisons above test them)."""
    _, conn = loaded
    tz = tz_of(sandbox)
    zones = {str(z) for z in tz.values()}
    assert len(zones) == STORES  # three different time zones
    near_midnight = defaultdict(int)  # per store: sales orders whose UTC date differs from their business date
    statuses = defaultdict(int)
    for sid in sandbox.store_ids():
        for order in sandbox.orders(sid):
            statuses[order["status"]] += 1
            created = datetime.fromisoformat(order["created_at"])
            local = created.astimezone(tz[sid])
            if (
                order["status"] in SALES
                and (local.hour == 0 or local.hour == 23)
                and created.astimezone(UTC).date() != local.date()
            ):
                near_midnight[sid] += 1
    assert all(near_midnight[sid] > 0 for sid in sandbox.store_ids()), near_midnight
    for status in ("voided", "open", "refunded", "partially_refunded", "completed"):
        assert statuses[status] > 0, statuses

    # those orders land on their local date and hour, in every store
    hours = conn.execute(
        "select store_id, array_agg(distinct local_hour) from analytics.hourly_sales group by store_id"
    ).fetchall()
    assert {sid for sid, hs in hours if 0 in hs and 23 in hs} == set(sandbox.store_ids())
    # the cross-view identities the README promises
    mismatches = conn.execute("""
        with h as (select store_id, business_date, sum(order_count) as n, sum(net_sales) as net
                   from analytics.hourly_sales group by store_id, business_date),
             c as (select store_id, business_date, sum(order_count) as n, sum(net_sales) as net
                   from analytics.channel_mix group by store_id, business_date),
             p as (select store_id, business_date, sum(net_item_sales) as items
                   from analytics.product_sales group by store_id, business_date),
             m as (select store_id, business_date, sum(amount) as amount
                   from analytics.payment_mix group by store_id, business_date)
        select count(*) from analytics.daily_store_sales d
        join h using (store_id, business_date) join c using (store_id, business_date)
        join p using (store_id, business_date) join m using (store_id, business_date)
        where h.n <> d.order_count or h.net <> d.net_sales or c.n <> d.order_count or c.net <> d.net_sales
           or p.items <> d.gross_sales or m.amount - d.refunds <> d.net_sales""").fetchone()[0]
    assert mismatches == 0


def test_inventory_cases_are_exercised(loaded, sandbox):
    _, conn = loaded
    rows = conn.execute(
        "select on_hand, stock_value, stock_out, below_reorder, days_of_cover from analytics.inventory_status"
    ).fetchall()
    assert any(on_hand < 0 and value == 0 and out for on_hand, value, out, _, _ in rows)  # negative stock: value 0
    assert any(cover is not None and cover > 0 for *_, cover in rows)
    assert any(cover == 0 for *_, cover in rows)  # sold but out of stock
    assert any(cover is None for *_, cover in rows)  # never sold
    assert any(below for *_, below, _ in rows) and not all(below for *_, below, _ in rows)
    sold = conn.execute("select count(*) from analytics.inventory_history where units_sold > 0").fetchone()[0]
    assert sold > 0


def test_views_follow_late_edits(migrated_db):
    """A later version of an order (refunded, voided, reopened, re-itemised, moved across midnight)
    reloaded through its window moves every view with it."""
    sb = make_sandbox()
    conn = load_sandbox(migrated_db, sb)
    try:
        before = {
            v: actual(conn, v, ["order_count", "net_sales"])
            for v in ("daily_store_sales", "hourly_sales", "channel_mix")
        }
        tz = tz_of(sb)
        picked: dict[str, dict] = {}
        for sid in sb.store_ids():
            for order in sb.orders(sid):
                local = datetime.fromisoformat(order["created_at"]).astimezone(tz[sid])
                st = order["status"]
                if st == "completed" and order["refunds"] == [] and "refund" not in picked:
                    picked["refund"] = order
                elif st == "completed" and "void" not in picked and local.hour >= 8:
                    picked["void"] = order
                elif st == "open" and "complete" not in picked:
                    picked["complete"] = order
                elif st == "completed" and local.hour == 23 and "midnight" not in picked:
                    picked["midnight"] = order
                elif st == "completed" and len(order["items"]) > 1 and "items" not in picked:
                    picked["items"] = order
        assert picked.keys() == {"refund", "void", "complete", "midnight", "items"}, picked.keys()
        # published after every original version: in the UTC day after end_date
        published = datetime.combine(sb.end_date + timedelta(days=1), datetime.min.time(), UTC)
        midnight_local = datetime.fromisoformat(picked["midnight"]["created_at"]).astimezone(
            tz[picked["midnight"]["store_id"]]
        )
        edits = {
            "refund": {"status": "refunded"},
            "void": {"status": "voided"},
            "complete": {"status": "completed"},
            # created_at corrected from 23:xx to 00:05 the next local day: it moves business date
            "midnight": {"created_at": (midnight_local + timedelta(days=1)).replace(hour=0, minute=5).isoformat()},
            "items": {
                "items": [{**picked["items"]["items"][0], "quantity": picked["items"]["items"][0]["quantity"] + 2}]
                + picked["items"]["items"][1:]
            },
        }
        for n, (case, changes) in enumerate(edits.items()):
            sb.edit_order(picked[case]["id"], updated_at=published + timedelta(minutes=n), **changes)
        moved = sb.order(picked["midnight"]["id"])
        assert truth.business_date(moved, str(tz[moved["store_id"]])) != truth.business_date(
            picked["midnight"], str(tz[moved["store_id"]])
        )
        assert sb.order(picked["refund"]["id"])["refunds"]

        sync_day(client_for(sb), conn, published.date())  # the window holding the new versions
        for view in KEYS:
            assert_view_matches(conn, view, sb)
        after = {v: actual(conn, v, ["order_count", "net_sales"]) for v in before}
        for view in before:
            assert after[view] != before[view], view
    finally:
        conn.close()


def test_analytics_assets_materialize_with_chart(loaded):
    import dagster as dg

    from pipelines.assets.analytics import analytics_assets
    from pipelines.warehouse.resource import PostgresResource

    url, conn = loaded
    result = dg.materialize(analytics_assets, resources={"warehouse": PostgresResource(database_url=url)})
    assert result.success
    mats = {
        e.asset_key.to_user_string(): e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
    }
    assert set(mats) == set(KEYS) | {"business_days", "load_coverage", "order_changes", "daily_restatements"}
    for view, mat in mats.items():
        rows = conn.execute(f"select count(*) from analytics.{view}").fetchone()[0]
        assert mat.metadata["dagster/row_count"].value == rows > 0
    chart = mats["daily_store_sales"].metadata["net_sales_chart"].value
    prefix = "data:image/png;base64,"
    assert prefix in chart
    data = chart.split(prefix, 1)[1].rstrip(")")
    assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def test_analytics_assets_show_a_typed_table_preview_and_the_sql_path_in_the_repository(loaded):
    """The preview is a Dagster table (shown on the asset's page, not behind "[Show Markdown]"),
    typed from information_schema, money exact; the SQL file is named relative to the repository,
    in the definition and in every materialization."""
    import dagster as dg

    from pipelines.assets.analytics import analytics_assets
    from pipelines.warehouse.resource import PostgresResource

    url, conn = loaded
    result = dg.materialize(analytics_assets, resources={"warehouse": PostgresResource(database_url=url)})
    mats = {
        e.asset_key.to_user_string(): e.event_specific_data.materialization
        for e in result.get_asset_materialization_events()
    }
    preview = mats["daily_store_sales"].metadata["preview"]
    assert isinstance(preview, dg.TableMetadataValue)
    columns = {c.name: c.type for c in preview.schema.columns}
    assert list(columns) == [
        "store_id",
        "store_name",
        "business_date",
        "order_count",
        "gross_sales",
        "discounts",
        "refunds",
        "net_sales",
        "tax",
        "avg_order_value",
        "account",
        "currency",
        "day_complete",
    ]
    assert columns["net_sales"] == "numeric" and columns["day_complete"] == "boolean"
    assert len(preview.records) == min(20, mats["daily_store_sales"].metadata["dagster/row_count"].value)
    row = preview.records[0].data
    first = conn.execute(  # the same store-day read directly (the preview has no order of its own)
        "select store_id, store_name, business_date, net_sales, day_complete from analytics.daily_store_sales"
        " where store_id = %s and business_date = %s",
        (row["store_id"], row["business_date"]),
    ).fetchone()
    assert (row["store_id"], row["store_name"], row["business_date"], row["net_sales"], row["day_complete"]) == (
        first[0],
        first[1],
        first[2].isoformat(),
        str(first[3]),
        first[4],
    )  # money as its exact text
    assert isinstance(mats["sales_orders"].metadata["preview"], dg.TableMetadataValue)
    for asset in analytics_assets:
        name = asset.key.to_user_string()
        path = f"sql/analytics/{name}.sql"
        assert asset.metadata_by_key[asset.key]["sql"].value == path == mats[name].metadata["sql"].value
        assert (ROOT / path).is_file()
    days = mats["daily_store_sales"].metadata
    total = conn.execute("select count(*) from analytics.daily_store_sales").fetchone()[0]
    assert days["complete_store_days"].value + days["partial_store_days"].value == total


def test_the_sales_chart_leaves_out_partial_days_and_names_store_and_account(migrated_db):
    """Two accounts whose stores share names: each line is one store of one account; the partial
    days (the first day, whose earlier window was not loaded, and a day whose last load began
    before it ended) are not plotted."""
    from pipelines.assets.analytics import sales_chart, sales_chart_series
    from pipelines.warehouse.resource import PostgresResource

    sb = Sandbox(SandboxConfig(seed=7, stores=2, days=4, orders_per_day=20, end_date=date(2026, 11, 20)))
    with psycopg.connect(libpq_url(migrated_db), autocommit=True) as conn:
        load_stores(conn, sb.stores())
        for offset in range(-3, 2):  # not the window before the first local day of Sydney
            sync_day(client_for(sb), conn, sb.end_date + timedelta(days=offset))
        conn.execute("update taptouch.stores set account = 'north' where store_id = %s", (sb.store_ids()[1],))
        conn.execute("update taptouch.orders set account = 'north' where store_id = %s", (sb.store_ids()[1],))
        with conn.transaction():  # rows moved to another account by hand: their sales aggregates follow
            aggregates.refresh_store_days(conn.cursor(), [sb.store_ids()[1]])
        conn.execute(
            "update taptouch.listing_proofs set listed_at = '2026-11-19 12:00Z',"
            " settled_at = '2026-11-19 12:00Z'::timestamptz - interval '5 minutes' where \"window\" = '2026-11-19'"
        )
        apply_views(conn)
        partial = {
            (sid, d)
            for sid, d in conn.execute(
                "select store_id, business_date from analytics.daily_store_sales where not day_complete"
            )
        }
        names = dict(conn.execute("select store_id, name from taptouch.stores"))
    sydney, perth = sb.store_ids()
    assert {(sydney, date(2026, 11, 17)), (sydney, date(2026, 11, 19)), (perth, date(2026, 11, 19))} <= partial
    series = sales_chart_series(PostgresResource(database_url=migrated_db))
    assert set(series.columns) == {f"{sydney} {names[sydney]} (default, AUD)", f"{perth} {names[perth]} (north, AUD)"}
    plotted = {
        (sid, d)
        for sid in (sydney, perth)
        for d in series.index
        if not math.isnan(series.loc[d, next(c for c in series.columns if c.startswith(str(sid)))])
    }
    assert plotted and not plotted & partial
    assert date(2026, 11, 18) in series.index and date(2026, 11, 19) not in series.index
    assert sales_chart(PostgresResource(database_url=migrated_db)).startswith("![net sales per store per day](data:")


# ------------------------------------------------------------------------------ applying views safely
WIDER_SALES_ORDERS = view_sql("sales_orders").replace(
    "as day_complete\nfrom sales", "as day_complete,\n    1 as retired_column\nfrom sales"
)
assert "retired_column" in WIDER_SALES_ORDERS


def relations(conn, schema: str) -> set[str]:
    return {
        r[0] for r in conn.execute("select table_name from information_schema.views where table_schema = %s", (schema,))
    }


def test_a_view_whose_columns_changed_is_recreated_with_every_view_built_on_it(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
        conn.execute(WIDER_SALES_ORDERS)  # an older version with one more column
        assert "retired_column" in {
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns where table_name = 'sales_orders'"
            )
        }
        assert apply_views(conn, ["sales_orders"]) == ["sales_orders"]
        # the dependents came back
        assert relations(conn, "analytics") == set(KEYS) | {
            "business_days",
            "load_coverage",
            "order_changes",
            "daily_restatements",
        }
        assert "retired_column" not in {
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns where table_name = 'sales_orders'"
            )
        }


def test_applying_views_never_drops_a_view_it_does_not_recreate(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        apply_views(conn)
        conn.execute(
            "create view public.my_report as select store_id, count(*) as n"
            " from analytics.sales_orders group by store_id"
        )
        apply_views(conn)  # same columns: replaced in place, the user's view untouched
        assert "my_report" in relations(conn, "public")
        conn.execute(WIDER_SALES_ORDERS)
        with pytest.raises(ViewConflictError, match="public.my_report"):
            apply_views(conn, ["sales_orders"])
        assert "my_report" in relations(conn, "public")
        assert relations(conn, "analytics") == set(KEYS) | {
            "business_days",
            "load_coverage",
            "order_changes",
            "daily_restatements",
        }
        assert "retired_column" in {
            r[0]
            for r in conn.execute(
                "select column_name from information_schema.columns where table_name = 'sales_orders'"
            )
        }


# ------------------------------------------------------------------------------ complete business days
DATED_VIEWS = {
    "sales_orders": "business_date",
    "daily_store_sales": "business_date",
    "hourly_sales": "business_date",
    "product_sales": "business_date",
    "payment_mix": "business_date",
    "channel_mix": "business_date",
    "inventory_history": "snapshot_date",
}


def local_day(day: date, tz: ZoneInfo) -> tuple[datetime, datetime, list[date]]:
    """(start, end) of a store-local day as UTC instants, and the UTC days (orders windows) it overlaps."""
    starts = datetime.combine(day, datetime.min.time(), tz).astimezone(UTC)
    ends = datetime.combine(day + timedelta(days=1), datetime.min.time(), tz).astimezone(UTC)
    first, last = starts.date(), (ends - timedelta(microseconds=1)).date()
    return starts, ends, [first + timedelta(days=i) for i in range((last - first).days + 1)]


def window_loaded(
    window: date, day_ends: datetime, loaded: set[date], first_load: datetime, last_load: datetime
) -> bool | None:
    """Whether a window counts for a day, every window of ``loaded`` having been loaded once between
    ``first_load`` and ``last_load``: it must have loaded after the day ended, or after the window
    ended if that came first, by more than the listing's settle time (the lookback: a proof holds
    for what settled before its listing started). None: undecidable (the instant fell while the
    loads ran, or within the settle time before them: a day ending just before the test ran)."""
    if window not in loaded:
        return False
    after = min(day_ends, datetime.combine(window + timedelta(days=1), datetime.min.time(), UTC))
    return True if after <= first_load - DEFAULT_LOOKBACK else False if after > last_load else None


def test_business_days_say_which_days_are_completely_loaded(loaded, sandbox):
    """Every store-day with an order or a snapshot, its windows, and day_complete, against the rule
    computed in Python from the windows the fixture loaded (all at about the same time)."""
    _, conn = loaded
    first_load, last_load = conn.execute(
        "select min(started_at), max(started_at) from taptouch.sync_log where entity = 'orders'"
    ).fetchone()
    tz = tz_of(sandbox)
    days = {(sid, truth.business_date(o, str(tz[sid]))) for sid in sandbox.store_ids() for o in sandbox.orders(sid)}
    days |= {(sid, d) for d in inventory_days(sandbox) for sid in sandbox.store_ids()}
    got = {
        (r[0], r[1]): r[2:]
        for r in conn.execute(
            "select store_id, business_date, day_complete, windows, windows_loaded, account from analytics.business_days"
        )
    }
    assert got.keys() == days
    decided = {True: 0, False: 0}
    for (sid, day), (complete, windows, windows_loaded, account) in got.items():
        _, ends, overlapping = local_day(day, tz[sid])
        assert windows == [w.isoformat() for w in overlapping] and account == "default"
        judged = [window_loaded(w, ends, set(utc_days(sandbox)), first_load, last_load) for w in overlapping]
        if None in judged:
            continue
        assert windows_loaded == [w.isoformat() for w, ok in zip(overlapping, judged, strict=False) if ok], (sid, day)
        assert complete == all(judged), (sid, day, judged)
        decided[complete] += 1
    assert decided[True] >= 3 * STORES, decided  # partial days: the next test and the one after
    for sid in sandbox.store_ids():  # the store's current day has not ended: partial
        today = datetime.now(tz[sid]).date()
        assert got.get((sid, today), (False,))[0] is False


def test_every_dated_view_says_whether_its_day_is_complete(loaded):
    """day_complete, last in every dated view, is business_days' verdict on the row's store and date."""
    _, conn = loaded
    verdict = dict(
        ((sid, d), ok)
        for sid, d, ok in conn.execute("select store_id, business_date, day_complete from analytics.business_days")
    )
    for view, date_column in DATED_VIEWS.items():
        cols = [
            c
            for (c,) in conn.execute(
                "select column_name from information_schema.columns where table_schema = 'analytics'"
                " and table_name = %s order by ordinal_position",
                (view,),
            )
        ]
        assert cols[-3:] == ["account", "currency", "day_complete"], view
        rows = conn.execute(f"select store_id, {date_column}, day_complete from analytics.{view}").fetchall()
        assert rows and all(ok == verdict[(sid, d)] for sid, d, ok in rows), view


def test_a_day_is_complete_once_each_window_loaded_after_the_day_or_window_ended(migrated_db):
    """A Sydney day (UTC+11 in November) overlaps two orders windows: the UTC day before it, which
    ends first, and its own UTC day, which holds its end. Load times are set on the stores' proofs
    (taptouch.listing_proofs). A store with no order in a window needs its own complete listing too."""
    sb = Sandbox(
        SandboxConfig(seed=7, stores=2, days=3, orders_per_day=20, end_date=date(2026, 11, 20), empty_store_ids=(7102,))
    )
    sydney, empty = sb.store_ids()
    with psycopg.connect(libpq_url(migrated_db), autocommit=True) as conn:
        load_stores(conn, sb.stores())
        for offset in range(-4, 2):
            sync_day(client_for(sb), conn, sb.end_date + timedelta(days=offset))
        apply_views(conn)
        day = date(2026, 11, 19)
        conn.execute(
            "insert into taptouch.inventory_snapshots (snapshot_date, store_id, product_id, on_hand)"
            " values (%s, %s, 1, 5)",
            (day, empty),
        )
        before, own = "2026-11-18", "2026-11-19"  # windows: [18th 13:00Z, 24:00Z) and [19th 00:00Z, 13:00Z)
        day_ends = datetime(2026, 11, 19, 13, tzinfo=UTC)

        def loads(window: str, at: datetime, store_id: int = sydney) -> None:
            """The store's latest complete listing of the window started at ``at`` (its proof): it proves
            what was updated up to the default lookback (5 minutes) before ``at``."""
            conn.execute(
                "update taptouch.listing_proofs set listed_at = %s, settled_at = %s"
                ' where "window" = %s and store_id = %s',
                (at, at - timedelta(minutes=5), window, store_id),  # it settles the lookback (5 minutes)
            )

        def verdict(store_id: int = sydney) -> tuple[bool, list[str]]:
            complete, loaded = conn.execute(
                "select day_complete, windows_loaded from analytics.business_days"
                " where store_id = %s and business_date = %s",
                (store_id, day),
            ).fetchone()
            for view, date_column in DATED_VIEWS.items():  # every dated view says the same of its rows
                said = {
                    r[0]
                    for r in conn.execute(
                        f"select day_complete from analytics.{view} where store_id = %s and {date_column} = %s",
                        (store_id, day),
                    )
                }
                assert said <= {complete} and (said or view == "inventory_history" or store_id == empty), view
            return complete, loaded

        assert conn.execute(
            "select windows from analytics.business_days where store_id = %s and business_date = %s", (sydney, day)
        ).fetchone()[0] == [before, own]
        loads(before, datetime(2026, 11, 19, 0, 5, tzinfo=UTC))  # 5 min after its window ended
        loads(own, day_ends + timedelta(minutes=5))
        assert verdict() == (True, [before, own])
        loads(own, day_ends - timedelta(minutes=5))  # the last load began before the local day ended
        assert verdict() == (False, [before])
        loads(own, day_ends + timedelta(hours=3))
        loads(before, datetime(2026, 11, 18, 23, 55, tzinfo=UTC))  # before its window ended
        assert verdict() == (False, [own])
        # the empty store (Perth, UTC+8: its day ends at 16:00Z) has no order in either window: its
        # own complete listings of them are needed all the same
        perth_ends = datetime(2026, 11, 19, 16, tzinfo=UTC)
        for window in (before, own):
            loads(window, perth_ends + timedelta(minutes=1), empty)
        assert verdict(empty) == (False, [before])  # 1 minute after the day: its last records unsettled
        for window in (before, own):
            loads(window, perth_ends + timedelta(minutes=5), empty)
        assert verdict(empty) == (True, [before, own])
        loads(own, perth_ends - timedelta(minutes=1), empty)
        assert verdict(empty) == (False, [before])
        loads(own, perth_ends + timedelta(minutes=5), empty)
        conn.execute(  # its listing of the earlier window failed: never completely listed
            "update taptouch.listing_proofs set complete = false, covered_from = null, failure = 'failed'"
            ' where store_id = %s and "window" = %s',
            (empty, before),
        )
        assert verdict(empty) == (False, [own])


def test_the_docs_example_queries_run_and_count_complete_days_only(loaded):
    """Every query of docs/analytics.md runs on a loaded warehouse; the first counts at most the 7
    complete business dates before today per store of an account (never 8, never a partial day)."""
    import re

    _, conn = loaded
    queries = re.findall(r"```sql\n(.*?)```", (ROOT / "docs" / "analytics.md").read_text(), re.S)
    assert len(queries) >= 5
    results = [conn.execute(q).fetchall() for q in queries]
    assert results[0] and all(0 < row[4] <= 7 for row in results[0])  # days
    assert len({(row[0], row[1]) for row in results[0]}) == len(results[0])  # one row per account and store
