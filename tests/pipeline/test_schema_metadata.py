"""Table and view assets carry dagster/table_name and dagster/column_schema taken from the SQL files;
views know their version (code_version = hash of the SQL) and are re-applied when it or an upstream
changes (declarative automation)."""

from __future__ import annotations

import hashlib

import dagster as dg
import psycopg
import pytest

from pipelines.assets.analytics import analytics_assets
from pipelines.definitions import defs
from pipelines.warehouse.resource import PostgresResource
from pipelines.warehouse.schema import (
    VIEW_AUTOMATION,
    parse_migrations,
    view_code_version,
    view_columns,
    warehouse_tables,
)
from pipelines.warehouse.views import apply_views, view_names, view_sql

TABLE_ASSETS = {"stores": "taptouch.stores", "orders": "taptouch.orders", "inventory": "taptouch.inventory_levels"}


def _metadata(key: str) -> dict:
    repo = defs.get_repository_def()
    return repo.assets_defs_by_key[dg.AssetKey(key)].metadata_by_key[dg.AssetKey(key)]


def test_table_assets_carry_table_name_and_column_schema_from_the_migrations():
    for key, table in TABLE_ASSETS.items():
        md = _metadata(key)
        assert md["dagster/table_name"] == table
        cols = {c.name: c for c in md["dagster/column_schema"].columns}
        assert list(cols) == list(warehouse_tables()[table].columns)
    orders = {c.name: c for c in _metadata("orders")["dagster/column_schema"].columns}
    assert orders["order_id"].type == "bigint" and not orders["order_id"].constraints.nullable
    assert orders["total"].type == "numeric(12,2)" and orders["raw"].type == "jsonb"
    assert orders["deleted_at"].type == "timestamptz" and orders["deleted_at"].constraints.nullable  # 0007
    assert "taptouch.order_items columns" in _metadata("orders")
    assert "taptouch.inventory_snapshots columns" in _metadata("inventory")


def test_parser_follows_creates_alters_and_comments(tmp_path):
    (tmp_path / "0001_a.sql").write_text(
        "create table if not exists s.t (\n  id bigint primary key,\n  amount numeric(12, 2) not null, -- money\n"
        "  \"window\" text,\n  note text default 'a, b',\n  unique (amount, note)\n);\n"
        "create table if not exists s.u (a int, b int, primary key (a, b));\n"
    )
    (tmp_path / "0002_b.sql").write_text(
        "alter table s.t add column if not exists extra jsonb, add column more date;\n"
        "alter table s.t drop column if exists note;\n"
    )
    tables = parse_migrations(sorted(tmp_path.glob("*.sql")))
    t = tables["s.t"].columns
    assert list(t) == ["id", "amount", "window", "extra", "more"]
    assert t["amount"].type == "numeric(12, 2)" and not t["amount"].nullable and t["amount"].description == "money"
    assert t["id"].primary_key and t["window"].nullable
    assert all(c.primary_key for c in tables["s.u"].columns.values())


def test_parsed_schemas_match_the_database(migrated_db):
    with psycopg.connect(migrated_db) as conn:
        apply_views(conn)
        conn.commit()
        for qualified, table in warehouse_tables().items():
            schema, name = qualified.split(".")
            got = conn.execute(
                "select column_name from information_schema.columns where table_schema = %s and table_name = %s"
                " order by ordinal_position",
                (schema, name),
            ).fetchall()
            assert [r[0] for r in got] == list(table.columns), qualified
        for view in view_names():
            got = conn.execute(
                "select column_name from information_schema.columns where table_schema = 'analytics'"
                " and table_name = %s order by ordinal_position",
                (view,),
            ).fetchall()
            assert [r[0] for r in got] == [c for c, _ in view_columns(view)], view


def test_view_assets_know_their_version_schema_and_automation():
    for asset in analytics_assets:
        key = asset.key
        name = key.to_user_string()
        assert (
            asset.code_versions_by_key[key]
            == view_code_version(name)
            == hashlib.sha256(view_sql(name).encode()).hexdigest()[:12]
        )
        assert asset.automation_conditions_by_key[key] == VIEW_AUTOMATION
        md = asset.metadata_by_key[key]
        assert md["dagster/table_name"] == f"analytics.{name}"
        assert [c.name for c in md["dagster/column_schema"].columns] == [c for c, _ in view_columns(name)]
        assert all(c.description for c in md["dagster/column_schema"].columns)


def test_view_materialization_records_typed_columns(migrated_db):
    view = next(a for a in analytics_assets if a.key.to_user_string() == "sales_orders")
    result = dg.materialize([view], resources={"warehouse": PostgresResource(database_url=migrated_db)})
    md = result.asset_materializations_for_node("sales_orders")[0].metadata
    assert md["dagster/table_name"].value == "analytics.sales_orders"
    cols = {c.name: c for c in md["dagster/column_schema"].schema.columns}
    assert cols["order_id"].type == "bigint" and cols["business_date"].type == "date"
    assert cols["net_total"].type == "numeric" and cols["net_total"].description == "total − refunds"


def _view_defs(code_version: str) -> dg.Definitions:
    @dg.asset(
        key="daily_store_sales",
        deps=["orders", "stores"],
        code_version=code_version,
        automation_condition=VIEW_AUTOMATION,
    )
    def view() -> None: ...

    orders = dg.AssetSpec("orders", partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01"))
    return dg.Definitions(assets=[orders, dg.AssetSpec("stores"), view])


def test_a_view_is_reapplied_when_its_sql_or_an_upstream_changes():
    target = dg.AssetKey("daily_store_sales")
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(target))
        tick = dg.evaluate_automation_conditions(defs=_view_defs("v1"), instance=instance)
        tick = dg.evaluate_automation_conditions(defs=_view_defs("v1"), instance=instance, cursor=tick.cursor)
        assert tick.get_num_requested(target) == 0  # nothing changed

        instance.report_runless_asset_event(dg.AssetMaterialization("orders", partition="2026-11-02"))
        tick = dg.evaluate_automation_conditions(defs=_view_defs("v1"), instance=instance, cursor=tick.cursor)
        assert tick.get_num_requested(target) == 1  # an upstream was loaded
        instance.report_runless_asset_event(dg.AssetMaterialization(target))
        tick = dg.evaluate_automation_conditions(defs=_view_defs("v1"), instance=instance, cursor=tick.cursor)
        assert tick.get_num_requested(target) == 0

        tick = dg.evaluate_automation_conditions(defs=_view_defs("v2"), instance=instance, cursor=tick.cursor)
        assert tick.get_num_requested(target) == 1  # its SQL changed


@pytest.mark.parametrize("name", view_names())
def test_every_view_header_documents_its_columns(name):
    assert view_columns(name), f"sql/analytics/{name}.sql has no '-- Columns:' block"
