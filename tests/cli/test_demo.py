"""The README's first command: ``taptouch-sync demo`` loads everything, and running it again is safe
(the second run reports 0 inserted, 0 updated in its summary, not only in the log)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _demo(env: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "demo", "--days", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_the_demo_loads_and_a_rerun_changes_nothing(database_url, tmp_path):
    env = {
        **os.environ,
        "TAPTOUCH_DATABASE_URL": database_url,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(ROOT),
    }
    for name in ("TAPTOUCH_CLIENT_ID", "TAPTOUCH_CLIENT_SECRET", "TAPTOUCH_BASE_URL", "TAPTOUCH_ACCOUNTS"):
        env.pop(name, None)
    first = re.search(r"This run's orders: (\d+) inserted, (\d+) updated", _demo(env))
    assert first and int(first.group(1)) > 0
    with psycopg.connect(database_url) as conn:
        orders = conn.execute("select count(*) from taptouch.orders").fetchone()[0]
    assert orders == int(first.group(1))
    second = _demo(env)
    assert "This run's orders: 0 inserted, 0 updated" in second
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select count(*) from taptouch.orders").fetchone()[0] == orders


@pytest.mark.postgres
def test_the_demo_refuses_a_warehouse_holding_a_real_merchants_stores(database_url, tmp_path):
    """TAPTOUCH_DATABASE_URL exported for production (the README's set-up), then the demo run: it
    would upsert the sandbox's fake stores and orders over the real rows of the same store ids. It
    refuses before writing anything, saying what to do (before, it overwrote store 7101 and
    announced "embedded PostgreSQL")."""
    from pipelines.warehouse.migrations import migrate

    migrate(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into taptouch.stores (store_id, name, status, timezone, currency, updated_at, raw) "
            "values (7101, 'Real Production Cafe', 'active', 'Australia/Sydney', 'AUD', '2000-01-01', '{}')"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPTOUCH_") or k == "TAPTOUCH_PGDATA"}
    env.update({"TAPTOUCH_DATABASE_URL": database_url, "DAGSTER_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)})
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "demo", "--days", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "7101 ('Real Production Cafe')" in done.stderr and "Unset TAPTOUCH_DATABASE_URL" in done.stderr
    assert "PostgreSQL at $TAPTOUCH_DATABASE_URL" in done.stdout
    with psycopg.connect(database_url) as conn:
        assert conn.execute("select store_id, name from taptouch.stores").fetchall() == [(7101, "Real Production Cafe")]
        assert conn.execute("select count(*) from taptouch.orders").fetchone() == (0,)


# ------------------------------------------------------------------------------ the two demos kept apart
def test_the_two_account_demo_has_an_instance_of_its_own(monkeypatch, tmp_path):
    """Without DAGSTER_HOME, `demo --accounts` (and `ui --sandbox --accounts`) use
    .taptouch/dagster_home_accounts, never the single-account demo's .taptouch/dagster_home; a
    DAGSTER_HOME that is set is used as it is."""
    from pipelines.demo import use_accounts_demo_home
    from pipelines.warehouse.db import state_dir

    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    use_accounts_demo_home()
    assert os.environ["DAGSTER_HOME"] == str(state_dir() / "dagster_home_accounts")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    use_accounts_demo_home()
    assert os.environ["DAGSTER_HOME"] == str(tmp_path)


@pytest.mark.postgres
def test_the_two_account_demo_has_a_warehouse_of_its_own(database_url):
    """On the server of the single-account demo's database, the two-account demo gets the database
    '<name>_accounts', created once: its stores and views never mix into the other's."""
    from pipelines.demo import accounts_demo_database

    with psycopg.connect(database_url) as conn:
        name = conn.execute("select current_database()").fetchone()[0]
    url = accounts_demo_database(database_url)
    try:
        assert accounts_demo_database(database_url) == url  # created once, then reused
        with psycopg.connect(url) as conn:
            assert conn.execute("select current_database()").fetchone()[0] == f"{name}_accounts"
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{name}_accounts"')


def test_the_single_account_demo_forgets_what_an_older_accounts_demo_left_in_its_instance(tmp_path):
    """north/* and south/* assets that the loaded definitions lack are wiped from the instance;
    the definitions' own assets and other assets stay."""
    import dagster as dg

    from pipelines.demo import forget_other_demo_assets

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        for key in ("north/orders", "south/stores", "orders", "elsewhere/thing"):
            instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey.from_user_string(key)))
        defined = {dg.AssetKey("orders")}
        assert forget_other_demo_assets(instance, defined) == ["north/orders", "south/stores"]
        assert {k.to_user_string() for k in instance.all_asset_keys()} == {"orders", "elsewhere/thing"}
        assert forget_other_demo_assets(instance, defined) == []


@pytest.mark.postgres
def test_both_demos_may_share_a_warehouse_and_a_real_store_is_refused(migrated_db):
    """The guard accepts every store either demo's sandbox serves (the two-account demo's stores
    are disjoint from the demo's, so both may share a warehouse) and refuses one it does not."""
    from pipelines.demo import demo_stores, refuse_a_real_warehouse
    from pipelines.warehouse.db import WarehouseConfigError
    from pipelines.warehouse.loader import load_stores

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, demo_stores())
        assert conn.execute("select count(*) from taptouch.stores").fetchone() == (8,)
    refuse_a_real_warehouse(migrated_db, demo_stores())  # nothing raised
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute("update taptouch.stores set name = 'Real Cafe' where store_id = 8101")
    with pytest.raises(WarehouseConfigError, match=r"8101 \('Real Cafe'\)"):
        refuse_a_real_warehouse(migrated_db, demo_stores())
