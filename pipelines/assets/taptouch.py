"""The synced data: ``stores``, ``orders`` (daily partitions) and ``inventory``."""


import time
from contextlib import contextmanager
from datetime import datetime, timezone

import dagster as dg

from taptouch_resource import TaptouchError, TaptouchResource, api

from .. import settings
from ..partitions import daily_partitions
from ..sync import SyncResult, day_window, is_transient, sync_inventory, sync_orders_window, sync_stores
from ..warehouse.resource import PostgresResource
from ..warehouse.token_store import TokenStore
from ..warehouse.views import apply_views

# Every asset that calls the Taptouch API runs in this Dagster concurrency pool, so concurrent runs
# (a backfill plus the hourly schedule) never exceed the API budget. Set its limit with
#   dagster instance concurrency set taptouch_api 2
# or in dagster.yaml (concurrency: pools: default_limit).
API_POOL = "taptouch_api"
KINDS = {"taptouch", "postgres"}
GROUP = "taptouch"

# Step-level retries for transient failures (the client already retried each request).
RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

STORE_ID = api.STORE_ID_FIELD


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


CHECK_QUARANTINE = "no_quarantined_records"
CHECK_ARITHMETIC = "order_arithmetic"
CHECK_FRESHNESS = "orders_fresh"
FRESHNESS_HOURS = 2


_views_applied: set[str] = set()


def prepare_warehouse(warehouse: PostgresResource) -> None:
    """Apply pending migrations and (once per process) the analytics views, before any load."""
    warehouse.ensure_migrated()
    url = warehouse.url()
    if url not in _views_applied:
        with warehouse.connect() as conn:
            conn.autocommit = True
            apply_views(conn)
        _views_applied.add(url)


@contextmanager
def api_errors():
    """Non-transient API errors (credentials, configuration, 4xx) fail the step at once, unretried,
    with the client's message (which says what to set); transient ones go to the RetryPolicy."""
    try:
        yield
    except (TaptouchError, ValueError) as exc:
        if isinstance(exc, TaptouchError) and is_transient(exc):
            raise
        raise dg.Failure(description=str(exc), allow_retries=False) from None


class _Session:
    """What an API-calling asset works with: a verified client, an autocommit connection, the clock."""

    def __init__(self, client, conn):
        self.client = client
        self.conn = conn
        self.t0 = time.monotonic()
        self._before = client.stats.snapshot()

    def api_metadata(self) -> dict:
        return {**_api_metadata(_api_delta(self._before, self.client.stats.snapshot())),
                "duration_s": round(time.monotonic() - self.t0, 3)}

    def listed_store_ids(self, context: dg.AssetExecutionContext) -> list[int]:
        """The store list from the API on every run, so a store added or removed since the last `stores`
        run is handled now; upserting it also gives the loader a new store's time zone."""
        with api_errors():
            _, listed = sync_stores(self.client, self.conn, run_id=context.run.run_id)
        return sorted({r[STORE_ID] for r in listed if isinstance(r, dict) and _is_id(r.get(STORE_ID))})


@contextmanager
def api_session(taptouch: TaptouchResource, warehouse: PostgresResource, *, store_api: bool = False):
    """Migrate, make a client and check its credentials (failing clearly, unretried, before any
    work), and open an autocommit connection to the warehouse."""
    prepare_warehouse(warehouse)
    url = warehouse.url()
    with api_errors():
        tokens = TokenStore.for_resource(taptouch, url)
        client = taptouch.get_store_client(token_store=tokens) if store_api else taptouch.get_client(token_store=tokens)
        client.auth.get_token()
    try:
        with warehouse.connect() as conn:
            conn.autocommit = True
            yield _Session(client, conn)
    finally:
        client.close()


def _api_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _api_metadata(delta: dict[str, int]) -> dict[str, int]:
    return {
        "api_requests": delta["requests"],
        "api_retries": delta["retries"],
        "api_429s": delta["rate_limited"],
        "token_requests": delta["token_requests"],
    }


