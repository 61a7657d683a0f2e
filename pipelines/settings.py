"""The code location's settings: the one place that reads the ``TAPTOUCH_*`` tunables and holds
their defaults.

Each is documented once, in the README's Settings table. A run reads them once, when it starts
(:func:`for_run` builds its frozen :class:`RunSettings`, which the assets pass down), so a changed
variable takes effect at the next run. The alert sensors read theirs at each tick
(:func:`alert_settings`). Dagster needs three when it loads the definitions:
``TAPTOUCH_START_DATE`` (the ``orders`` partitions), ``TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN`` (its
backfill policy) and ``TAPTOUCH_ALERT_SENSOR_INTERVAL``; reload the code location after changing
those.

A tunable set on a resource (in code, or per run in the launchpad) wins over its variable.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from taptouch_resource import api, client

if TYPE_CHECKING:  # the resources import dagster; this module stays importable without it
    from taptouch_resource import TaptouchResource

    from .accounts import Account
    from .warehouse.resource import PostgresResource

DEFAULT_START_DATE = "2024-01-01"
# A run with this tag set to "true" (or the orders asset's config full_refresh: true) loads its
# windows in full, ignoring their high-water marks. Backfills launched from the UI can carry it.
FULL_REFRESH_TAG = "taptouch/full_refresh"
DEFAULT_PAGE_SIZE = api.DEFAULT_PAGE_SIZE  # the client's own default: one value for both
DEFAULT_REQUESTS_PER_SECOND = client.DEFAULT_REQUESTS_PER_SECOND  # the client's own default
DEFAULT_STORE_WORKERS = 4
DEFAULT_BATCH_SIZE = 5000
MAX_DECODE_PROCESSES = 64


def _default_decode_processes() -> int:
    """One worker per core this process may use, at most 2; none on a single core (the loader's
    thread itself is mostly waiting on the API and PostgreSQL once the decoding has left it). Two
    decode about 50,000 orders/s (~36 µs per order each, measured on this project's 2-core VM),
    more than one loader's thread fetches and COPYs (~17,000 on the busy day's staging); each
    more would add ~35 MB and no speed (docs/performance.md, "Decoding beside the loader")."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return min(2, cores) if cores > 1 else 0


DEFAULT_DECODE_PROCESSES = _default_decode_processes()
DEFAULT_BACKFILL_PARTITIONS_PER_RUN = 10
# Replica lag of a read API is seconds; 5 minutes is ample and keeps an unchanged re-run of a busy
# day to one page per store (a cafe sells far fewer than a page of orders in 5 minutes).
DEFAULT_LOOKBACK = timedelta(minutes=5)
DEFAULT_BUSINESS_DAY_START = timedelta(0)  # local midnight


class SettingError(ValueError):
    """A ``TAPTOUCH_*`` setting (or the resource field standing for it) has a value the code location
    cannot use. The message names the variable, the value and what to set instead."""


@functools.cache
def _run_setting_error() -> type[SettingError]:
    """``RunSettingError``: a setting read when a run starts, as a ``dg.Failure`` that the step's
    ``RetryPolicy`` does not retry (a retry cannot cure a bad setting), and still a ``ValueError``.
    Built on first use: the sync path (the benchmark, the CLI) imports this module without paying
    for Dagster's import."""
    try:
        from dagster import Failure
    except ImportError:  # pragma: no cover - dagster is a dependency of the code location
        return type("RunSettingError", (SettingError,), {"__module__": __name__})

    class RunSettingError(SettingError, Failure):
        __doc__ = _run_setting_error.__doc__

        def __init__(self, message: str):
            Failure.__init__(self, description=message, allow_retries=False)

    return RunSettingError


def __getattr__(name: str):
    if name == "RunSettingError":
        return _run_setting_error()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _int(name: str, default: int, lo: int, hi: int, configured: int | None = None, *, at_load: bool = False) -> int:
    """``configured`` when set, else the variable ``name``, else ``default``; checked to lie in [lo, hi]."""
    error = SettingError if at_load else _run_setting_error()
    raw: str | float  # the variable's text, or the resource's configured number
    if configured is None:
        source, raw = name, os.environ.get(name, "").strip()
        fix = f"set {name} to a whole number from {lo} to {hi}, or unset it for the default {default}"
    else:
        field = name.removeprefix("TAPTOUCH_").lower()
        source, raw = f"{name} (the resource's {field})", configured
        fix = f"set the resource's {field} to a whole number from {lo} to {hi}, or leave it unset to use {name}"
    if raw == "":
        return default
    if isinstance(raw, bool) or isinstance(raw, float) and not float.is_integer(raw):
        raise error(f"{source} must be an integer, got {raw!r}: {fix}")
    try:
        value = int(raw) if not isinstance(raw, str) or raw.isascii() else int("x")
    except (ValueError, TypeError):
        raise error(f"{source} must be an integer, got {raw!r}: {fix}") from None
    if not lo <= value <= hi:
        raise error(f"{source} must be between {lo} and {hi}, got {value}: {fix}")
    return value


