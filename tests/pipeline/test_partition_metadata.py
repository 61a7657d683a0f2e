"""A ranged run of ``orders`` (several partitions in one run, as a backfill's BackfillPolicy makes)
gives each partition's materialization that partition's own figures: its load's counts, its API
requests, and what the warehouse holds for its window (``dagster/row_count``, sales orders, net
sales); the run's totals go to the run's log and its run tag, and each step's API usage to
``taptouch_meta.api_usage`` (per day: ``taptouch_meta.api_requests_daily``)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pipelines.definitions import defs
from pipelines.settings import FULL_REFRESH_TAG
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchResource
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support import truth

pytestmark = pytest.mark.postgres

stores, orders = defs.get_assets_def("stores"), defs.get_assets_def("orders")
DAYS = ["2026-11-23", "2026-11-24", "2026-11-25"]
PAGE = 10
RANGE = {"dagster/asset_partition_range_start": DAYS[0], "dagster/asset_partition_range_end": DAYS[-1]}
TOTALS_TAG = "taptouch/orders_totals"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox():
    sb = Sandbox(SandboxConfig(seed=7, stores=3, days=6, end_date=date(2026, 11, 27), orders_per_day=40))
    with sb.serve() as url:
        sb.url = url
        yield sb


def resources(sb, db_url):
    return {
        "taptouch": TaptouchResource(
            client_id=sb.config.client_id,
            client_secret=sb.config.client_secret,
            base_url=sb.url,
            requests_per_second=0,
            page_size=PAGE,
        ),
        "warehouse": PostgresResource(database_url=db_url),
    }


def expected(sb, day: str) -> dict:
    """What the warehouse should hold for the window of ``day``, from the sandbox's own records."""
    window = truth.orders_updated_in_days(sb, [day]).values()
    sales = [o for o in window if o["status"] in truth.SALES_STATUSES]
    net = sum((o["total"] - sum((r["amount"] for r in o["refunds"]), Decimal("0.00")) for o in sales), Decimal("0.00"))
    return {"dagster/row_count": len(window), "sales_orders": len(sales), "net_sales_AUD": float(net)}


def partition_metadata(instance, run_id: str) -> dict[str, dict]:
    """Each partition's materialization of ``orders`` in the run ``run_id``, from the instance."""
    out = {}
    for day in DAYS:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("orders"), asset_partitions=[day]), limit=1
        ).records
        assert records and records[0].run_id == run_id, day
        out[day] = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    return out


def orders_requests(sb) -> int:
    """Requests the sandbox answered on the stores' orders paths since its stats were reset."""
    return sum(n for path, n in sb.stats.api_requests_by_path.items() if path.endswith("/orders"))


def warehouse_rows(db_url: str, day: str) -> int:
    start = datetime.fromisoformat(day + "T00:00:00+00:00")
    with psycopg.connect(db_url) as conn:
        return conn.execute(
            "select count(*) from taptouch.orders where updated_at >= %s and updated_at < %s",
            (start, start + timedelta(days=1)),
        ).fetchone()[0]


