"""The Dagster code location: ``dagster dev -m pipelines.definitions`` (or workspace.yaml, or ``dg``).

The one place that picks the resources; credentials are bound with ``dg.EnvVar``. Every account's
definitions come from one factory, :func:`account_definitions` (called once without a prefix when
``TAPTOUCH_ACCOUNTS`` is unset); the analytics views, the alert sensors and the warehouse are shared
by all. Settings: the README; accounts: docs/operating.md, "Several accounts".
"""

import dagster as dg

from . import accounts as accounts_config
from . import alerts, checks, reconcile
from .accounts import Account
from .assets.analytics import make_analytics_assets
from .assets.taptouch import taptouch_assets
from .executor import default_executor
from .schedules import account_schedules
from .warehouse.resource import PostgresResource

ACCOUNTS: list[Account] = accounts_config.configured()  # read when the definitions load


def account_definitions(account: Account) -> dg.Definitions:
    """Everything of one Taptouch account: its assets (``stores``, ``orders``, ``inventory``,
    ``order_deletions``) under its key prefix, their checks, jobs and schedules (with the
    merchant-token keep-alive of its client id), the freshness sensor, and its
    ``TaptouchResource``. Each asset runs in the account's own pool with its own client id, so its
    request budget and tokens are its own, and a failure stays in its own steps."""
    deletions, reconcile_job, reconcile_schedule = reconcile.deletions_definitions(account)
    schedules, jobs = account_schedules(account)
    asset_checks, sensors = checks.account_checks(account)
    return dg.Definitions(
        assets=[*taptouch_assets(account), deletions],
        asset_checks=asset_checks,  # freshness and schema drift
        jobs=[*jobs, reconcile_job],
        schedules=[*schedules, reconcile_schedule],
        sensors=sensors,
        # TAPTOUCH_BASE_URL (an account's TAPTOUCH_<NAME>_BASE_URL) is read when a run starts
        resources={account.resource_key: account.resource()},
    )


# TAPTOUCH_DATABASE_URL, else the embedded PostgreSQL: one warehouse for every account.
WAREHOUSE = PostgresResource()

# Re-applies an analytics view when it is missing, its SQL changed or a table it reads was loaded
# (each view's automation condition, pipelines/warehouse/schema.py). Running by default: with the
# daemon up, nothing has to be switched on for the views to follow the loads.
views_automation = dg.AutomationConditionSensorDefinition(
    "analytics_views_automation",
    target=dg.AssetSelection.groups("analytics"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-applies analytics views whose SQL changed or whose tables were loaded.",
)


def shared_definitions(accounts: list[Account]) -> dg.Definitions:
    """What every account shares: the analytics views (they read every account's tables), the alert
    sensors, the views' automation sensor, the warehouse and the executor (:mod:`pipelines.executor`)."""
    return dg.Definitions(
        assets=make_analytics_assets(accounts),
        sensors=[*alerts.sensors, views_automation],
        resources={"warehouse": WAREHOUSE},
        executor=default_executor,  # Dagster's default, its step processes forked from one server per run
    )


defs = dg.Definitions.merge(*(account_definitions(account) for account in ACCOUNTS), shared_definitions(ACCOUNTS))
# Every resource by key: "taptouch" (or "taptouch_<name>" per account) and "warehouse".
RESOURCES = dict(defs.resources or {})
