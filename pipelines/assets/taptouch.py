"""The synced data: ``stores``, ``orders`` (daily partitions) and ``inventory``.

One writer per table: ``stores`` is the only asset that writes ``taptouch.stores``. ``orders`` and
``inventory`` read the API's store listing with their own client (read only) to learn which
stores exist and their time zones, so neither depends on a ``stores`` run (``taptouch.orders``
has no foreign key to it: ``orders`` loads on a fresh warehouse too).
"""

import time
import warnings
from contextlib import closing, contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from taptouch_resource import TaptouchError, TaptouchResource

from .. import settings
from ..accounts import DEFAULT, Account
from ..partitions import daily_partitions
from ..sync import (
    FULL_REFRESH,
    WINDOWS_IN_FLIGHT,
    Incremental,
    OrdersRun,
    OrderWindow,
    StoreListing,
    SyncMode,
    SyncResult,
    describe,
    is_transient,
    list_stores,
    sync_inventory,
    sync_orders_windows,
    sync_stores,
)
from ..warehouse import aggregates, money_check, proofs
from ..warehouse.budget import RequestMeter, SharedBudget, record_usage
from ..warehouse.resource import PostgresResource
from ..warehouse.schema import table_metadata
from ..warehouse.token_store import TokenStore
from .preview import PREVIEW_ROWS, markdown_preview, read_frame

# Every asset that calls the Taptouch API runs in its account's Dagster concurrency pool
# (Account.pool), so concurrent runs (a backfill plus the hourly schedule) never exceed the API
# budget. Set its limit with
#   dagster instance concurrency set taptouch_api 2        (taptouch_api_<name> for a named account)
# or in dagster.yaml (concurrency: pools: default_limit).
KINDS = {"taptouch", "postgres"}

# BackfillPolicy.multi_run is how a backfill groups partitions into runs (docs/operating.md); Dagster
# marks the parameter beta and would print that on every load of the code location.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message="Parameter `backfill_policy`")

# Step-level retries, only for errors a retry can cure (sync.is_transient); the client has already
# retried each request. Anything else fails the step at once (step_errors).
RETRY = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

CHECK_QUARANTINE = "no_quarantined_records"
CHECK_ARITHMETIC = "order_arithmetic"
CHECK_FUTURE = "no_future_dated_orders"
CHECK_PROVEN = "orders_proven"
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew between a till and the warehouse that is not news


@contextmanager
def step_errors():
    """Errors a retry can cure (network, 5xx, 429, a lost database connection) propagate to the
    step's RetryPolicy; anything else (credentials, configuration, 4xx, a bug) fails the step at
    once, unretried, with its message (a Taptouch error's says what to set). An interrupt (Ctrl-C,
    the run terminated) fails the step unretried too: Dagster would take it for a failure its
    RetryPolicy retries, and an in-process run (``taptouch-sync demo``) sat out the retry delay
    and carried on loading after Ctrl-C."""
    try:
        yield
    except dg.Failure:
        raise
    except (dg.DagsterExecutionInterruptedError, KeyboardInterrupt):
        raise dg.Failure(description="interrupted (Ctrl-C, or the run was terminated)", allow_retries=False) from None
    except Exception as exc:
        if is_transient(exc):
            raise
        if isinstance(exc, TaptouchError):
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        raise dg.Failure(description=describe(exc), allow_retries=False) from exc