def test_each_partition_of_a_ranged_run_carries_its_own_figures(sandbox, migrated_db, tmp_path):
    want = {day: expected(sandbox, day) for day in DAYS}
    assert len({w["dagster/row_count"] for w in want.values()}) == 3  # the days differ, so must the figures
    res = resources(sandbox, migrated_db)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert dg.materialize([stores], resources=res, instance=instance).success
        sandbox.stats.reset()
        first = dg.materialize([orders], resources=res, instance=instance, tags=RANGE)
        assert first.success
        got = partition_metadata(instance, first.run_id)
        for day in DAYS:
            md = got[day]
            assert {k: md[k] for k in want[day]} == want[day], day
            assert md["dagster/row_count"] == warehouse_rows(migrated_db, day)
            # a fresh warehouse: the partition inserted exactly its own orders
            assert (md["inserted"], md["updated"], md["unchanged"], md["quarantined"]) == (
                want[day]["dagster/row_count"],
                0,
                0,
                0,
            )
            assert md["budget_wait_s"] <= md["duration_s"]
            assert "partitions" not in md and "token_requests" not in md  # run-level, not the partition's
        assert sum(md["api_requests"] for md in got.values()) == orders_requests(sandbox)
        assert len({md["api_requests"] for md in got.values()}) > 1
        # each partition's requests are those its window makes when loaded alone (from its start, as
        # in the first run), counted by the sandbox
        for day in DAYS:
            sandbox.stats.reset()
            alone = dg.materialize(
                [orders], resources=res, instance=instance, partition_key=day, tags={FULL_REFRESH_TAG: "true"}
            )
            assert alone.success
            assert got[day]["api_requests"] == orders_requests(sandbox), day

        # the run's totals: its tag (and log), the sums of its partitions
        inserted = sum(w["dagster/row_count"] for w in want.values())
        totals = instance.get_run_by_id(first.run_id).tags[TOTALS_TAG]
        assert totals.startswith(f"3 partition(s) {DAYS[0]}..{DAYS[-1]}: {inserted} inserted, 0 updated, 0 unchanged")
        logged = [e.user_message for e in instance.all_logs(first.run_id) if "run totals" in e.user_message]
        assert logged and totals in logged[0]

        # one order of the middle day voided: only that partition changes, by that order
        target = next(
            o
            for o in truth.orders_updated_in_days(sandbox, [DAYS[1]]).values()
            if o["status"] == "completed" and not o["refunds"]
        )
        day_end = datetime.fromisoformat(DAYS[1] + "T00:00:00+00:00") + timedelta(days=1)
        sandbox.edit_order(target["id"], status="voided", updated_at=day_end - timedelta(seconds=1))
        again = dg.materialize([orders], resources=res, instance=instance, tags=RANGE)
        assert again.success
        got = partition_metadata(instance, again.run_id)
        assert [got[d]["updated"] for d in DAYS] == [0, 1, 0]
        assert got[DAYS[1]]["sales_orders"] == want[DAYS[1]]["sales_orders"] - 1
        assert got[DAYS[1]]["net_sales_AUD"] == pytest.approx(want[DAYS[1]]["net_sales_AUD"] - float(target["total"]))
        for day in (DAYS[0], DAYS[2]):
            assert {k: got[day][k] for k in want[day]} == want[day]
        assert (
            instance.get_run_by_id(again.run_id)
            .tags[TOTALS_TAG]
            .startswith("3 partition(s) 2026-11-23..2026-11-25: 0 inserted, 1 updated")
        )

    # every step's API usage is recorded, and the daily view adds them up
    with psycopg.connect(migrated_db) as conn:
        steps = conn.execute(
            "select run_id, asset, account, requests, (started_at at time zone 'UTC')::date"
            " from taptouch_meta.api_usage order by id"
        ).fetchall()
        daily = conn.execute(requests_per_day_query()).fetchall()
    assert [(s[1], s[2]) for s in steps] == [("stores", "default")] + [("orders", "default")] * 5
    assert steps[1][0] == first.run_id
    assert steps[1][3] == sum(md["api_requests"] for md in partition_metadata_of(first).values()) + 1  # + listing
    assert [row[1:5] for row in daily] == [("default", sandbox.config.client_id, 6, sum(s[3] for s in steps))]
    assert daily[0][0] == steps[0][4] == steps[-1][4]  # one day


def requests_per_day_query() -> str:
    """The requests-per-day query docs/operating.md gives ("The budget's figures")."""
    text = (ROOT / "docs" / "operating.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "from taptouch_meta.api_usage" in b and "group by" in b]
    assert len(found) == 1, "docs/operating.md: one sql block with the requests per day"
    return found[0]


def partition_metadata_of(result) -> dict[str, dict]:
    """Each partition's metadata, from an in-process result's events."""
    return {
        e.partition: {k: v.value for k, v in e.metadata.items()}
        for e in result.asset_materializations_for_node("orders")
    }