EARLIEST_START_DATE = date(1970, 1, 1)


def start_date() -> str:
    """First daily partition of ``orders`` (read when the definitions load), as ``YYYY-MM-DD``:
    between 1970-01-01 and today (UTC), so that today's partition, which the schedules load,
    exists."""
    raw = os.environ.get("TAPTOUCH_START_DATE", "").strip() or DEFAULT_START_DATE
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise SettingError(
            f"TAPTOUCH_START_DATE must be a date like 2026-01-01 (YYYY-MM-DD), got {raw!r}: set it "
            f"to the first UTC day of orders to load, or unset it for {DEFAULT_START_DATE}"
        ) from None
    today = datetime.now(UTC).date()
    if day > today:
        raise SettingError(
            f"TAPTOUCH_START_DATE {raw!r} is after today ({today}, UTC): the orders partitions run "
            f"from it to today, so there would be no partition to load. Set it to the first UTC day "
            f"of orders to load, today or earlier."
        )
    if day < EARLIEST_START_DATE:
        raise SettingError(
            f"TAPTOUCH_START_DATE {raw!r} is before {EARLIEST_START_DATE}: set it to the first UTC day "
            f"of orders to load (Taptouch has none before it)."
        )
    return day.isoformat()


def backfill_partitions_per_run() -> int:
    """Partitions one backfill run of ``orders`` loads (read when the definitions load)."""
    return _int("TAPTOUCH_BACKFILL_PARTITIONS_PER_RUN", DEFAULT_BACKFILL_PARTITIONS_PER_RUN, 1, 366, at_load=True)


def page_size(configured: int | None = None) -> int:
    return _int("TAPTOUCH_PAGE_SIZE", DEFAULT_PAGE_SIZE, 1, 500, configured)


def store_workers(configured: int | None = None) -> int:
    return _int("TAPTOUCH_STORE_WORKERS", DEFAULT_STORE_WORKERS, 1, 64, configured)


def batch_size(configured: int | None = None) -> int:
    return _int("TAPTOUCH_BATCH_SIZE", DEFAULT_BATCH_SIZE, 1, 1_000_000, configured)


def decode_processes() -> int:
    """``TAPTOUCH_DECODE_PROCESSES`` (0..64): worker processes decoding orders pages beside a run's
    loader (0: the loader's thread decodes them); default one per core, at most 2 (0 on one core)."""
    return _int("TAPTOUCH_DECODE_PROCESSES", DEFAULT_DECODE_PROCESSES, 0, MAX_DECODE_PROCESSES)


DEFAULT_RECONCILE_DAYS = 7
DEFAULT_RECONCILE_CONFIRM_S = 3600
DEFAULT_RESTORE_DAYS = 30
MAX_HISTORY_DAYS = 36_500


def reconcile_days() -> int:
    """``TAPTOUCH_RECONCILE_DAYS`` (1..366): how many days back ``order_deletions`` judges orders."""
    return _int("TAPTOUCH_RECONCILE_DAYS", DEFAULT_RECONCILE_DAYS, 1, 366)


def restore_days() -> int:
    """``TAPTOUCH_RESTORE_DAYS`` (1..36500, default 30): for how many days after an order was marked
    deleted ``order_deletions`` keeps looking for it again (lists its store from the order's
    ``updated_at``). An older deletion is restored only if a listing covering its ``updated_at``
    returns it (an ``orders`` load of that day, or a run with a larger value)."""
    return _int("TAPTOUCH_RESTORE_DAYS", DEFAULT_RESTORE_DAYS, 1, MAX_HISTORY_DAYS)


