"""The Dagster code location: ``dagster dev -m pipelines.definitions`` (or workspace.yaml, or ``dg``).

The one place that picks the resources. The credentials are bound with ``dg.EnvVar``: Dagster reads
them when a run starts and never stores them in run config; a run launched without one fails before
its first step with an error naming the variable. Every other setting is read when a run starts
(``pipelines.settings``), except the two the definitions need to load (the ``orders`` partitions).
"""

import dagster as dg

from taptouch_resource import TaptouchResource

from .assets.analytics import analytics_assets
from . import alerts, checks, reconcile
from .assets.taptouch import inventory, orders, stores
from .schedules import jobs, schedules
from .warehouse.resource import PostgresResource

RESOURCES = {
    # TAPTOUCH_BASE_URL and TAPTOUCH_MERCHANT are read by the resource when a client is made.
    "taptouch": TaptouchResource(client_id=dg.EnvVar("TAPTOUCH_CLIENT_ID"),
                                 client_secret=dg.EnvVar("TAPTOUCH_CLIENT_SECRET")),
    # TAPTOUCH_DATABASE_URL, else the embedded PostgreSQL.
    "warehouse": PostgresResource(),
}

# Re-applies an analytics view when it is missing, its SQL changed or a table it reads was loaded
# (each view's automation condition, pipelines/warehouse/schema.py). Running by default: with the
# daemon up, nothing has to be switched on for the views to follow the loads.
views_automation = dg.AutomationConditionSensorDefinition(
    "analytics_views_automation", target=dg.AssetSelection.groups("analytics"),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Re-applies analytics views whose SQL changed or whose tables were loaded.",
)

defs = dg.Definitions(
    assets=[stores, orders, inventory, *analytics_assets, reconcile.order_deletions],
    asset_checks=checks.asset_checks,  # freshness and schema drift
    jobs=[*jobs, reconcile.reconcile_job],
    schedules=[*schedules, reconcile.orders_reconcile_daily],
    sensors=[*alerts.sensors, *checks.sensors, views_automation],
    resources=RESOURCES,
)
