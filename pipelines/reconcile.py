"""Deletions: a scheduled reconciliation of the warehouse's recent orders with the API's.

Taptouch does not document what happens to a deleted order; the modelled behaviour
(docs/api-model.md) is that it simply stops being listed, with no tombstone. So nothing in a normal
load says an order is gone. Once a day (``orders_reconcile_daily``) the asset ``order_deletions``:

1. lists, per store, every order the API returns with ``updated_at`` from ``now - N days``
   (``TAPTOUCH_RECONCILE_DAYS``, default 7) onwards, with no effective upper bound (until a day
   after now): an order edited since the warehouse loaded it has a *later* ``updated_at``, so it is
   still in this listing, never mistaken for a deleted one;
2. takes the warehouse's orders of that store whose ``updated_at`` lies in ``[now - N days, t0)``,
   ``t0`` being the instant the listing started (an order the loader inserts meanwhile is not judged);
3. an order of (2) missing from (1) is listed once more (offset pagination can skip a record when
   another moves under it); still missing -> ``deleted_at = now()`` (soft delete: nothing is removed);
4. a warehouse order with ``deleted_at`` set that the listing returns again is restored
   (``deleted_at = null``).

A store whose listing fails is left untouched (and named in the failure). A store that would lose
more than half of its window's orders at once (and more than 20) is not changed either: that is
more likely an API fault than a mass deletion; the step fails naming it.

The analytics views leave out orders with ``deleted_at`` set (sql/analytics/sales_orders.sql).
"""


import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

import dagster as dg
import psycopg

from taptouch_resource import TaptouchClient, TaptouchError, api

from .accounts import DEFAULT, Account
from .sync import describe, is_transient
from .warehouse.loader import _LOCK_ORDERS  # the loader's merge lock: the two never interleave

log = logging.getLogger(__name__)

RECONCILE_DAYS_ENV = "TAPTOUCH_RECONCILE_DAYS"
DEFAULT_RECONCILE_DAYS = 7
LISTING_SLACK = timedelta(seconds=1)  # the warehouse rounds instants to microseconds; the API may not
MAX_DELETE_SHARE = 0.5
MAX_DELETE_FLOOR = 20