def history_days() -> int | None:
    """``TAPTOUCH_HISTORY_DAYS`` (1..36500, unset: keep everything): how many days an order version
    is kept in ``taptouch.order_history`` after it was first seen (an order's current version is
    always kept)."""
    raw = os.environ.get("TAPTOUCH_HISTORY_DAYS", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_HISTORY_DAYS):
        raise _run_setting_error()(
            f"TAPTOUCH_HISTORY_DAYS must be a whole number of days from 1 to {MAX_HISTORY_DAYS}, got {raw!r}: "
            "set it to how long superseded order versions are kept, or unset it to keep every version"
        )
    return int(raw)


def reconcile_confirm_s() -> int:
    """``TAPTOUCH_RECONCILE_CONFIRM_S`` (0..604800 s): how long after a complete listing first
    missed an order (or a suspicious inventory listing a product) a second one must be taken
    before the order is marked deleted (the product delisted)."""
    return _int("TAPTOUCH_RECONCILE_CONFIRM_S", DEFAULT_RECONCILE_CONFIRM_S, 0, 7 * 86_400)


MIN_REQUESTS_PER_SECOND = 0.01  # one request every 100 s: anything slower stalls a run for hours


def requests_per_second(configured: float | None = None, *, variable: str = "TAPTOUCH_REQUESTS_PER_SECOND") -> float:
    """The request-rate limit; 0 means no limit. ``variable``: an account's own variable, which
    falls back to ``TAPTOUCH_REQUESTS_PER_SECOND`` when unset."""
    raw = os.environ.get(variable, "").strip() if configured is None else configured
    if raw == "" and variable != "TAPTOUCH_REQUESTS_PER_SECOND":
        return requests_per_second()
    if raw == "":
        return DEFAULT_REQUESTS_PER_SECOND
    source = variable if configured is None else f"{variable} (the resource's requests_per_second)"
    try:
        value = float(raw) if not isinstance(raw, bool) else float("nan")
    except (ValueError, TypeError):
        value = float("nan")
    underflow = value == 0 and isinstance(raw, str) and any(c in "123456789" for c in raw.lower().split("e")[0])
    if not math.isfinite(value) or value < 0 or 0 < value < MIN_REQUESTS_PER_SECOND or underflow:
        raise _run_setting_error()(
            f"{source} must be 0 (no limit) or a number of requests per second from {MIN_REQUESTS_PER_SECOND} "
            f"(e.g. 10 or 0.5), got {raw!r}: set it to the budget Taptouch gives the client id, or unset it for "
            f"the default {DEFAULT_REQUESTS_PER_SECOND:g}"
        )
    return value + 0.0  # -0.0 -> 0.0


_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}


def lookback(configured: str | int | None = None) -> timedelta:
    """How far before a window's high-water mark a re-run asks the API again (replica lag): seconds,
    or a number with s/m/h. The full refresh of a closed day catches anything later than this."""
    source = "TAPTOUCH_LOOKBACK" if configured is None else "TAPTOUCH_LOOKBACK (the orders config's lookback)"
    raw = (os.environ.get("TAPTOUCH_LOOKBACK", "") if configured is None else str(configured)).strip()
    if raw == "":
        return DEFAULT_LOOKBACK
    text = raw.lower().replace(" ", "")
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "")
    fix = "set it to seconds or a whole number with s, m or h (e.g. 300, 5m, 1h), at most 24h, or unset it for 5m"
    if not (number.isascii() and number.isdigit()):
        raise _run_setting_error()(
            f"{source} must be seconds or a number with s/m/h (e.g. 300, 5m), got {raw!r}: {fix}"
        )
    seconds = int(number) * _UNITS[unit]
    if not 0 <= seconds <= 86_400:
        raise _run_setting_error()(f"{source} must be between 0 and 24h, got {raw!r}: {fix}")
    return timedelta(seconds=seconds)


def business_day_start() -> timedelta:
    """``TAPTOUCH_BUSINESS_DAY_START`` (``HH:MM``, 00:00 to 11:59, default 00:00): the local
    wall-clock time every store's business day starts at, unless ``taptouch.store_business_days``
    holds the store's own. A sale before it counts toward the previous business date."""
    raw = os.environ.get("TAPTOUCH_BUSINESS_DAY_START", "").strip()
    if raw == "":
        return DEFAULT_BUSINESS_DAY_START
    hours, sep, minutes = raw.partition(":")
    ok = sep == ":" and len(minutes) == 2 and 1 <= len(hours) <= 2 and (hours + minutes).isascii()
    if not (ok and hours.isdigit() and minutes.isdigit() and int(hours) < 12 and int(minutes) < 60):
        raise _run_setting_error()(
            f"TAPTOUCH_BUSINESS_DAY_START must be a local time HH:MM from 00:00 to 11:59, got {raw!r}: "
            "set it to the time the stores' business day starts (e.g. 04:00), or unset it for 00:00"
        )
    return timedelta(hours=int(hours), minutes=int(minutes))


