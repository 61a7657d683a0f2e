"""The resources every asset uses, configured from the environment (see pipelines/settings.py)."""

from taptouch_resource import TaptouchResource

from . import settings
from .warehouse.resource import PostgresResource

# Credentials and base URL are read from TAPTOUCH_CLIENT_ID / TAPTOUCH_CLIENT_SECRET /
# TAPTOUCH_BASE_URL when a client is made (a missing one fails the first step, naming the variable).
taptouch = TaptouchResource(requests_per_second=settings.requests_per_second(), page_size=settings.page_size())
# TAPTOUCH_DATABASE_URL, else the embedded PostgreSQL.
warehouse = PostgresResource()

RESOURCES = {"taptouch": taptouch, "warehouse": warehouse}