def reconcile_days() -> int:
    """``TAPTOUCH_RECONCILE_DAYS`` (default 7, 1..366): how many days back the reconciliation looks."""
    raw = os.environ.get(RECONCILE_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_RECONCILE_DAYS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{RECONCILE_DAYS_ENV} must be an integer number of days, got {raw!r}") from None
    if not 1 <= value <= 366:
        raise ValueError(f"{RECONCILE_DAYS_ENV} must be between 1 and 366, got {value}")
    return value


@dataclass
class StoreReconcile:
    store_id: int
    listed: int = 0
    checked: int = 0
    deleted: list[int] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    relisted: bool = False


@dataclass
class ReconcileResult:
    start: datetime
    end: datetime
    stores: list[StoreReconcile] = field(default_factory=list)
    failures: list[tuple[int, str, bool]] = field(default_factory=list)  # (store, error, transient)

    @property
    def deleted(self) -> int:
        return sum(len(s.deleted) for s in self.stores)

    @property
    def restored(self) -> int:
        return sum(len(s.restored) for s in self.stores)

    @property
    def checked(self) -> int:
        return sum(s.checked for s in self.stores)

    @property
    def listed(self) -> int:
        return sum(s.listed for s in self.stores)


def _listed_ids(client: TaptouchClient, store_id: int, start: datetime, end: datetime) -> set[int]:
    ids: set[int] = set()
    for page in client.iter_order_pages(store_id, updated_from=start, updated_to=end):
        for rec in page:
            oid = rec.get(api.ORDER_ID_FIELD) if isinstance(rec, dict) else None
            if isinstance(oid, int) and not isinstance(oid, bool):
                ids.add(oid)
    return ids


def reconcile_orders(
    client: TaptouchClient,
    conn: psycopg.Connection,
    *,
    days: int | None = None,
    store_ids: list[int] | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReconcileResult:
    """Soft-delete the warehouse's orders of the last ``days`` days that the API no longer lists,
    and restore soft-deleted orders it lists again. Each store commits on its own."""
    say = progress or log.info
    days = reconcile_days() if days is None else days
    now = now or datetime.now(timezone.utc)
    start = now - timedelta(days=days)
    result = ReconcileResult(start=start, end=now)
    if store_ids is None:
        with conn.cursor() as cur:
            cur.execute("select store_id from taptouch.stores order by store_id")
            store_ids = [r[0] for r in cur.fetchall()]
    for store_id in store_ids:
        t0 = datetime.now(timezone.utc)
        until = max(t0, now) + timedelta(days=1)
        try:
            listed = _listed_ids(client, store_id, start - LISTING_SLACK, until)
        except TaptouchError as exc:
            result.failures.append((store_id, describe(exc), is_transient(exc)))
            log.error("reconcile: store %s: %s", store_id, describe(exc))
            continue
        sr = StoreReconcile(store_id, listed=len(listed))
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("select pg_advisory_xact_lock(%s)", (_LOCK_ORDERS,))
            cur.execute(
                "select order_id from taptouch.orders where store_id = %s and updated_at >= %s and updated_at < %s"
                " and deleted_at is null order by order_id",
                (store_id, start, min(t0, now)),
            )
            live = [r[0] for r in cur.fetchall()]
            sr.checked = len(live)
            missing = [oid for oid in live if oid not in listed]
            if missing:
                sr.relisted = True
                try:
                    again = _listed_ids(client, store_id, start - LISTING_SLACK, until)
                except TaptouchError as exc:
                    result.failures.append((store_id, describe(exc), is_transient(exc)))
                    continue
                listed |= again
                missing = [oid for oid in missing if oid not in listed]
            if len(missing) > max(MAX_DELETE_FLOOR, MAX_DELETE_SHARE * len(live)):
                result.failures.append((store_id, (
                    f"the API no longer lists {len(missing)} of the {len(live)} orders of the last {days} days; "
                    f"refusing to mark so many deleted at once (an API fault is more likely). Check the store's "
                    f"orders in Taptouch; if they really are gone, run with a smaller {RECONCILE_DAYS_ENV}"
                ), False))
                continue
            if missing:
                cur.execute(
                    "update taptouch.orders set deleted_at = now() where order_id = any(%s) and deleted_at is null"
                    " returning order_id",
                    (missing,),
                )
                sr.deleted = sorted(r[0] for r in cur.fetchall())
            cur.execute(
                "update taptouch.orders set deleted_at = null where store_id = %s and deleted_at is not null"
                " and order_id = any(%s) returning order_id",
                (store_id, sorted(listed)),
            )
            sr.restored = sorted(r[0] for r in cur.fetchall())
            if sr.deleted or sr.restored:  # sync_log: deleted = marked deleted, updated = restored
                cur.execute(
                    "insert into taptouch.sync_log (entity, store_id, \"window\", started_at, deleted, updated)"
                    " values ('order_deletions', %s, %s, %s, %s, %s)",
                    (store_id, f"{start.isoformat()}..{now.isoformat()}", t0, len(sr.deleted), len(sr.restored)),
                )
        result.stores.append(sr)
        say(f"store {store_id}: {sr.listed} listed, {sr.checked} checked, {len(sr.deleted)} marked deleted, "
            f"{len(sr.restored)} restored")
    return result


# ------------------------------------------------------------------------------------------ dagster

RECONCILE_ASSET = "order_deletions"


def deletions_definitions(account: Account = DEFAULT) -> tuple[dg.AssetsDefinition, object, dg.ScheduleDefinition]:
    """``order_deletions`` of one account (under its key prefix, in its pool, with its resource),
    its job and its daily schedule."""
    resource_key = account.resource_key

    @dg.asset(
        key=account.key(RECONCILE_ASSET), group_name=account.group, kinds={"taptouch", "postgres"},
        deps=[account.key("orders")], pool=account.pool, required_resource_keys={resource_key, "warehouse"},
        retry_policy=dg.RetryPolicy(max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS),
        metadata={"writes": "taptouch.orders.deleted_at (only that column; the orders asset writes the rest)"},
        description=(
            "Soft deletes: taptouch.orders.deleted_at for orders of the last TAPTOUCH_RECONCILE_DAYS days (default 7) "
            "the API no longer lists; cleared when they come back."
        ),
    )
    def order_deletions(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Compare the API's order ids of the recent window with the warehouse's; mark and restore."""
        # the assets' session (settings, migrations, a verified client, a connection) and error policy
        from .assets.taptouch import api_session, step_errors

        taptouch, warehouse = getattr(context.resources, resource_key), context.resources.warehouse
        t = time.monotonic()
        days = reconcile_days()
        with step_errors(), api_session(taptouch, warehouse, account=account) as session:
            store_ids = session.store_listing(context).store_ids
            result = reconcile_orders(session.client, session.conn, days=days, store_ids=store_ids,
                                      progress=context.log.info)
            api_md = session.api_metadata()
        deleted_ids = [oid for s in result.stores for oid in s.deleted]
        restored_ids = [oid for s in result.stores for oid in s.restored]
        metadata = {
            "window_start": result.start.isoformat(),
            "window_end": result.end.isoformat(),
            "listed": result.listed,
            "checked": result.checked,
            "deleted": result.deleted,
            "restored": result.restored,
            "deleted_order_ids": ", ".join(map(str, deleted_ids[:200])) or "none",
            "restored_order_ids": ", ".join(map(str, restored_ids[:200])) or "none",
            "stores_ok": len(result.stores),
            "stores_failed": len(result.failures),
            **api_md,
            "duration_s": round(time.monotonic() - t, 3),
        }
        if result.failures:
            lines = "\n".join(f"- store {sid}: {err}" for sid, err, _ in result.failures)
            raise dg.Failure(
                description=f"order reconciliation: {len(result.failures)} store(s) not reconciled; the others were.\n{lines}",
                metadata=metadata, allow_retries=any(tr for _, _, tr in result.failures),
            )
        return dg.MaterializeResult(metadata=metadata)

    job = dg.define_asset_job(
        account.named("orders_reconcile_job"), selection=dg.AssetSelection.assets(account.key(RECONCILE_ASSET)),
        description="Soft-delete recent orders the API no longer lists; restore those it lists again.",
    )
    schedule = dg.ScheduleDefinition(
        name=account.named("orders_reconcile_daily"), job=job, cron_schedule="30 3 * * *", execution_timezone="UTC",
        description="Daily at 03:30 UTC: reconcile the last TAPTOUCH_RECONCILE_DAYS days of orders (deletions).",
    )
    return order_deletions, job, schedule


# The single-account definitions (today's names): the factory with no prefix.
order_deletions, reconcile_job, orders_reconcile_daily = deletions_definitions(DEFAULT)
