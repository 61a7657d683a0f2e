"""Schema drift (fields in raw no column carries) and freshness through Dagster's machinery."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from pipelines.checks import DRIFT_CHECK, SHAPES, drift_checks, find_drift, freshness_checks
from pipelines.sync import sync_inventory, sync_stores
from pipelines.warehouse.loader import store_timezones
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Faults, Sandbox, SandboxConfig
from tests.support.windows import load_window


def _load(db_url: str, *, extra_fields: bool) -> Sandbox:
    today = datetime.now(UTC).date()
    sb = Sandbox(
        SandboxConfig(seed=4, stores=2, days=2, end_date=today, orders_per_day=10),
        faults=Faults(extra_fields=extra_fields),
    )
    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        sync_stores(client, conn)
        now = datetime.now(UTC)
        result = load_window(client, conn, "all", now - timedelta(days=3), now + timedelta(days=2))
        assert result.counts.inserted > 0 and not result.failures
        assert not sync_inventory(client, conn, timezones=store_timezones(conn)).failures
    return sb


def _run_drift_checks(db_url: str) -> dict[str, dg.AssetCheckEvaluation]:
    specs = [dg.AssetSpec(entity) for entity in SHAPES]
    result = dg.materialize(
        [*specs, *drift_checks],
        resources={"warehouse": PostgresResource(database_url=db_url)},
        selection=dg.AssetSelection.checks(*drift_checks),
    )
    assert result.success  # a drift never fails the run
    return {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}


def test_unknown_fields_are_listed_with_first_seen_and_an_example_and_warn(migrated_db):
    _load(migrated_db, extra_fields=True)
    evaluations = _run_drift_checks(migrated_db)
    assert set(evaluations) == {"stores", "orders", "inventory"}
    for entity, ev in evaluations.items():
        assert ev.check_name == DRIFT_CHECK
        assert not ev.passed and ev.severity == dg.AssetCheckSeverity.WARN
        fields = ev.metadata["fields"].value.split(", ")
        assert "x_loyalty_tier" in fields and "x_meta" in fields, entity
        assert "drift" in ev.metadata
    assert "items[].x_kitchen_station" in evaluations["orders"].metadata["fields"].value.split(", ")
    # nothing the columns carry is reported (customer.email is known and deliberately kept in raw only)
    assert evaluations["orders"].metadata["unknown_fields"].value == 3

    with psycopg.connect(migrated_db) as conn:
        rows, scanned = find_drift(conn, "orders")
        first_loaded = conn.execute("select min(loaded_at) from taptouch.orders").fetchone()[0]
    by_path = {r[0]: r for r in rows}
    path, first_seen, records, example = by_path["x_loyalty_tier"]
    assert first_seen == first_loaded and records == scanned
    assert example == '"gold"'
    assert by_path["items[].x_kitchen_station"][3] in ('"bar"', '"kitchen"')


def test_clean_records_pass(migrated_db):
    _load(migrated_db, extra_fields=False)
    evaluations = _run_drift_checks(migrated_db)
    assert all(ev.passed for ev in evaluations.values()), {k: v.metadata for k, v in evaluations.items()}


def test_freshness_check_replaces_the_schedule_and_fails_when_orders_are_stale():
    from pipelines.definitions import defs

    repo = defs.get_repository_def()
    assert "orders_freshness" not in {s.name for s in repo.schedule_defs}
    assert "freshness_checks_sensor" in {s.name for s in repo.sensor_defs}
    check_keys = {k for c in freshness_checks for k in c.check_keys}
    assert check_keys == {dg.AssetCheckKey(dg.AssetKey("orders"), "freshness_check")}
    assert check_keys <= repo.asset_graph.asset_check_keys

    orders = dg.AssetSpec("orders", partitions_def=dg.DailyPartitionsDefinition(start_date="2026-01-01"))
    with dg.instance_for_test() as instance:

        def evaluate() -> dg.AssetCheckEvaluation:
            result = dg.materialize(
                [orders, *freshness_checks], instance=instance, selection=dg.AssetSelection.checks(*freshness_checks)
            )
            return result.get_asset_check_evaluations()[0]

        instance.report_runless_asset_event(dg.AssetMaterialization("orders", partition="2026-11-02"))
        fresh = evaluate()
        assert fresh.passed
        # the same materialization three hours later: stale
        from dagster._core.definitions.asset_checks.asset_check_factories.freshness_checks import last_update

        later = datetime.now(UTC) + timedelta(hours=3)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(last_update, "get_current_timestamp", lambda: later.timestamp())
            stale = evaluate()
        assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN


def test_shapes_cover_every_field_the_loader_maps():
    """Every field the sandbox's clean records have is carried (or knowingly kept in raw)."""
    sb = Sandbox(SandboxConfig(seed=1, stores=1, days=1, end_date=date(2026, 11, 27), orders_per_day=30))
    sid = sb.store_ids()[0]
    from pipelines.checks import carried_paths

    def paths(rec: dict, shape) -> set[str]:
        out = set(rec)
        for obj in shape.objects:
            if isinstance(rec.get(obj), dict):
                out |= {f"{obj}.{k}" for k in rec[obj]}
        for arr in shape.arrays:
            for e in rec.get(arr) or []:
                out |= {f"{arr}[].{k}" for k in e}
        return out

    for entity, records in (
        ("stores", sb.stores()),
        ("orders", list(sb.orders(sid))),
        ("inventory", sb.inventory(sid)),
    ):
        carried = set(carried_paths(SHAPES[entity]))
        seen = set().union(*(paths(r, SHAPES[entity]) for r in records))
        assert seen <= carried, (entity, seen - carried)
