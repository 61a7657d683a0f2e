"""The Dagster code location: ``dagster dev -m pipelines.definitions`` (or via workspace.yaml)."""

import dagster as dg

from .assets.analytics import analytics_assets
from .assets.taptouch import inventory, orders, orders_fresh, stores
from .resources import RESOURCES
from .schedules import jobs, schedules

defs = dg.Definitions(
    assets=[stores, orders, inventory, *analytics_assets],
    asset_checks=[orders_fresh],
    jobs=jobs,
    schedules=schedules,
    resources=RESOURCES,
)
