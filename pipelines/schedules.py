"""Schedules. Every cron runs in UTC (``execution_timezone="UTC"``) because the ``orders``
partitions are UTC days; the times below are UTC.

| schedule           | cron (UTC)     | what it runs                                                        |
|--------------------|----------------|---------------------------------------------------------------------|
| orders_hourly      | 5 * * * *      | today's orders partition, incrementally (from its high-water mark); |
|                    |                | yesterday's too during 00:00-03:59 UTC (late edits around midnight) |
|                    |                | and once in full at 04:05 (tag taptouch/full_refresh): a record that |
|                    |                | reached the API later than TAPTOUCH_LOOKBACK is caught within a day |
| stores_daily       | 0 2 * * *      | stores                                                              |
| inventory_hourly   | 20 * * * *     | inventory (levels and today's snapshot)                             |
| merchant_tokens_   | 40 3 * * *     | rotate stored merchant refresh tokens with < 3 of their 4 days left |
|   keepalive        |                | (pipelines/tokens.py)                                               |
"""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from .settings import FULL_REFRESH_TAG
from .tokens import merchant_tokens_keepalive_job


LATE_EDIT_HOURS = 4  # during the first hours of a UTC day, yesterday is loaded again too
FULL_REFRESH_HOUR = LATE_EDIT_HOURS  # then, once the day has closed, yesterday is loaded once in full

orders_job = dg.define_asset_job("orders_job", selection=dg.AssetSelection.assets("orders"),
                                 description="Load orders for one daily partition (UTC day).")
stores_job = dg.define_asset_job("stores_job", selection=dg.AssetSelection.assets("stores"))
inventory_job = dg.define_asset_job("inventory_job", selection=dg.AssetSelection.assets("inventory"))


@dg.schedule(job=orders_job, cron_schedule="5 * * * *", execution_timezone="UTC",
             description="Hourly: today's orders partition from its high-water mark; yesterday's too in the first "
                         "hours of a UTC day, then once in full.")
def orders_hourly(context: dg.ScheduleEvaluationContext):
    now = context.scheduled_execution_time
    yesterday = (now - timedelta(days=1)).date().isoformat()
    if now.hour < LATE_EDIT_HOURS:
        yield _orders_run(yesterday, now, full=False)
    elif now.hour == FULL_REFRESH_HOUR:
        yield _orders_run(yesterday, now, full=True)
    yield _orders_run(now.date().isoformat(), now, full=False)


def _orders_run(key: str, now, *, full: bool) -> dg.RunRequest:
    tags = {FULL_REFRESH_TAG: "true"} if full else {}
    return dg.RunRequest(run_key=f"orders-{key}-{now:%Y%m%dT%H%M}{'-full' if full else ''}", partition_key=key,
                         tags=tags)


stores_daily = dg.ScheduleDefinition(name="stores_daily", job=stores_job, cron_schedule="0 2 * * *",
                                     execution_timezone="UTC", description="Daily at 02:00 UTC: stores.")
inventory_hourly = dg.ScheduleDefinition(name="inventory_hourly", job=inventory_job, cron_schedule="20 * * * *",
                                         execution_timezone="UTC", description="Hourly at :20 UTC: inventory.")

merchant_tokens_keepalive = dg.ScheduleDefinition(
    name="merchant_tokens_keepalive", job=merchant_tokens_keepalive_job, cron_schedule="40 3 * * *",
    execution_timezone="UTC", description="Daily at 03:40 UTC: keep merchant refresh tokens (valid 4 days) alive.")

# Freshness of orders: pipelines/checks.py (freshness_check + freshness_checks_sensor replace orders_freshness).
schedules = [orders_hourly, stores_daily, inventory_hourly, merchant_tokens_keepalive]
jobs = [orders_job, stores_job, inventory_job, merchant_tokens_keepalive_job]
