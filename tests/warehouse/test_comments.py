"""PostgreSQL comments: every schema, table, view and column the project creates carries a
``COMMENT ON``, and it is the same text as the Dagster ``dagster/column_schema`` description
(one source: pipelines/warehouse/catalog.py and the views' headers). Money views carry ``currency``."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from pipelines.assets.analytics import analytics_assets
from pipelines.definitions import defs
from pipelines.warehouse import catalog
from pipelines.warehouse.migrations import migrate
from pipelines.warehouse.schema import table_schema, warehouse_tables
from pipelines.warehouse.views import apply_views, view_names
from tests.warehouse.test_analytics import load_sandbox, make_sandbox

SCHEMAS = ("taptouch", "analytics", "taptouch_meta", "taptouch_auth")


def missing_comments(conn: psycopg.Connection) -> list[str]:
    """Every schema, table, view and column of SCHEMAS without a comment."""
    missing = [
        s
        for (s,) in conn.execute(
            "select nspname from pg_namespace where nspname = any(%s) and obj_description(oid, 'pg_namespace') is null",
            (list(SCHEMAS),),
        ).fetchall()
    ]
    missing += [
        f"{s}.{t}"
        for s, t in conn.execute(
            "select table_schema, table_name from information_schema.tables where table_schema = any(%s)"
            " and obj_description(format('%%I.%%I', table_schema, table_name)::regclass, 'pg_class') is null",
            (list(SCHEMAS),),
        ).fetchall()
    ]
    missing += [
        f"{s}.{t}.{c}"
        for s, t, c in conn.execute(
            """
        select cols.table_schema, cols.table_name, cols.column_name
        from information_schema.columns as cols
        join pg_attribute as att
          on att.attrelid = format('%%I.%%I', cols.table_schema, cols.table_name)::regclass
         and att.attname = cols.column_name
        where cols.table_schema = any(%s) and col_description(att.attrelid, att.attnum) is null
        """,
            (list(SCHEMAS),),
        ).fetchall()
    ]
    return missing


def db_comments(conn: psycopg.Connection, schema: str, relation: str) -> dict[str, str | None]:
    return dict(
        conn.execute(
            "select attname, col_description(attrelid, attnum) from pg_attribute"
            " where attrelid = %s::regclass and attnum > 0 and not attisdropped",
            (f"{schema}.{relation}",),
        ).fetchall()
    )


@pytest.fixture
def conn(migrated_db):
    with psycopg.connect(migrated_db, autocommit=True) as c:
        apply_views(c)
        yield c


def test_every_schema_table_view_and_column_has_a_comment(conn):
    assert missing_comments(conn) == []
    n = conn.execute(
        "select count(*) from information_schema.columns where table_schema = any(%s)", (list(SCHEMAS),)
    ).fetchone()[0]
    assert n > 200  # the check looked at the whole warehouse
    assert (
        conn.execute("select obj_description('analytics.daily_store_sales'::regclass, 'pg_class')")
        .fetchone()[0]
        .startswith("analytics.daily_store_sales: sales per store")
    )


def test_a_column_without_a_comment_is_found(conn):
    conn.execute("alter table taptouch.stores add column extra text")
    conn.execute("create view analytics.stray as select 1 as one")
    assert set(missing_comments(conn)) == {"taptouch.stores.extra", "analytics.stray", "analytics.stray.one"}


def test_comments_are_the_dagster_descriptions(conn):
    for qualified in warehouse_tables():
        schema, name = qualified.split(".")
        described = {c.name: c.description for c in table_schema(qualified).columns}
        assert described == db_comments(conn, schema, name), qualified
    repo = defs.get_repository_def()
    for key, asset in repo.assets_defs_by_key.items():
        md = asset.metadata_by_key.get(key, {})
        if not str(md.get("dagster/table_name", "")).startswith(("taptouch.", "analytics.")):
            continue
        schema, name = md["dagster/table_name"].split(".")
        got = db_comments(conn, schema, name)
        assert {c.name: c.description for c in md["dagster/column_schema"].columns} == got, key
    for asset in analytics_assets:
        name = asset.key.to_user_string()
        md = asset.metadata_by_key[asset.key]
        assert {c.name: c.description for c in md["dagster/column_schema"].columns} == db_comments(
            conn, "analytics", name
        )


def test_the_catalog_describes_every_migrated_column_and_nothing_else():
    for qualified, table in warehouse_tables().items():
        assert qualified in catalog.TABLES, f"{qualified}: add it to pipelines/warehouse/catalog.py TABLES"
        text, columns = catalog.TABLES[qualified]
        assert text
        assert list(columns) and set(columns) == set(table.columns), qualified
        assert all(columns.values()), qualified
    assert set(catalog.TABLES) - set(warehouse_tables()) == {"taptouch_meta.schema_migrations"}


def test_comments_come_back_after_a_view_is_recreated_and_a_comment_is_changed(conn, migrated_db):
    conn.execute("drop view analytics.sales_orders cascade")
    apply_views(conn, ["daily_store_sales"])  # recreates sales_orders under it
    conn.execute("comment on column taptouch.orders.total is 'wrong'")
    conn.execute("comment on table taptouch.stores is null")
    assert "taptouch.stores" in missing_comments(conn)
    assert migrate(migrated_db) == []  # nothing to migrate, comments are put right anyway
    apply_views(conn)
    assert missing_comments(conn) == []
    assert db_comments(conn, "taptouch", "orders")["total"] == catalog.column_text("taptouch.orders", "total")
    with conn.transaction():
        assert catalog.apply_comments(conn) == 0  # up to date: writes nothing


def test_a_replaced_view_keeps_its_comments(conn):
    apply_views(conn, ["sales_orders"])
    assert missing_comments(conn) == []


def test_money_views_carry_the_store_currency(make_database):
    url = make_database()
    migrate(url)
    sb = make_sandbox()
    with load_sandbox(url, sb) as conn:
        nzd = sb.store_ids()[0]
        conn.execute("update taptouch.stores set currency = 'NZD' where store_id = %s", (nzd,))
        money_views = [
            v
            for (v,) in conn.execute(
                "select distinct c.table_name from information_schema.columns c where c.table_schema = 'analytics'"
                " and c.data_type = 'numeric' and c.column_name <> 'store_id' and exists (select 1 from"
                " information_schema.columns m where m.table_schema = 'analytics' and m.table_name = c.table_name"
                " and m.column_name = 'currency')"
            ).fetchall()
        ]
        assert set(money_views) == set(view_names()) - {"business_days", "load_coverage"}  # the others hold money
        for view in money_views:
            cols = [
                c
                for (c,) in conn.execute(
                    "select column_name from information_schema.columns where table_schema = 'analytics'"
                    " and table_name = %s order by ordinal_position",
                    (view,),
                ).fetchall()
            ]
            # account and currency end the row; the dated views add day_complete after them
            assert cols[-2:] == ["account", "currency"] or cols[-3:] == ["account", "currency", "day_complete"], view
            rows = conn.execute(f"select store_id, currency from analytics.{view}").fetchall()
            assert rows, view
            assert {cur for sid, cur in rows if sid == nzd} == {"NZD"}, view
            assert {cur for sid, cur in rows if sid != nzd} == {"AUD"}, view
        # currency splits no group: one row per store-day still
        assert conn.execute(
            "select count(*) = count(distinct (store_id, business_date, account)) from analytics.daily_store_sales"
        ).fetchone()[0]


def test_asset_descriptions_match_view_comments():
    for name in view_names():
        text, columns = catalog.comments()[("analytics", name)]
        asset = next(a for a in analytics_assets if a.key == dg.AssetKey(name))
        assert asset.descriptions_by_key[asset.key] == text
        assert list(columns) == [c.name for c in asset.metadata_by_key[asset.key]["dagster/column_schema"].columns]
