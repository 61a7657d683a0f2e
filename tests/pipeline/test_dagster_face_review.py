"""A hostile review of the Dagster face across runs: partitions, schedules, backfills, retries and
run configuration. Each test shows one defect with real behaviour."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import psycopg
import pytest

from pipelines.accounts import Account
from pipelines.definitions import account_definitions, defs
from pipelines.partitions import daily_partitions
from pipelines.warehouse import ownership
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchResource
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support import truth

orders_hourly = defs.get_schedule_def("orders_hourly")


def _tick(when: datetime):
    ctx = dg.build_schedule_context(scheduled_execution_time=when, repository_def=defs.get_repository_def())
    return orders_hourly.evaluate_tick(ctx)


@pytest.mark.parametrize("hour", [0, 1, 2, 3, 4])
def test_orders_hourly_on_the_first_partition_day_still_loads_today(hour):
    """On the partitions' first day (TAPTOUCH_START_DATE: a new deployment starts with today), the
    early ticks ask for yesterday too, which is no partition: the whole tick must not fail, and
    today's partition must still be requested."""
    first = daily_partitions.start.astimezone(UTC).replace(hour=hour, minute=5)
    result = _tick(first)  # raised DagsterUnknownPartitionError: no partition `2023-12-31`
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [first.date().isoformat()]
    # and the day after, yesterday (the first day) is loaded as usual
    later = _tick(first + timedelta(days=1))
    assert [r.partition_key for r in later.run_requests] == [
        first.date().isoformat(),
        (first + timedelta(days=1)).date().isoformat(),
    ]


# ------------------------------------------------------------------ run config: orders `lookback`


orders = defs.get_assets_def("orders")


@pytest.fixture
def sandbox():
    sb = Sandbox(SandboxConfig(seed=7, stores=2, days=3, end_date=date(2026, 11, 27), orders_per_day=10))
    with sb.serve() as url:
        sb.url = url
        yield sb


def _resources(sb, db_url):
    return {
        "taptouch": TaptouchResource(
            client_id=sb.config.client_id,
            client_secret=sb.config.client_secret,
            base_url=sb.url,
            requests_per_second=0,
        ),
        "warehouse": PostgresResource(database_url=db_url),
    }


@pytest.mark.postgres
def test_orders_config_lookback_in_seconds_as_the_docs_write_it(sandbox, migrated_db):
    """README / operating.md: the ``orders`` config ``lookback`` takes "seconds, or 5m, 1h" (e.g.
    ``300``). Written in the launchpad's YAML (``lookback: 60``) or the CLI's --config-json
    (``{"lookback": 60}``) seconds are a number, and the run must take them, as it takes ``"60"``."""
    result = dg.materialize(
        [orders],
        resources=_resources(sandbox, migrated_db),
        partition_key="2026-11-26",
        run_config={"ops": {"orders": {"config": {"lookback": 60}}}},
        raise_on_error=False,
    )  # failed: Invalid scalar at path root:ops:orders:config:lookback ... not valid for expected type "String"
    assert result.success
    with psycopg.connect(migrated_db) as conn:
        gaps = conn.execute(
            "select distinct extract(epoch from listed_at - settled_at)::int from taptouch.listing_proofs"
            " where \"window\" = '2026-11-26'"
        ).fetchall()
    # the run's lookback: its proofs let records settle 60 s (and the listing's start is floored, a
    # second or two), not the default 300
    assert len(gaps) == 1 and 60 <= gaps[0][0] < 120, gaps


# ------------------------------------------ deploying.md "Adding a merchant": a second account


@pytest.mark.postgres
def test_a_single_account_deployment_that_names_its_account_fails_until_its_stores_move(sandbox, migrated_db):
    """deploying.md, "Adding a merchant": a deployment that had one account names both when it adds
    the second, e.g. TAPTOUCH_ACCOUNTS=main,south with TAPTOUCH_MAIN_CLIENT_ID set to the old client
    id. The old stores belong to the unnamed account 'default', which no named account ever loads:
    ``main/orders`` skipped them all and succeeded, every check passing, nothing loaded, for ever.
    It fails now, unretried, naming the stores and ``move-store``; after the move it loads the day."""
    res = _resources(sandbox, migrated_db)
    instance = dg.DagsterInstance.ephemeral()
    stores = defs.get_assets_def("stores")
    assert dg.materialize([stores], resources=res, instance=instance).success
    assert dg.materialize([orders], resources=res, partition_key="2026-11-25", instance=instance).success

    main = Account("main")
    main_orders = account_definitions(main).get_assets_def(main.key("orders"))
    main_res = {"taptouch_main": res["taptouch"], "warehouse": res["warehouse"]}

    def run_main():
        return dg.materialize(
            [main_orders], resources=main_res, partition_key="2026-11-26", instance=instance, raise_on_error=False
        )

    result = run_main()  # succeeded with 0 of 14 orders loaded, both stores skipped as 'default''s
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    assert failure.user_failure_data is not None  # dg.Failure: not retried
    message = failure.user_failure_data.description or ""
    store_ids = sandbox.store_ids()
    assert f"store(s) {', '.join(map(str, store_ids))} belong to account 'default'" in message, message
    assert f"taptouch-sync move-store {store_ids[0]} main" in message, message

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        for sid in store_ids:
            ownership.move_store(conn, sid, "main")
    assert run_main().success
    want = truth.orders_updated_in_days(sandbox, ["2026-11-26"])
    with psycopg.connect(migrated_db) as conn:
        got = conn.execute(
            "select count(*), count(*) filter (where account = 'main') from taptouch.orders"
            " where updated_at >= '2026-11-26T00:00Z' and updated_at < '2026-11-27T00:00Z'"
        ).fetchone()
    assert len(want) > 0 and got == (len(want), len(want))
