"""Schedules, every cron in UTC (``execution_timezone="UTC"``) because the ``orders`` partitions are
UTC days: ``orders_hourly`` (incremental, yesterday's once in full at 04:05), ``stores_daily``,
``inventory_hourly`` and ``merchant_tokens_keepalive``, each account's own copies from
:func:`account_schedules`. What each runs and when: docs/operating.md, "Assets, jobs, schedules".
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import dagster as dg

from .accounts import DEFAULT, Account
from .partitions import daily_partitions
from .settings import FULL_REFRESH_TAG
from .tokens import keepalive_job

if TYPE_CHECKING:  # what dg.define_asset_job returns (dagster exports no public name for it)
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

LATE_EDIT_HOURS = 4  # during the first hours of a UTC day, yesterday is loaded again too
FULL_REFRESH_HOUR = LATE_EDIT_HOURS  # then, once the day has closed, yesterday is loaded once in full


def account_schedules(
    account: Account = DEFAULT,
) -> tuple[list[dg.ScheduleDefinition], list[UnresolvedAssetJobDefinition | dg.JobDefinition]]:
    """The schedules and jobs of one account's ``stores``, ``orders`` and ``inventory``, named after
    it (``north_orders_hourly``, ``north_orders_job``; unprefixed for the single account)."""
    orders_job = dg.define_asset_job(
        account.named("orders_job"),
        selection=dg.AssetSelection.assets(account.key("orders")),
        description="Load orders for one daily partition (UTC day).",
    )
    stores_job = dg.define_asset_job(
        account.named("stores_job"), selection=dg.AssetSelection.assets(account.key("stores"))
    )
    inventory_job = dg.define_asset_job(
        account.named("inventory_job"), selection=dg.AssetSelection.assets(account.key("inventory"))
    )

    @dg.schedule(
        name=account.named("orders_hourly"),
        job=orders_job,
        cron_schedule="5 * * * *",
        execution_timezone="UTC",
        description="Hourly: today's orders partition from its high-water mark; yesterday's too in the first "
        "hours of a UTC day, then once in full.",
    )
    def orders_hourly(context: dg.ScheduleEvaluationContext):
        now = context.scheduled_execution_time
        yield from _yesterday_runs(now)
        yield _orders_run(now.date().isoformat(), now, full=False)

    stores_daily = dg.ScheduleDefinition(
        name=account.named("stores_daily"),
        job=stores_job,
        cron_schedule="0 2 * * *",
        execution_timezone="UTC",
        description="Daily at 02:00 UTC: stores.",
    )
    inventory_hourly = dg.ScheduleDefinition(
        name=account.named("inventory_hourly"),
        job=inventory_job,
        cron_schedule="20 * * * *",
        execution_timezone="UTC",
        description="Hourly at :20 UTC: inventory.",
    )
    keepalive_job_ = keepalive_job(account)
    keepalive = dg.ScheduleDefinition(
        name=account.named("merchant_tokens_keepalive"),
        job=keepalive_job_,
        cron_schedule="40 3 * * *",
        execution_timezone="UTC",
        description="Daily at 03:40 UTC: keep merchant refresh tokens (valid 4 days) alive.",
    )
    return (
        [orders_hourly, stores_daily, inventory_hourly, keepalive],
        [orders_job, stores_job, inventory_job, keepalive_job_],
    )


def _yesterday_runs(now) -> list[dg.RunRequest]:
    """Yesterday's run of the tick at ``now``: incremental in the first hours of a UTC day, then once
    in full. None on the first partition's day (TAPTOUCH_START_DATE): yesterday is no partition, and
    a request for it would fail the whole tick, today's run with it."""
    yesterday = (now - timedelta(days=1)).date().isoformat()
    if yesterday < daily_partitions.start.date().isoformat():
        return []
    if now.hour < LATE_EDIT_HOURS:
        return [_orders_run(yesterday, now, full=False)]
    if now.hour == FULL_REFRESH_HOUR:
        return [_orders_run(yesterday, now, full=True)]
    return []


def _orders_run(key: str, now, *, full: bool) -> dg.RunRequest:
    tags = {FULL_REFRESH_TAG: "true"} if full else {}
    return dg.RunRequest(
        run_key=f"orders-{key}-{now:%Y%m%dT%H%M}{'-full' if full else ''}", partition_key=key, tags=tags
    )


# Freshness of orders: pipelines/checks.py (freshness_check + freshness_checks_sensor replace orders_freshness).