def _fail_if_stores_failed(result: SyncResult, what: str, metadata: dict) -> None:
    if not result.failures:
        return
    lines = "\n".join(f"- {f}" for f in result.failures)
    transient = any(f.transient for f in result.failures)
    raise dg.Failure(
        description=(
            f"{what}: {len(result.failures)} store(s) failed; the other {len(result.stores_ok)} store(s) "
            f"were loaded and committed.\n{lines}"
            + ("" if transient else "\nThese errors are not transient: the step is not retried.")
        ),
        metadata=metadata,
        allow_retries=transient,
    )


def _markdown_table(rows: list[dict], cols: list[str]) -> str:
    def cell(v) -> str:
        return str(v if v is not None else "").replace("|", "\\|").replace("\n", " ")

    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "".join("| " + " | ".join(cell(r.get(c)) for c in cols) + " |\n" for r in rows)


@dg.asset(
    key="stores", group_name=GROUP, kinds=KINDS, pool=API_POOL, retry_policy=RETRY,
    description="Every store the Taptouch token may read, upserted into taptouch.stores.",
)
def stores(context: dg.AssetExecutionContext, taptouch: TaptouchResource, warehouse: PostgresResource) -> dg.MaterializeResult:
    """Every store the token may read; upserted."""
    with api_session(taptouch, warehouse, store_api=True) as session, api_errors():
        counts, records = sync_stores(session.client, session.conn, run_id=context.run.run_id)
    preview = [r for r in records if isinstance(r, dict)][:50]
    return dg.MaterializeResult(metadata={
        **counts.as_dict(),
        "dagster/row_count": len(records),
        **session.api_metadata(),
        "preview": dg.MetadataValue.md(_markdown_table(preview, ["id", "name", "status", "timezone", "currency"])),
    })


@dg.asset(
    key="orders", group_name=GROUP, kinds=KINDS, deps=["stores"], partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=settings.backfill_partitions_per_run()),
    pool=API_POOL, retry_policy=RETRY,
    check_specs=[
        dg.AssetCheckSpec(CHECK_QUARANTINE, asset="orders",
                          description="No order of the partition was quarantined (warns when some were)."),
        dg.AssetCheckSpec(CHECK_ARITHMETIC, asset="orders",
                          description="Σ item totals = subtotal; Σ payments = total for completed orders."),
    ],
    description="Orders (with items, payments, refunds) whose updated_at falls in the partition's UTC day.",
)
def orders(context: dg.AssetExecutionContext, taptouch: TaptouchResource, warehouse: PostgresResource) -> dg.MaterializeResult:
    """Orders updated in each UTC day, for every store, with items, payments and refunds."""
    keys = list(context.partition_keys)
    total = SyncResult()
    with api_session(taptouch, warehouse) as session:
        client, conn = session.client, session.conn
        store_ids = session.listed_store_ids(context)
        for key in keys:
            start, end = day_window(key)
            context.log.info(f"orders {key}: loading [{start.isoformat()}, {end.isoformat()})")
            result = sync_orders_window(
                client, conn, start=start, end=end, window=key, run_id=context.run.run_id, store_ids=store_ids,
                max_workers=settings.store_workers(), batch_size=settings.batch_size(), progress=context.log.info,
            )
            c = result.counts
            context.log.info(
                f"orders {key}: {c.inserted} inserted, {c.updated} updated, {c.unchanged} unchanged, "
                f"{c.quarantined} quarantined, {len(result.stores_ok)} stores ok, {len(result.failures)} failed "
                f"({result.seconds:.1f}s)"
            )
            total.merge(result)
        range_start, _ = day_window(keys[0])
        _, range_end = day_window(keys[-1])
        checks = _order_checks(conn, keys, range_start, range_end)
    failed = sorted({f.store_id for f in total.failures})
    metadata = {
        **total.counts.as_dict(),
        "dagster/row_count": total.counts.rows,
        "partitions": len(keys),
        "stores_ok": len(set(total.stores_ok) - set(failed)),
        "stores_failed": len(failed),
        "failed_store_ids": ", ".join(map(str, failed)) or "none",
        "pages": total.pages,
        **session.api_metadata(),
    }
    api_md = session.api_metadata()
    context.log.info("Taptouch API this run: " + ", ".join(f"{k} {v}" for k, v in api_md.items()))
    _fail_if_stores_failed(total, f"orders {keys[0]}..{keys[-1]}", metadata)
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _order_checks(conn, keys: list[str], start: datetime, end: datetime) -> list[dg.AssetCheckResult]:
    with conn.cursor() as cur:
        cur.execute(
            "select count(*), coalesce(string_agg(distinct left(reason, 120), '; '), '') from taptouch.quarantine"
            " where entity = 'order' and \"window\" = any(%s) and resolved_at is null",
            (keys,),
        )
        quarantined, reasons = cur.fetchone()
        cur.execute(
            """
            with o as (
                select order_id, status, subtotal, total from taptouch.orders
                where updated_at >= %s and updated_at < %s
            ),
            items as (
                select i.order_id, sum(i.total) as item_total from taptouch.order_items i
                join o using (order_id) group by i.order_id
            ),
            pays as (
                select p.order_id, sum(p.amount) as paid from taptouch.order_payments p
                join o using (order_id) group by p.order_id
            )
            select count(*),
                   count(*) filter (where items.item_total is not null and items.item_total <> o.subtotal),
                   count(*) filter (where o.status = 'completed' and coalesce(pays.paid, 0) <> o.total)
            from o left join items using (order_id) left join pays using (order_id)
            """,
            (start, end),
        )
        checked, bad_subtotal, bad_paid = cur.fetchone()
    return [
        dg.AssetCheckResult(
            check_name=CHECK_QUARANTINE, asset_key="orders", passed=quarantined == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"quarantined": quarantined, "reasons": reasons[:2000] or "none",
                      "where": "select * from taptouch.quarantine where entity = 'order' and resolved_at is null"},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_ARITHMETIC, asset_key="orders", passed=bad_subtotal == 0 and bad_paid == 0,
            metadata={"orders_checked": checked, "subtotal_mismatches": bad_subtotal, "payment_mismatches": bad_paid},
        ),
    ]