class RunContext:
    """What an API-calling asset works with in one run: a client with verified credentials, an
    autocommit connection (and ``connect`` for more like it), the run's :class:`~pipelines.settings.RunSettings`
    and the clock. ``meter``: the client's requests and their wall-clock wait for the budget."""

    def __init__(
        self,
        client,
        conn,
        run_settings: settings.RunSettings,
        *,
        api_before: dict | None = None,
        connect=None,
        meter: RequestMeter | None = None,
    ):
        self.client = client
        self.conn = conn
        self.connect = connect  # another autocommit connection like conn (for windows loaded at once)
        self.settings = run_settings
        self.meter = meter
        self.t0 = time.monotonic()
        self._api_before = api_before if api_before is not None else client.stats.snapshot()

    def api_delta(self) -> dict[str, int]:
        """The client's counters since the run's client started."""
        return _api_delta(self._api_before, self.client.stats.snapshot())

    def budget_wait_s(self, label: str | None = None) -> float:
        """Wall-clock seconds during which some request (of ``label``) waited for the budget."""
        return self.meter.figures(label)["wait_s"] if self.meter is not None else 0.0

    def api_metadata(self) -> dict:
        """The run's API figures: requests, retries, 429s, token requests, its wall-clock wait for
        the budget and its duration (``budget_wait_s`` <= ``duration_s``)."""
        return {
            **_api_metadata(self.api_delta(), self.budget_wait_s()),
            "duration_s": round(time.monotonic() - self.t0, 3),
        }

    def store_listing(self, context: dg.AssetExecutionContext) -> StoreListing:
        """The API's store listing (read only): a malformed store record costs only its store."""
        listing = list_stores(self.client, self.conn)
        for key, reason in listing.invalid.items():
            context.log.warning(
                f"store {key} skipped: its store record is malformed ({reason}); "
                f"see taptouch.quarantine after the next stores run"
            )
        for sid, owner in sorted(listing.foreign.items()):
            context.log.warning(
                f"store {sid} skipped: account {owner!r} loaded it first and owns it; this account "
                f"lists it too (see docs/operating.md, 'Several accounts')"
            )
        return listing


def _account_connector(warehouse: PostgresResource, account: Account):
    """A function opening autocommit connections whose ``taptouch.account`` setting is a named
    account's name, which every row they write takes as its ``account`` (the column's default,
    migration 0009)."""

    def connect():
        conn = warehouse.connect()
        try:
            conn.autocommit = True
            if not account.is_default:
                conn.execute("select set_config('taptouch.account', %s, false)", (account.name,))
        except BaseException:
            conn.close()  # never leave a half-set-up connection open
            raise
        return conn

    return connect


@contextmanager
def run_context(
    taptouch: TaptouchResource,
    warehouse: PostgresResource,
    *,
    store_api: bool = False,
    account: Account = DEFAULT,
    context: dg.AssetExecutionContext | None = None,
):
    """At run start: read the settings (once: :func:`pipelines.settings.for_run`), migrate, make a
    client and check its credentials (failing clearly before any work), and open an autocommit
    connection to the warehouse, for a named ``account`` writing rows as that account. Yields the
    :class:`RunContext`. At its end, with ``context`` (the asset's), the step's API usage is
    recorded in ``taptouch_meta.api_usage``, whether the step failed or not."""
    taptouch, run_settings = settings.for_run(taptouch, warehouse, account)
    warehouse.ensure_migrated()
    url = warehouse.url()
    tokens = TokenStore.for_resource(taptouch, url, account=None if account.is_default else account.name)
    # one request budget per client id, shared through the warehouse by every run and process; the
    # meter in front of it counts this run's requests and times their waits
    client_id = taptouch.resolved()[0]  # set by for_run: the field, no environment read
    meter = RequestMeter(SharedBudget.for_client(url, client_id, run_settings.requests_per_second))
    get = taptouch.get_store_client if store_api else taptouch.get_client
    client = get(token_store=tokens, limiter=meter)
    connect = _account_connector(warehouse, account)
    run = None
    try:
        api_before = client.stats.snapshot()  # the run's counters include its own token request
        run = RunContext(client, None, run_settings, api_before=api_before, connect=connect, meter=meter)
        client.auth.get_token()
        with connect() as conn:
            run.conn = conn
            yield run
    finally:
        client.close()
        if context is not None and run is not None:
            _record_usage(context, run, account, client_id)


def _record_usage(context: dg.AssetExecutionContext, run: RunContext, account: Account, client_id: str) -> None:
    """The step's row of ``taptouch_meta.api_usage`` (on a connection of its own: the run's may be
    the reason the step failed)."""
    try:
        conn = run.connect()
    except Exception as exc:  # the warehouse is away: the run's own error, if any, says more
        context.log.warning(f"API usage of this step not recorded: {describe(exc)}")
        return
    with conn:
        record_usage(
            conn,
            run_id=context.run.run_id,
            asset=context.asset_key.to_user_string(),
            account=account.name,
            client_id=client_id,
            seconds=time.monotonic() - run.t0,
            api=run.api_delta(),
            wait_s=run.budget_wait_s(),
        )