@dataclass(frozen=True)
class RunSettings:
    """Every tunable of one run of one account, read once when the run starts (:func:`for_run`) and
    passed down. Built directly (``RunSettings(store_workers=2)``), it holds the defaults."""

    page_size: int = DEFAULT_PAGE_SIZE
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND  # 0: no limit
    store_workers: int = DEFAULT_STORE_WORKERS
    batch_size: int = DEFAULT_BATCH_SIZE  # orders per COPY batch
    decode_processes: int = DEFAULT_DECODE_PROCESSES  # workers decoding orders pages (0: the loader's thread)
    lookback: timedelta = DEFAULT_LOOKBACK  # an incremental window re-asks from its mark minus this
    reconcile_days: int = DEFAULT_RECONCILE_DAYS
    reconcile_confirm_s: int = DEFAULT_RECONCILE_CONFIRM_S
    restore_days: int = DEFAULT_RESTORE_DAYS  # deletions order_deletions still looks for again
    business_day_start: timedelta = DEFAULT_BUSINESS_DAY_START  # stores without their own start
    history_days: int | None = None  # TAPTOUCH_HISTORY_DAYS; None: order history kept forever


def for_run(
    taptouch: TaptouchResource, warehouse: PostgresResource, account: Account | None = None
) -> tuple[TaptouchResource, RunSettings]:
    """At run start, the one read of the environment: ``taptouch`` with its credentials and base
    URL resolved and every tunable it leaves unset taken from its variable, and the run's
    :class:`RunSettings` (the loader's batch size: ``warehouse.batch_size``, else
    ``TAPTOUCH_BATCH_SIZE``).

    A named ``account`` (``TAPTOUCH_ACCOUNTS``) reads ``TAPTOUCH_<NAME>_BASE_URL`` and
    ``TAPTOUCH_<NAME>_REQUESTS_PER_SECOND`` first (unset: ``TAPTOUCH_BASE_URL`` /
    ``TAPTOUCH_REQUESTS_PER_SECOND``, as for the single account)."""
    named = account if account is not None and not account.is_default else None
    if named is not None:
        taptouch = account_resource(taptouch, named)
    run = RunSettings(
        page_size=page_size(taptouch.page_size),
        requests_per_second=requests_per_second(
            taptouch.requests_per_second, **({"variable": named.env("REQUESTS_PER_SECOND")} if named else {})
        ),
        store_workers=store_workers(taptouch.store_workers),
        batch_size=batch_size(warehouse.batch_size),
        decode_processes=decode_processes(),
        lookback=lookback(),
        reconcile_days=reconcile_days(),
        reconcile_confirm_s=reconcile_confirm_s(),
        restore_days=restore_days(),
        business_day_start=business_day_start(),
        history_days=history_days(),
    )
    client_id, client_secret, base_url = taptouch.resolved()  # later uses read these fields, not the environment
    taptouch = taptouch.model_copy(
        update={
            "client_id": client_id,
            "client_secret": client_secret,
            "base_url": base_url,
            "page_size": run.page_size,
            "requests_per_second": run.requests_per_second,
            "store_workers": run.store_workers,
        }
    )
    return taptouch, run


def account_resource(taptouch: TaptouchResource, account: Account) -> TaptouchResource:
    """``taptouch`` with the base URL and credentials it leaves unset taken from a named account's
    ``TAPTOUCH_<NAME>_BASE_URL`` / ``_CLIENT_ID`` / ``_CLIENT_SECRET`` (for runs and for the CLI's
    ``--account``). Run config for the resource (launchpad) replaces the EnvVar-bound credentials:
    the fields it leaves out come from the account's own variables, never from TAPTOUCH_CLIENT_ID."""
    from taptouch_resource.resource import checked_base_url

    update = {}
    variable = account.env("BASE_URL")
    base_url = os.environ.get(variable, "").strip()
    if taptouch.base_url is None and base_url:
        update["base_url"] = checked_base_url(base_url, variable)
    for field, setting in (("client_id", "CLIENT_ID"), ("client_secret", "CLIENT_SECRET")):
        if not (getattr(taptouch, field) or "").strip():  # unset, or bound to the account's variable and blank
            value = os.environ.get(account.env(setting), "").strip()  # a newline read from a file is no part of it
            if not value:
                raise _run_setting_error()(
                    f"{account.env(setting)} is not set: set it to the {setting.lower().replace('_', ' ')} "
                    f"of Taptouch account {account.name!r} (TAPTOUCH_ACCOUNTS)"
                )
            update[field] = value
    return taptouch.model_copy(update=update)