@dg.asset_check(asset="orders", name=CHECK_FRESHNESS, blocking=False,
                description=f"The last successful orders load finished within {FRESHNESS_HOURS} hours.")
def orders_fresh(warehouse: PostgresResource) -> dg.AssetCheckResult:
    warehouse.ensure_migrated()
    with warehouse.connect() as conn, conn.cursor() as cur:
        cur.execute("select max(finished_at) from taptouch.sync_log where entity = 'orders'")
        last = cur.fetchone()[0]
    age_h = None if last is None else (datetime.now(timezone.utc) - last).total_seconds() / 3600
    return dg.AssetCheckResult(
        passed=age_h is not None and age_h <= FRESHNESS_HOURS, severity=dg.AssetCheckSeverity.WARN,
        metadata={"last_load": str(last) if last else "never", "age_hours": round(age_h, 2) if age_h is not None else -1.0},
    )


@dg.asset(
    key="inventory", group_name=GROUP, kinds=KINDS, deps=["stores"], pool=API_POOL, retry_policy=RETRY,
    description="Current stock levels (taptouch.inventory_levels) and today's taptouch.inventory_snapshots.",
)
def inventory(context: dg.AssetExecutionContext, taptouch: TaptouchResource, warehouse: PostgresResource) -> dg.MaterializeResult:
    """Current stock per store, replacing the previous list; today's snapshot per product."""
    with api_session(taptouch, warehouse) as session:
        store_ids = session.listed_store_ids(context)
        result = sync_inventory(session.client, session.conn, store_ids=store_ids, run_id=context.run.run_id,
                                progress=context.log.info)
    failed = sorted({f.store_id for f in result.failures})
    metadata = {
        **result.counts.as_dict(),
        "dagster/row_count": result.counts.rows,
        "stores_ok": len(result.stores_ok),
        "stores_failed": len(failed),
        "failed_store_ids": ", ".join(map(str, failed)) or "none",
        **session.api_metadata(),
    }
    _fail_if_stores_failed(result, "inventory", metadata)
    return dg.MaterializeResult(metadata=metadata)
