"""The code location's settings: the one place that reads the ``TAPTOUCH_*`` tunables.

Each is documented once, in the README's Settings table. They are read when a run starts (the
assets call :func:`for_run`), so a changed variable takes effect at the next run, except the two
that Dagster needs when it loads the definitions: ``TAPTOUCH_START_DATE`` (the ``orders``
partitions) and ``TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN`` (its backfill policy); reload the code
location after changing those.

A tunable set on a resource (in code, or per run in the launchpad) wins over its variable.
"""

from __future__ import annotations

import math
import os
from datetime import date, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the resources import dagster; this module stays importable without it
    from taptouch_resource import TaptouchResource

    from .accounts import Account

    from .warehouse.resource import PostgresResource

DEFAULT_START_DATE = "2024-01-01"
# A run with this tag set to "true" (or the orders asset's config full_refresh: true) loads its
# windows in full, ignoring their high-water marks. Backfills launched from the UI can carry it.
FULL_REFRESH_TAG = "taptouch/full_refresh"
DEFAULT_PAGE_SIZE = 100
DEFAULT_REQUESTS_PER_SECOND = 10.0
DEFAULT_STORE_WORKERS = 4
DEFAULT_BATCH_SIZE = 5000
DEFAULT_BACKFILL_PARTITIONS_PER_RUN = 10
# Replica lag of a read API is seconds; 5 minutes is ample and keeps an unchanged re-run of a busy
# day to one page per store (a cafe sells far fewer than a page of orders in 5 minutes).
DEFAULT_LOOKBACK = timedelta(minutes=5)


def _int(name: str, default: int, lo: int, hi: int, configured: int | None = None) -> int:
    """``configured`` when set, else the variable ``name``, else ``default``; checked to lie in [lo, hi]."""
    source, raw = (name, os.environ.get(name, "").strip()) if configured is None else ("the resource's value", configured)
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} ({source}) must be between {lo} and {hi}, got {value}")
    return value


def start_date() -> str:
    """First daily partition of ``orders`` (read when the definitions load)."""
    raw = os.environ.get("TAPTOUCH_START_DATE", "").strip() or DEFAULT_START_DATE
    try:
        date.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"TAPTOUCH_START_DATE must be a date like 2026-01-01, got {raw!r}") from None
    return raw


def backfill_partitions_per_run() -> int:
    """Partitions one backfill run of ``orders`` loads (read when the definitions load)."""
    return _int("TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN", DEFAULT_BACKFILL_PARTITIONS_PER_RUN, 1, 366)


def page_size(configured: int | None = None) -> int:
    return _int("TAPTOUCH_PAGE_SIZE", DEFAULT_PAGE_SIZE, 1, 500, configured)


def store_workers(configured: int | None = None) -> int:
    return _int("TAPTOUCH_STORE_WORKERS", DEFAULT_STORE_WORKERS, 1, 64, configured)


def batch_size(configured: int | None = None) -> int:
    return _int("TAPTOUCH_BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, 1_000_000, configured)


def requests_per_second(configured: float | None = None, *, variable: str = "TAPTOUCH_REQUESTS_PER_SECOND") -> float:
    """The request-rate limit; 0 means no limit. ``variable``: an account's own variable, which
    falls back to ``TAPTOUCH_REQUESTS_PER_SECOND`` when unset."""
    raw = os.environ.get(variable, "").strip() if configured is None else configured
    if raw == "" and variable != "TAPTOUCH_REQUESTS_PER_SECOND":
        return requests_per_second()
    if raw == "":
        return DEFAULT_REQUESTS_PER_SECOND
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise ValueError(f"{variable} must be a number (0: no limit), got {raw!r}")
    return max(value, 0.0)


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def lookback(configured: str | int | None = None) -> timedelta:
    """How far before a window's high-water mark a re-run asks the API again (replica lag): seconds,
    or a number with s/m/h. The full refresh of a closed day catches anything later than this."""
    raw = os.environ.get("TAPTOUCH_LOOKBACK", "").strip().lower() if configured is None else str(configured)
    if raw == "":
        return DEFAULT_LOOKBACK
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "")
    try:
        seconds = int(number) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"TAPTOUCH_LOOKBACK must be seconds or a number with s/m/h (e.g. 300, 5m), got {raw!r}") from None
    if not 0 <= seconds <= 86_400:
        raise ValueError(f"TAPTOUCH_LOOKBACK must be between 0 and 24h, got {raw!r}")
    return timedelta(seconds=seconds)


def for_run(taptouch: "TaptouchResource", warehouse: "PostgresResource",
            account: "Account | None" = None) -> tuple["TaptouchResource", int]:
    """At run start: ``taptouch`` with every tunable it leaves unset taken from its variable, and
    the loader's batch size (``warehouse.batch_size``, else ``TAPTOUCH_BATCH_SIZE``).

    A named ``account`` (``TAPTOUCH_ACCOUNTS``) reads ``TAPTOUCH_<NAME>_BASE_URL`` and
    ``TAPTOUCH_<NAME>_REQUESTS_PER_SECOND`` first (unset: ``TAPTOUCH_BASE_URL`` /
    ``TAPTOUCH_REQUESTS_PER_SECOND``, as for the single account)."""
    update = {
        "page_size": page_size(taptouch.page_size),
        "requests_per_second": requests_per_second(taptouch.requests_per_second),
        "store_workers": store_workers(taptouch.store_workers),
    }
    if account is not None and account.prefixed:
        update["requests_per_second"] = requests_per_second(taptouch.requests_per_second,
                                                            variable=account.env("REQUESTS_PER_SECOND"))
        base_url = os.environ.get(account.env("BASE_URL"), "").strip()
        if taptouch.base_url is None and base_url:
            update["base_url"] = base_url
        # Run config for the resource (launchpad) replaces the EnvVar-bound credentials: the fields
        # it leaves out come from the account's own variables, never from TAPTOUCH_CLIENT_ID.
        for field, setting in (("client_id", "CLIENT_ID"), ("client_secret", "CLIENT_SECRET")):
            if getattr(taptouch, field) is None:
                value = os.environ.get(account.env(setting), "")
                if not value.strip():
                    raise ValueError(f"{account.env(setting)} is not set: set it to the {setting.lower().replace('_', ' ')} "
                                     f"of Taptouch account {account.name!r} (TAPTOUCH_ACCOUNTS)")
                update[field] = value
    return taptouch.model_copy(update=update), batch_size(warehouse.batch_size)