# ------------------------------------------------------------------------------------------ alerts

ALERT_WEBHOOK_ENV = "TAPTOUCH_ALERT_WEBHOOK_URL"
ALERT_MIN_SEVERITY_ENV = "TAPTOUCH_ALERT_MIN_SEVERITY"
UI_URL_ENV = "TAPTOUCH_UI_URL"
ALERT_INTERVAL_ENV = "TAPTOUCH_ALERT_SENSOR_INTERVAL"
DEFAULT_UI_URL = "http://127.0.0.1:3000"
DEFAULT_ALERT_MIN_SEVERITY = "WARN"
DEFAULT_ALERT_SENSOR_INTERVAL_S = 30
ALERT_SEVERITIES = ("WARN", "ERROR")


@dataclass(frozen=True)
class AlertSettings:
    """What the alert sensors read at each tick (they run outside any run)."""

    webhook_url: str | None = None  # unset: alerts are off
    ui_url: str = DEFAULT_UI_URL  # links to runs, without a trailing /
    min_severity: str = DEFAULT_ALERT_MIN_SEVERITY  # WARN or ERROR: the failed checks alerted on

    def checked_min_severity(self) -> str:
        """``min_severity``, checked: only the failed-check sensor needs it, so a bad value never
        stops a failed run's alert."""
        if self.min_severity not in ALERT_SEVERITIES:
            raise SettingError(f"{ALERT_MIN_SEVERITY_ENV} must be WARN or ERROR, got {self.min_severity!r}")
        return self.min_severity


def alert_settings() -> AlertSettings:
    """``TAPTOUCH_ALERT_WEBHOOK_URL``, ``TAPTOUCH_UI_URL`` and ``TAPTOUCH_ALERT_MIN_SEVERITY``, read now."""
    severity = os.environ.get(ALERT_MIN_SEVERITY_ENV, "").strip().upper() or DEFAULT_ALERT_MIN_SEVERITY
    return AlertSettings(
        webhook_url=os.environ.get(ALERT_WEBHOOK_ENV, "").strip() or None,
        ui_url=(os.environ.get(UI_URL_ENV, "").strip() or DEFAULT_UI_URL).rstrip("/"),
        min_severity=severity,
    )


def checked_webhook_url(url: str) -> str:
    """``TAPTOUCH_ALERT_WEBHOOK_URL`` as it can be POSTed to: https (plain http only to a loopback
    host), a host, no spaces. The error names the variable and never echoes the URL (a webhook URL
    is a secret: whoever holds it can post)."""
    from urllib.parse import urlsplit

    fix = f"set {ALERT_WEBHOOK_ENV} to the webhook's full URL, e.g. https://hooks.slack.com/services/..."
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port == 0:  # reading the port checks it (0 is no port a server listens on)
            raise ValueError
    except ValueError:
        raise SettingError(f"{ALERT_WEBHOOK_ENV} is not a URL (its host or port cannot be read): {fix}") from None
    if parts.scheme not in ("https", "http") or not host or any(ch.isspace() for ch in url):
        raise SettingError(f"{ALERT_WEBHOOK_ENV} must be an https:// URL with a host, without spaces: {fix}")
    if parts.scheme == "http" and not client.is_loopback(host):
        raise SettingError(
            f"{ALERT_WEBHOOK_ENV} uses plain http:// to a host that is not this machine: the URL is a secret "
            f"and the alerts would cross the network unencrypted. Use its https:// URL."
        )
    return url


def alert_sensor_interval() -> int:
    """``TAPTOUCH_ALERT_SENSOR_INTERVAL``: seconds between the alert sensors' ticks (read when the
    definitions load)."""
    raw = os.environ.get(ALERT_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_ALERT_SENSOR_INTERVAL_S
    fix = f"set it so, or unset it for {DEFAULT_ALERT_SENSOR_INTERVAL_S}"
    # ASCII digits only: int() also reads other scripts' digits ("٣٠"), "1_0" and "+5"
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= 86_400):
        raise SettingError(
            f"{ALERT_INTERVAL_ENV} must be a whole number of seconds from 1 to 86400, got {raw!r}: {fix}"
        )
    return int(raw)
