"""Daily partitions of ``orders``: UTC days from TAPTOUCH_START_DATE, the current day included."""

import dagster as dg

from . import settings

daily_partitions = dg.DailyPartitionsDefinition(
    start_date=settings.start_date(),
    timezone="UTC",
    end_offset=1,  # end_offset=1: today is a partition too
)
