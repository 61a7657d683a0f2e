"""Settings read from the environment, with their defaults. Every one is documented in the README.

| variable                     | default                    | meaning                                          |
|------------------------------|----------------------------|--------------------------------------------------|
| TAPTOUCH_CLIENT_ID           | (required)                 | OAuth client id                                  |
| TAPTOUCH_CLIENT_SECRET       | (required)                 | OAuth client secret; never logged                |
| TAPTOUCH_BASE_URL            | https://api.taptouch.net   | API base URL (https; http only for loopback)     |
| TAPTOUCH_DATABASE_URL        | embedded PostgreSQL        | postgresql:// URL of the warehouse               |
| TAPTOUCH_PGDATA              | .taptouch/pgdata           | data directory of the embedded PostgreSQL        |
| TAPTOUCH_START_DATE          | 2024-01-01                 | first daily partition of `orders` (UTC day)      |
| TAPTOUCH_STORE_WORKERS       | 4                          | stores fetched in parallel within one run        |
| TAPTOUCH_REQUESTS_PER_SECOND | 10                         | client-side request-rate limit per run           |
| TAPTOUCH_PAGE_SIZE           | 100                        | records per API page (1..500)                    |
| TAPTOUCH_BATCH_SIZE          | 5000                       | orders per COPY batch (bounds memory)            |
| TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN | 10                 | partitions one backfill run loads                |
"""

from __future__ import annotations

import os
from datetime import date

DEFAULT_START_DATE = "2024-01-01"


def _int(name: str, default: int, lo: int = 1, hi: int = 10_000) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def start_date() -> str:
    raw = os.environ.get("TAPTOUCH_START_DATE", "").strip() or DEFAULT_START_DATE
    try:
        date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"TAPTOUCH_START_DATE must be a date like 2026-01-01, got {raw!r}") from None
    return raw


def store_workers() -> int:
    return _int("TAPTOUCH_STORE_WORKERS", 4, 1, 64)


def requests_per_second() -> float | None:
    raw = os.environ.get("TAPTOUCH_REQUESTS_PER_SECOND", "").strip()
    if not raw:
        return 10.0
    value = float(raw)
    return None if value <= 0 else value


def page_size() -> int:
    return _int("TAPTOUCH_PAGE_SIZE", 100, 1, 500)


def batch_size() -> int:
    return _int("TAPTOUCH_BATCH_SIZE", 5000, 1, 1_000_000)


def backfill_partitions_per_run() -> int:
    return _int("TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN", 10, 1, 366)
