"""The code location as Dagster loads it: definitions, the asset graph it declares, who writes
which table, the settings it reads and when, and what a run does with errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pipelines import settings
from pipelines.assets.taptouch import step_errors
from pipelines.definitions import defs
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchAPIError, TaptouchConfigError, TaptouchResource, jsonutil
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support import truth

stores, orders, inventory = (defs.get_assets_def(key) for key in ("stores", "orders", "inventory"))  # as registered

ROOT = Path(__file__).resolve().parents[2]
END = date(2026, 11, 27)
DAY = "2026-11-25"

# What each analytics view reads, written out: the asset that writes each taptouch table it
# names, and the views it builds on.
VIEW_UPSTREAMS = {
    "load_coverage": {"orders", "stores"},  # business_day_coverage (kept from listing_proofs, written by orders)
    "business_days": {"orders", "stores", "inventory", "load_coverage"},  # the days of orders and snapshots
    "sales_orders": {"orders", "stores", "load_coverage"},
    # the five sales views read the per-store-day aggregates (taptouch.sales_*, written by orders)
    "daily_store_sales": {"orders", "stores", "load_coverage"},
    "hourly_sales": {"orders", "stores", "load_coverage"},
    "channel_mix": {"orders", "stores", "load_coverage"},
    "payment_mix": {"orders", "stores", "load_coverage"},
    "product_sales": {"orders", "stores", "load_coverage"},
    "inventory_status": {"sales_orders", "orders", "stores", "inventory"},
    "inventory_history": {"sales_orders", "orders", "stores", "inventory", "load_coverage"},
    "order_changes": {"orders", "stores", "load_coverage"},  # order_history (written by orders), orders
    "daily_restatements": {"orders", "stores", "load_coverage"},  # order_history, orders, refunds
}


@pytest.fixture
def no_credentials(monkeypatch):
    for name in ("TAPTOUCH_CLIENT_ID", "TAPTOUCH_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------------ loading


def test_definitions_load_and_everything_resolves_without_credentials(no_credentials):
    repo = defs.get_repository_def()
    for name in repo.job_names:
        repo.get_job(name)
    assert {s.name for s in repo.schedule_defs} == {
        "orders_hourly",
        "stores_daily",
        "inventory_hourly",
        "orders_reconcile_daily",
        "merchant_tokens_keepalive",
    }
    assert all(s.execution_timezone == "UTC" for s in repo.schedule_defs)
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"stores", "orders", "inventory", "order_deletions", *VIEW_UPSTREAMS}
    for key in repo.asset_graph.get_all_asset_keys():
        assert repo.assets_defs_by_key[key].descriptions_by_key[key]
    orders_def = repo.assets_defs_by_key[dg.AssetKey("orders")]
    assert orders_def.partitions_def is not None and orders_def.backfill_policy is not None
    assert {k.name for k in repo.asset_graph.asset_check_keys} == {
        "no_quarantined_records",
        "order_arithmetic",
        "no_future_dated_orders",
        "money_reconciliation",
        "orders_proven",
        "sales_aggregates_exact",
        "freshness_check",
        "schema_drift",
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["dagster", "definitions", "validate", "-m", "pipelines.definitions"],
        ["dg", "check", "defs"],
    ],
)
def test_command_line_validation_passes_without_credentials(command):
    env = {k: v for k, v in os.environ.items() if k not in ("TAPTOUCH_CLIENT_ID", "TAPTOUCH_CLIENT_SECRET")}
    exe = str(Path(sys.executable).with_name(command[0]))
    proc = subprocess.run([exe, *command[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


# ------------------------------------------------------------------------------ the graph


def upstream(key: str) -> set[str]:
    graph = defs.get_repository_def().asset_graph
    return {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}


def test_loads_depend_on_no_other_asset():
    # orders and inventory read the API's store listing themselves: no dependency on a stores write
    assert upstream("stores") == set()
    assert upstream("orders") == set()
    assert upstream("inventory") == set()
    for key in ("orders", "inventory"):
        description = (
            defs.get_repository_def().assets_defs_by_key[dg.AssetKey(key)].descriptions_by_key[dg.AssetKey(key)]
        )
        assert "store listing" in description and "never writes taptouch.stores" in description


@pytest.mark.parametrize("view", sorted(VIEW_UPSTREAMS))
def test_each_view_depends_on_what_its_sql_reads(view):
    assert upstream(view) == VIEW_UPSTREAMS[view]


# ------------------------------------------------------------------------------ one writer per table


@pytest.fixture
def sandbox():
    sb = Sandbox(SandboxConfig(seed=11, stores=3, days=5, end_date=END, orders_per_day=30))
    with sb.serve() as url:
        sb.url = url
        yield sb


def resources(sb, db_url, **taptouch):
    return {
        "taptouch": TaptouchResource(
            client_id=sb.config.client_id,
            client_secret=sb.config.client_secret,
            base_url=sb.url,
            requests_per_second=0,
            **taptouch,
        ),
        "warehouse": PostgresResource(database_url=db_url),
    }


def count(db_url: str, table: str) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


def test_orders_and_inventory_load_on_a_fresh_warehouse_and_leave_stores_alone(sandbox, migrated_db):
    res = resources(sandbox, migrated_db)
    result = dg.materialize([orders], resources=res, partition_key=DAY)
    assert result.success
    want = truth.orders_updated_in_days(sandbox, [DAY])
    with psycopg.connect(migrated_db) as conn:
        got = dict(conn.execute("select order_id, business_date from taptouch.orders").fetchall())
    assert set(got) == set(want)
    tz = {s["id"]: s["timezone"] for s in sandbox.stores()}
    assert got == {oid: truth.business_date(o, tz[o["store_id"]]) for oid, o in want.items()}
    assert count(migrated_db, "taptouch.stores") == 0

    assert dg.materialize([inventory], resources=res).success
    expected_levels = sum(len(sandbox.inventory(s)) for s in sandbox.store_ids())
    assert count(migrated_db, "taptouch.inventory_levels") == expected_levels
    assert count(migrated_db, "taptouch.stores") == 0

    assert dg.materialize([stores], resources=res).success
    assert count(migrated_db, "taptouch.stores") == 3


def test_a_malformed_store_record_costs_only_that_store(sandbox, migrated_db):
    bad = sandbox.store_ids()[1]
    data = sandbox._data  # the sandbox serves the store listing from these records
    record = {**jsonutil.loads(data.stores[1].text), "timezone": "Mars/Olympus_Mons"}
    data.stores[1] = dataclasses.replace(data.stores[1], text=jsonutil.dumps(record))
    result = dg.materialize([orders], resources=resources(sandbox, migrated_db), partition_key=DAY)
    assert result.success
    md = result.asset_materializations_for_node("orders")[0].metadata
    assert md["stores_skipped"].value == 1 and md["skipped_store_records"].value == str(bad)
    assert md["stores_ok"].value == 2 and md["stores_failed"].value == 0
    with psycopg.connect(migrated_db) as conn:
        loaded = {r[0] for r in conn.execute("select distinct store_id from taptouch.orders")}
    assert loaded == set(sandbox.store_ids()) - {bad}


# ------------------------------------------------------------------------------ settings


def test_credentials_are_bound_with_env_vars_and_an_unset_one_is_named(no_credentials):
    taptouch = defs.resources["taptouch"]
    assert taptouch.client_id == dg.EnvVar("TAPTOUCH_CLIENT_ID")
    assert taptouch.client_secret == dg.EnvVar("TAPTOUCH_CLIENT_SECRET")
    job = defs.resolve_job_def("stores_job")
    with pytest.raises(dg.DagsterInvalidConfigError, match="TAPTOUCH_CLIENT_ID"):
        job.execute_in_process()


def test_tunables_are_resource_fields_read_at_run_start(monkeypatch):
    fields = defs.resolve_job_def("orders_job").run_config_schema.config_type.fields["resources"].config_type.fields
    taptouch = set(fields["taptouch"].config_type.fields["config"].config_type.fields)
    warehouse = set(fields["warehouse"].config_type.fields["config"].config_type.fields)
    assert {"page_size", "requests_per_second", "store_workers", "timeout", "max_retries"} <= taptouch
    assert "batch_size" in warehouse

    unset, db = TaptouchResource(), PostgresResource()
    monkeypatch.setenv("TAPTOUCH_CLIENT_ID", "id-1")
    monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", "secret-1")
    monkeypatch.setenv("TAPTOUCH_PAGE_SIZE", "7")
    monkeypatch.setenv("TAPTOUCH_STORE_WORKERS", "2")
    monkeypatch.setenv("TAPTOUCH_REQUESTS_PER_SECOND", "0")
    monkeypatch.setenv("TAPTOUCH_BATCH_SIZE", "300")
    monkeypatch.setenv("TAPTOUCH_LOOKBACK", "1h")
    monkeypatch.setenv("TAPTOUCH_RECONCILE_DAYS", "3")
    monkeypatch.setenv("TAPTOUCH_RESTORE_DAYS", "90")
    resolved, run = settings.for_run(unset, db)  # the variables as they are now, not at import
    assert (resolved.page_size, resolved.store_workers, resolved.requests_per_second, run.batch_size) == (
        7,
        2,
        0.0,
        300,
    )
    assert (run.page_size, run.store_workers, run.requests_per_second) == (7, 2, 0.0)
    assert (run.lookback, run.reconcile_days, run.reconcile_confirm_s) == (timedelta(hours=1), 3, 3600)
    assert run.restore_days == 90
    assert (resolved.client_id, resolved.client_secret) == ("id-1", "secret-1")  # read once, into the fields
    monkeypatch.setenv("TAPTOUCH_CLIENT_ID", "changed mid-run")
    assert resolved.resolved()[0] == "id-1"
    resolved, run = settings.for_run(TaptouchResource(page_size=50, store_workers=1), PostgresResource(batch_size=9))
    assert (resolved.page_size, resolved.store_workers, run.batch_size) == (50, 1, 9)  # a field set wins
    monkeypatch.setenv("TAPTOUCH_PAGE_SIZE", "501")
    with pytest.raises(ValueError, match="TAPTOUCH_PAGE_SIZE"):
        settings.for_run(unset, db)


def test_tunables_from_the_launchpad_reach_the_run(sandbox, migrated_db, monkeypatch):
    """The code location's own resources (credentials from the variables) with run config as the
    launchpad sends it. Dagster builds a resource given run config from that config alone, so the
    fields bound in code come back from the same variables."""
    monkeypatch.setenv("TAPTOUCH_CLIENT_ID", sandbox.config.client_id)
    monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", sandbox.config.client_secret)
    monkeypatch.setenv("TAPTOUCH_BASE_URL", sandbox.url)
    monkeypatch.setenv("TAPTOUCH_DATABASE_URL", migrated_db)
    monkeypatch.setenv("TAPTOUCH_PAGE_SIZE", "500")  # the launchpad's value wins over the variable
    orders_per_store = [
        len([o for o in truth.orders_updated_in_days(sandbox, [DAY]).values() if o["store_id"] == s])
        for s in sandbox.store_ids()
    ]
    run_config = {
        "resources": {
            "taptouch": {"config": {"page_size": 5, "requests_per_second": 0}},
            "warehouse": {"config": {"batch_size": 7}},
        }
    }
    result = defs.resolve_job_def("orders_job").execute_in_process(run_config=run_config, partition_key=DAY)
    assert result.success
    pages = result.asset_materializations_for_node("orders")[0].metadata["pages"].value
    # pages of 5: keyset pages each start at the last instant read (inclusive), so a page after the
    # first repeats at least one record; the listing stops at the first short page
    assert sum(n // 5 + 1 for n in orders_per_store) <= pages <= sum(n // 3 + 1 for n in orders_per_store)
    assert count(migrated_db, "taptouch.orders") == sum(orders_per_store)


# ------------------------------------------------------------------------------ errors and retries


def test_only_curable_errors_reach_the_retry_policy():
    curable = [
        TaptouchAPIError(status=503, path="/x"),
        TaptouchAPIError(status=429, path="/x"),
        TaptouchAPIError(status=0, path="/x"),
        psycopg.OperationalError("server closed the connection"),
    ]
    for exc in curable:
        with pytest.raises(type(exc)), step_errors():
            raise exc
    permanent = [
        TaptouchAPIError(status=403, path="/x", code="store_forbidden"),
        TaptouchConfigError("TAPTOUCH_CLIENT_ID is not set"),
        psycopg.errors.UndefinedTable("no table"),
        RuntimeError("a bug"),
    ]
    for exc in permanent:
        with pytest.raises(dg.Failure) as failed, step_errors():
            raise exc
        assert failed.value.allow_retries is False


def test_a_permanent_error_fails_the_step_once(migrated_db, monkeypatch):
    monkeypatch.setenv("TAPTOUCH_PAGE_SIZE", "not-a-number")
    res = {
        "taptouch": TaptouchResource(client_id="c", client_secret="s", base_url="http://127.0.0.1:9"),
        "warehouse": PostgresResource(database_url=migrated_db),
    }
    result = dg.materialize([orders], resources=res, partition_key=DAY, raise_on_error=False)
    assert not result.success
    assert (
        "TAPTOUCH_PAGE_SIZE must be an integer" in result.failure_data_for_node("orders").user_failure_data.description
    )
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