def _api_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def _api_metadata(delta: dict[str, int], budget_wait_s: float) -> dict[str, float]:
    return {
        "api_requests": delta["requests"],
        "api_retries": delta["retries"],
        "api_429s": delta["rate_limited"],
        "token_requests": delta["token_requests"],
        "budget_wait_s": round(budget_wait_s, 3),
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


class OrdersConfig(dg.Config):
    """Launchpad / run config of ``orders`` (``ops: orders: config: ...``)."""

    full_refresh: bool = Field(
        default=False,
        description="Fetch each window in full, ignoring the high-water marks (also: run tag "
        "taptouch/full_refresh=true, which a backfill can carry).",
    )
    # Any: seconds are a number in YAML and JSON (lookback: 300), the units a string ("5m"); Dagster's
    # config has no str-or-int type. settings.lookback checks the value either way.
    lookback: Any = Field(
        default=None,
        description="Re-ask the API from each store's high-water mark minus this (seconds, or "
        "5m, 1h), and let a record this late still leave a listing complete. Unset: "
        "TAPTOUCH_LOOKBACK, else 5m.",
    )


def _sync_mode(context: dg.AssetExecutionContext, config: OrdersConfig, run: RunContext) -> SyncMode:
    """Full refresh when the run config or the run's tag asks for it; else incremental, with the
    run's lookback. The run config's ``lookback`` (else ``TAPTOUCH_LOOKBACK``) becomes the run's
    lookback in every use: where a re-run asks from, how late a record may reach a listing that
    stays complete, and how long its proofs let records settle."""
    if config.lookback is not None:
        run.settings = replace(run.settings, lookback=settings.lookback(config.lookback))
    if config.full_refresh or context.run.tags.get(settings.FULL_REFRESH_TAG, "").lower() == "true":
        return FULL_REFRESH
    return Incremental(run.settings.lookback)


def _load_orders_days(
    context: dg.AssetExecutionContext,
    run: RunContext,
    listing: StoreListing,
    windows: list[OrderWindow],
    mode: SyncMode,
) -> tuple[SyncResult, dict[str, SyncResult]]:
    """The run's daily windows, two fetching at once (:func:`~pipelines.sync.sync_orders_windows`:
    one window's merge overlaps the next ones' fetching), each its own transaction; a summary per day.
    Returns the run's totals and each window's own result (by key)."""
    at_once = f", {WINDOWS_IN_FLIGHT} fetched at a time" if len(windows) > 1 else ""
    context.log.info(
        f"orders: loading {len(windows)} window(s) [{windows[0].start.isoformat()}, "
        f"{windows[-1].end.isoformat()}){at_once}"
    )
    total, per_window = SyncResult(), {}
    orders_run = OrdersRun(
        timezones=listing.timezones,
        mode=mode,
        settings=run.settings,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    loads = sync_orders_windows(run.client, run.connect, windows, orders_run)
    # closing: whatever stops this loop (run termination) stops the windows in flight at once
    with closing(loads):
        for window, result in loads:
            c = result.counts
            context.log.info(
                f"orders {window.key}: {c.inserted} inserted, {c.updated} updated, {c.unchanged} unchanged, "
                f"{c.quarantined} quarantined, {len(result.stores_ok)} stores ok, {len(result.failures)} failed "
                f"({result.seconds:.1f}s)"
            )
            total.merge(result)
            per_window[window.key] = result
    return total, per_window


def _listing_metadata(listing: StoreListing) -> dict:
    """The stores skipped for a malformed store record or because another account owns them."""
    return {
        "stores_skipped": len(listing.invalid) + len(listing.foreign),
        "stores_of_other_accounts": ", ".join(f"{sid} ({owner})" for sid, owner in sorted(listing.foreign.items()))
        or "none",
        "skipped_store_records": ", ".join(sorted(listing.invalid)) or "none",
    }


def _result_metadata(result: SyncResult) -> dict:
    """Counts, and which stores loaded or failed."""
    failed = sorted({f.store_id for f in result.failures})
    return {
        **result.counts.as_dict(),
        "stores_ok": len(set(result.stores_ok) - set(failed)),
        "stores_failed": len(failed),
        "failed_store_ids": ", ".join(map(str, failed)) or "none",
    }


def _store_metadata(result: SyncResult, listing: StoreListing) -> dict:
    """Counts, and which stores loaded, failed, or were skipped for a malformed store record."""
    return {**_result_metadata(result), "dagster/row_count": result.counts.rows, **_listing_metadata(listing)}


SALE_STATUSES = ("completed", "partially_refunded", "refunded")  # as analytics.sales_orders counts sales

_WINDOW_FIGURES = """
with w as (select * from unnest(%(keys)s::text[], %(starts)s::timestamptz[], %(ends)s::timestamptz[]) as w(key, s, e)),
o as (
    select w.key, o.order_id, o.total,
           coalesce(o.currency, (select s.currency from taptouch.stores s where s.store_id = o.store_id),
                    'unknown') as currency,
           o.status = any(%(sales)s) and o.deleted_at is null as sale
    from w join taptouch.orders o
      on o.store_id = any(%(stores)s) and o.updated_at >= w.s and o.updated_at < w.e and o.account = %(account)s
),
r as (
    select r.order_id, sum(r.amount) as refunded from taptouch.order_refunds r
    join o using (order_id) where o.sale group by r.order_id
)
select o.key, o.currency, count(*), count(*) filter (where o.sale),
       coalesce(sum(o.total - coalesce(r.refunded, 0)) filter (where o.sale), 0)
from o left join r using (order_id)
group by o.key, o.currency
"""


def _window_figures(conn, windows: list[OrderWindow], store_ids: list[int], account: Account) -> dict[str, dict]:
    """Each window's orders as the warehouse holds them after the merges, per key: ``dagster/row_count``
    (the account's orders of the listed stores whose updated_at lies in the window), ``sales_orders``
    (those that are sales: completed, partially or wholly refunded, not deleted) and
    ``net_sales_<currency>`` (their totals less their refunds, per currency)."""
    figures: dict[str, dict[str, float]] = {w.key: {"dagster/row_count": 0, "sales_orders": 0} for w in windows}
    with conn.cursor() as cur:
        cur.execute(
            _WINDOW_FIGURES,
            {
                "keys": [w.key for w in windows],
                "starts": [w.start for w in windows],
                "ends": [w.end for w in windows],
                "sales": list(SALE_STATUSES),
                "stores": store_ids,
                "account": account.name,
            },
        )
        for key, currency, orders, sales, net in cur.fetchall():
            figures[key]["dagster/row_count"] += orders
            figures[key]["sales_orders"] += sales
            figures[key][f"net_sales_{currency}"] = float(net)
    return figures


def _window_metadata(result: SyncResult, figures: dict, api: dict[str, float]) -> dict:
    """One partition's own figures: what its load did, what the warehouse holds for its window,
    and its API requests (``api``: the window's :meth:`RequestMeter.figures`)."""
    return {
        **figures,
        **_result_metadata(result),
        "pages": result.pages,
        "incremental_stores": result.incremental_stores,
        "incomplete_stores": ", ".join(map(str, result.incomplete)) or "none",
        "pages_skipped": result.pages_skipped,
        "api_requests": api["requests"],
        "budget_wait_s": round(api["wait_s"], 3),
        "duration_s": round(result.seconds, 3),
    }


def _run_summary(windows: list[OrderWindow], total: SyncResult, api: dict) -> str:
    """The run's totals in one line: its log and its run tag (never a partition's metadata)."""
    c = total.counts
    span = windows[0].key if len(windows) == 1 else f"{windows[0].key}..{windows[-1].key}"
    return (
        f"{len(windows)} partition(s) {span}: {c.inserted} inserted, {c.updated} updated, {c.unchanged} unchanged, "
        f"{c.quarantined} quarantined, {total.pages} pages; {api['api_requests']} API requests, "
        f"{api['api_retries']} retries, {api['api_429s']} 429s, {api['token_requests']} token requests, "
        f"budget wait {api['budget_wait_s']:.1f}s of {api['duration_s']:.1f}s"
    )


def _quarantined_orders(cur, keys: list[str], mine: str | None) -> tuple[int, str]:
    """(unresolved quarantined orders of the windows ``keys``, their distinct reasons)."""
    cur.execute(
        "select count(*), coalesce(string_agg(distinct left(reason, 120), '; '), '') from taptouch.quarantine"
        " where entity = 'order' and \"window\" = any(%s) and resolved_at is null"
        " and (%s::text is null or account = %s)",
        (keys, mine, mine),
    )
    return cur.fetchone()


def _arithmetic_mismatches(cur, start: datetime, end: datetime, mine: str | None) -> tuple[int, int, int]:
    """(orders checked, Σ item totals ≠ subtotal, completed orders whose Σ payments ≠ total)."""
    cur.execute(
        """
        with o as (
            select order_id, status, subtotal, total from taptouch.orders
            where updated_at >= %s and updated_at < %s and (%s::text is null or account = %s)
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
        (start, end, mine, mine),
    )
    return cur.fetchone()


def _future_dated_orders(cur, start: datetime, end: datetime, mine: str | None) -> tuple[int, str]:
    """Orders dated after the moment they were loaded (a till's clock running ahead: they load, and
    cannot hold the store's high-water mark back or forward, pipelines/warehouse/marks.py): (count,
    the first 20 named)."""
    cur.execute(
        "select count(*), coalesce(string_agg(order_id::text || ' (store ' || store_id || ', ' || updated_at"
        " || ')', ', ' order by order_id) filter (where n <= 20), '') from (select order_id, store_id, updated_at,"
        " row_number() over (order by order_id) n from taptouch.orders where updated_at >= %s and updated_at < %s"
        " and updated_at > loaded_at + %s and (%s::text is null or account = %s)) f",
        (start, end, FUTURE_TOLERANCE, mine, mine),
    )
    return cur.fetchone()


def _order_checks(conn, windows: list[OrderWindow], account: Account = DEFAULT) -> list[dg.AssetCheckResult]:
    """The orders asset's three checks over the run's windows."""
    # a named account checks only its own rows; the single account, every row (all are 'default')
    mine = None if account.is_default else account.name
    start, end = windows[0].start, windows[-1].end
    with conn.cursor() as cur:
        quarantined, reasons = _quarantined_orders(cur, [w.key for w in windows], mine)
        checked, bad_subtotal, bad_paid = _arithmetic_mismatches(cur, start, end, mine)
        future, future_ids = _future_dated_orders(cur, start, end, mine)
    return [
        dg.AssetCheckResult(
            check_name=CHECK_QUARANTINE,
            asset_key=account.key("orders"),
            passed=quarantined == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "quarantined": quarantined,
                "reasons": reasons[:2000] or "none",
                "where": "select * from taptouch.quarantine where entity = 'order' and resolved_at is null",
            },
        ),
        dg.AssetCheckResult(
            check_name=CHECK_ARITHMETIC,
            asset_key=account.key("orders"),
            passed=bad_subtotal == 0 and bad_paid == 0,
            metadata={"orders_checked": checked, "subtotal_mismatches": bad_subtotal, "payment_mismatches": bad_paid},
        ),
        dg.AssetCheckResult(
            check_name=CHECK_FUTURE,
            asset_key=account.key("orders"),
            passed=future == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "future_dated": future,
                "orders": future_ids or "none",
                "tolerance_s": int(FUTURE_TOLERANCE.total_seconds()),
            },
        ),
    ]


def _proven_check(
    conn, windows: list[OrderWindow], store_ids: list[int], account: Account = DEFAULT
) -> dg.AssetCheckResult:
    """``orders_proven``: every listed store's window of the run proven complete, its warehouse set
    the latest complete listing's (:func:`pipelines.warehouse.proofs.window_problems`)."""
    problems = proofs.window_problems(conn, [w.key for w in windows], store_ids)
    lines = "\n".join(f"- {p}" for p in problems[:50])
    if len(problems) > 50:
        lines += f"\n- and {len(problems) - 50} more"
    return dg.AssetCheckResult(
        check_name=CHECK_PROVEN,
        asset_key=account.key("orders"),
        passed=not problems,
        description=None if not problems else f"{len(problems)} store window(s) not proven:\n{lines}",
        metadata={
            "stores_checked": len(store_ids),
            "windows_checked": len(windows),
            "not_proven": len(problems),
            "problems": (lines or "none")[:4000],
            "repair": proofs.repair_hint(problems, account.key_string("orders")),
        },
    )


def _resources(context, account: Account) -> tuple[TaptouchResource, PostgresResource]:
    return getattr(context.resources, account.resource_key), context.resources.warehouse


def _asset_args(account: Account) -> dict:
    """What every API-calling asset of ``account`` shares: its group, pool, resources and retries."""
    return {
        "group_name": account.group,
        "kinds": KINDS,
        "pool": account.pool,
        "retry_policy": RETRY,
        "required_resource_keys": {account.resource_key, "warehouse"},
    }


def stores_asset(account: Account = DEFAULT) -> dg.AssetsDefinition:
    """``stores`` of one account: the only writer of ``taptouch.stores``."""
    preview_sql = (
        "select store_id, name, status, timezone, currency from taptouch.stores"
        + ("" if account.is_default else " where account = :account")
        + " order by store_id limit :n"
    )

    @dg.asset(
        key=account.key("stores"),
        **_asset_args(account),
        metadata=table_metadata("taptouch.stores"),
        description="Every store the Taptouch token may read, upserted into taptouch.stores (its only writer).",
    )
    def stores(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Every store the token may read; upserted."""
        taptouch, warehouse = _resources(context, account)
        with step_errors():
            with run_context(taptouch, warehouse, store_api=True, account=account, context=context) as run:
                counts, records = sync_stores(
                    run.client, run.conn, run_id=context.run.run_id, day_start=run.settings.business_day_start
                )
            params = {"n": PREVIEW_ROWS, **({} if account.is_default else {"account": account.name})}
            preview = read_frame(warehouse, preview_sql, **params)
        return dg.MaterializeResult(
            metadata={
                **counts.as_dict(),
                "dagster/row_count": len(records),
                **run.api_metadata(),
                "preview": markdown_preview(preview),
            }
        )

    return stores


def _orders_check_specs(orders_key) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            CHECK_QUARANTINE,
            asset=orders_key,
            description="No order of the partition was quarantined (warns when some were).",
        ),
        dg.AssetCheckSpec(
            CHECK_ARITHMETIC,
            asset=orders_key,
            description="Σ item totals = subtotal; Σ payments = total for completed orders.",
        ),
        dg.AssetCheckSpec(
            CHECK_FUTURE,
            asset=orders_key,
            description="No order of the partition is dated more than 5 minutes after it was "
            "loaded (a till's clock running ahead; such orders load, and warn).",
        ),
        money_check.check_spec(orders_key),
        aggregates.check_spec(orders_key),
        dg.AssetCheckSpec(
            CHECK_PROVEN,
            asset=orders_key,
            description="Each store's window was completely listed (every page read, no error), and the "
            "warehouse's set of (order_id, updated_at) in the window is the latest complete listing's. "
            "A failure names the store and the window, and the partition to re-run.",
        ),
    ]


RUN_TOTALS_TAG = "taptouch/{}_totals"
"""The run tag holding an orders run's totals (``{}``: ``orders``, or ``north_orders`` for an account)."""


def _report_run(
    context: dg.AssetExecutionContext, account: Account, windows: list[OrderWindow], total: SyncResult, run: RunContext
) -> None:
    """The run's totals: a line of the run's log and a run tag, which the run's page shows."""
    summary = _run_summary(windows, total, run.api_metadata())
    context.log.info(f"{account.key_string('orders')} run totals: {summary}")
    context.instance.add_run_tags(context.run.run_id, {RUN_TOTALS_TAG.format(account.named("orders")): summary})


def orders_asset(account: Account = DEFAULT) -> dg.AssetsDefinition:
    """``orders`` of one account: daily partitions, each day one window (:class:`OrderWindow`)."""

    @dg.asset(
        key=account.key("orders"),
        **_asset_args(account),
        partitions_def=daily_partitions,
        metadata=table_metadata(
            "taptouch.orders", "taptouch.order_items", "taptouch.order_payments", "taptouch.order_refunds"
        ),
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=settings.backfill_partitions_per_run()),
        check_specs=_orders_check_specs(account.key("orders")),
        description="Orders (with items, payments, refunds) whose updated_at falls in the partition's UTC day, "
        "for every store in the API's store listing, which this asset reads itself (for the stores' "
        "time zones, i.e. business dates); it never writes taptouch.stores.",
    )
    def orders(context: dg.AssetExecutionContext, config: OrdersConfig) -> dg.MaterializeResult:
        """Orders updated in each UTC day, for every listed store, with items, payments and refunds."""
        taptouch, warehouse = _resources(context, account)
        windows = [OrderWindow.day(key) for key in context.partition_keys]
        with step_errors(), run_context(taptouch, warehouse, account=account, context=context) as run:
            mode = _sync_mode(context, config, run)
            context.log.info(f"orders: {mode}")
            listing = run.store_listing(context)
            total, per_window = _load_orders_days(context, run, listing, windows, mode)
            # a connection of its own: run.conn sat idle while the windows loaded on theirs (a
            # server's idle_session_timeout, a NAT or a proxy may have closed it meanwhile)
            with run.connect() as conn:
                checks = _order_checks(conn, windows, account)
                mine = None if account.is_default else account.name  # a named account: its own rows
                money = money_check.reconcile(conn, windows[0].start, windows[-1].end, mine)
                checks.append(money_check.check_result(money, account.key("orders")))
                checks.append(
                    aggregates.check_result(conn, windows[0].start, windows[-1].end, mine, account.key("orders"))
                )
                checks.append(_proven_check(conn, windows, listing.store_ids, account))
                figures = _window_figures(conn, windows, listing.store_ids, account)
        _report_run(context, account, windows, total, run)
        run_wide = {"full_refresh": mode == FULL_REFRESH, **_listing_metadata(listing)}  # true of each partition
        for window in windows:  # each partition its own figures; the run's totals stay in the run
            own = _window_metadata(per_window[window.key], figures[window.key], run.meter.figures(window.key))
            context.add_asset_metadata({**own, **run_wide}, partition_key=window.key)
        _fail_if_stores_failed(
            total,
            f"{account.key_string('orders')} {windows[0].key}..{windows[-1].key}",
            {**_store_metadata(total, listing), **run.api_metadata()},
        )
        return dg.MaterializeResult(check_results=checks)

    return orders


def inventory_asset(account: Account = DEFAULT) -> dg.AssetsDefinition:
    """``inventory`` of one account: current levels and today's snapshot."""

    @dg.asset(
        key=account.key("inventory"),
        **_asset_args(account),
        metadata=table_metadata("taptouch.inventory_levels", "taptouch.inventory_snapshots"),
        description="Current stock levels (taptouch.inventory_levels) and today's taptouch.inventory_snapshots, for "
        "every store in the API's store listing, which this asset reads itself (for the stores' time "
        "zones, i.e. snapshot dates); it never writes taptouch.stores.",
    )
    def inventory(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Current stock per store, replacing the previous list; today's snapshot per product."""
        taptouch, warehouse = _resources(context, account)
        with step_errors(), run_context(taptouch, warehouse, account=account, context=context) as run:
            listing = run.store_listing(context)
            result = sync_inventory(
                run.client,
                run.conn,
                store_ids=listing.store_ids,
                timezones=listing.timezones,
                run_id=context.run.run_id,
                progress=context.log.info,
                confirm_s=run.settings.reconcile_confirm_s,
            )
        metadata = {**_store_metadata(result, listing), **run.api_metadata()}
        _fail_if_stores_failed(result, account.key_string("inventory"), metadata)
        return dg.MaterializeResult(metadata=metadata)

    return inventory


def taptouch_assets(account: Account = DEFAULT) -> list[dg.AssetsDefinition]:
    """``stores``, ``orders`` and ``inventory`` of one account: under its key prefix (none for the
    single-account setup), in its pool, with its resource (``account.resource_key``)."""
    return [stores_asset(account), orders_asset(account), inventory_asset(account)]
