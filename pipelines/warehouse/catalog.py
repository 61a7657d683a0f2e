"""The warehouse's descriptions: one text per schema, table, view and column, for Dagster and PostgreSQL.

Tables' texts live in :data:`TABLES` (applied migrations are immutable, so the text cannot live in
their files; the columns the record boundary fills take theirs from their declaration in
``entities.py``); views' in the ``-- Columns:`` block of their SQL header (:func:`view_columns`). The
Dagster column schemas read them, and :func:`apply_comments` writes them as ``COMMENT ON`` where
they differ. docs/warehouse.md, "Comments".
"""

from __future__ import annotations

import psycopg

from .aggregates import CATALOG as SALES_AGGREGATES
from .comments import write_comments
from .entities import INVENTORY, ITEM, MONEY_TEXT, ORDER, PAYMENT, REFUND, STORE, column_comments
from .views import SCHEMA as VIEW_SCHEMA
from .views import view_columns, view_description, view_names  # view_columns: also read from here

ACCOUNT = "the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account"
_MONEY = MONEY_TEXT
RAW = "the record exactly as the API sent it (unknown fields included)"
EXACT = "updated_at as exact epoch seconds with every fractional digit the API sent"

SCHEMAS: dict[str, str] = {
    "taptouch": "Taptouch data as synced from the API by taptouch-sync (one row per record, newest version wins)",
    "analytics": "The analysts' views (sql/analytics/*.sql), created or replaced by the analytics assets",
    "taptouch_meta": "taptouch-sync's working state: migrations applied, request budget and API usage, alert outbox",
    "taptouch_auth": "taptouch-sync's OAuth token store (Fernet-encrypted tokens); not for analysts",
}

TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "taptouch.stores": (
        "Stores as the Taptouch stores API lists them",
        {
            **column_comments(STORE),
            "raw": RAW,
            "loaded_at": "when the pipeline last wrote the row",
            "updated_at_exact": EXACT,
            "account": ACCOUNT,
        },
    ),
    "taptouch.orders": (
        "Orders (sales, open and voided) as the Taptouch orders API lists them; "
        "deleted_at marks the ones the API no longer returns",
        {
            **column_comments(ORDER),
            "raw": RAW,
            "loaded_at": "when the pipeline last wrote the row",
            "raw_hash": "blake2b-128 of raw's canonical JSON: an unchanged re-sync is recognised by it",
            "updated_at_exact": EXACT,
            "deleted_at": "set when the reconciliation found the API no longer returns the order; null: live",
            "account": ACCOUNT,
        },
    ),
    **{
        child.table_name: (text, {**column_comments(child), "account": ACCOUNT})
        for child, text in (
            (ITEM, "Order lines, replaced with their order"),
            (PAYMENT, "Payments of each order, replaced with their order"),
            (REFUND, "Refunds of each order (order-level amounts), replaced with their order"),
        )
    },
    "taptouch.inventory_levels": (
        "Current stock of every product the inventory API lists, per store",
        {
            **column_comments(INVENTORY),
            "raw": RAW,
            "synced_at": "when the pipeline last wrote the row",
            "updated_at_exact": EXACT,
            "account": ACCOUNT,
        },
    ),
    "taptouch.inventory_snapshots": (
        "Daily stock snapshots: the levels at the last inventory sync of each store-local date",
        {
            "snapshot_date": "the store's business date of the snapshot (its day start when taken)",
            "store_id": "the store",
            "product_id": "the product",
            "on_hand": "units in stock at the snapshot",
            "cost_price": f"unit cost at the snapshot; {_MONEY}",
            "sell_price": f"unit sell price at the snapshot; {_MONEY}",
            "synced_at": "when the pipeline wrote the snapshot",
            "account": ACCOUNT,
        },
    ),
    "taptouch.quarantine": (
        "Records that failed validation, kept with a reason a person understands",
        {
            "quarantine_id": "row id",
            "entity": "store | order | inventory",
            "record_key": "the record's id when it has one",
            "store_id": "the store the record belongs to, when known",
            "reason": "why the record was not loaded, in plain words",
            "raw": "the record as the API sent it (text in raw_text when not JSON-safe)",
            "raw_text": "the record's text when PostgreSQL cannot hold it as jsonb",
            "window": "partition key or window, e.g. 2026-11-02",
            "run_id": "the Dagster run that quarantined it",
            "quarantined_at": "when it was quarantined",
            "updated_at_exact": "the record's updated_at as exact epoch seconds, when readable: only a valid "
            "version at least as new resolves the row",
            "resolved_at": "set when the warehouse holds a valid version of the record at least as new",
            "account": ACCOUNT,
        },
    ),
    "taptouch.sync_log": (
        "Sync bookkeeping: one row per (entity, store, window) load that committed",
        {
            "sync_id": "row id",
            "entity": "what was loaded: stores | orders | inventory",
            "store_id": "the store loaded (null for a load of every store)",
            "window": "partition key or window loaded",
            "run_id": "the Dagster run of the load",
            "started_at": "when the load started",
            "finished_at": "when the load committed",
            "inserted": "records new to the warehouse",
            "updated": "records that replaced an older version",
            "unchanged": "records identical to the version held",
            "quarantined": "records quarantined (taptouch.quarantine)",
            "deleted": "records marked deleted or delisted",
            "account": ACCOUNT,
        },
    ),
    "taptouch.sync_marks": (
        "High-water marks of incremental order loads, per (entity, account, store, window)",
        {
            "entity": "what the mark is for (orders)",
            "store_id": "the store",
            "window": "the partition key or window",
            "high_water": "a re-run asks the API only from this mark minus TAPTOUCH_LOOKBACK",
            "full_loaded_at": "when a complete listing of the window last loaded (null: never)",
            "updated_at": "when the mark was last written",
            "account": ACCOUNT,
        },
    ),
    "taptouch.store_business_days": (
        "Per-store business day starts, edited by hand: they override TAPTOUCH_BUSINESS_DAY_START "
        "(the next run re-derives the store's business dates)",
        {
            "store_id": "the store",
            "day_starts": "local wall-clock time its business day starts, 00:00 to 11:59 "
            "(a sale before it counts toward the previous business date)",
            "note": "why, in plain words (optional)",
            "updated_at": "when the row was written (set it when editing)",
        },
    ),
    "taptouch_meta.business_day_starts": (
        "The business day start each store's stored business dates follow (written with the dates; "
        "no row: local midnight)",
        {
            "store_id": "the store",
            "day_starts": "local wall-clock time its stored business dates start at",
            "derived_at": "when its business dates were last derived with it",
        },
    ),
    "taptouch.deletion_candidates": (
        "Orders a complete listing did not return; a second listing confirms the deletion (taptouch.orders.deleted_at)",
        {
            "order_id": "the order missing from the listing",
            "account": ACCOUNT,
            "store_id": "its store",
            "first_missing_at": "when a listing first missed it (the judging run's clock)",
            "last_missing_at": "when a listing last missed it (the judging run's clock)",
            "listing_started_at": "the API's instant the first listing that missed it started",
            "seen_by": "the listing that first missed it (asset and run)",
        },
    ),
    "taptouch.forgotten_customers": (
        "The customers taptouch-sync forget-customer forgot: an order held with such a customer reduced to its id"
        " is the same content as the API's version with the customer's fields (they are not written back)",
        {
            "customer_id": "the customer's Taptouch id (the key)",
            "forgotten_at": "when forget-customer first forgot it",
        },
    ),
    "taptouch.deletion_log": (
        "Every deletion the reconciliation confirmed, and when the order was listed again (its deleted_at is"
        " then cleared); analytics.daily_restatements reads what was deleted when",
        {
            "order_id": "the order",
            "deleted_at": "its taptouch.orders.deleted_at as confirmed (with order_id, the key)",
            "restored_at": "when a listing brought it back (null: still deleted)",
            "account": ACCOUNT,
        },
    ),
    "taptouch.order_history": (
        "Every distinct version of an order a load saw, append-only (TAPTOUCH_HISTORY_DAYS prunes superseded ones;"
        " forget-customer and move-store rewrite fields)",
        {
            "order_id": "the order",
            "version": f"the version's {EXACT} (with order_id, the key)",
            "updated_at": "the version's updated_at (to the microsecond)",
            "store_id": "the store that listed the version",
            "status": "open | completed | partially_refunded | refunded | voided, in this version",
            "total": f"the version's total; {_MONEY}",
            "refunds": f"Σ refund amounts of the version (0 when none); {_MONEY}",
            "raw": RAW,
            "first_seen_at": "when a load first saw the version (its merge statement's time); for versions "
            "recorded by migration 0015, the order's loaded_at",
            "first_seen_run_id": "the Dagster run whose load first saw it (null outside a run, and for "
            "versions recorded by migration 0015)",
            "account": ACCOUNT,
            "created_at": "the version's created_at (null for versions recorded before migration 0024)",
        },
    ),
    "taptouch.inventory_delist_candidates": (
        "Products a suspicious inventory listing no longer lists; a second such listing confirms the delisting",
        {
            "store_id": "the store",
            "product_id": "the product missing from the listing",
            "account": ACCOUNT,
            "first_missing_at": "when a listing first missed it",
        },
    ),
    "taptouch.inventory_listings": (
        "Per store, the latest committed inventory listing: an older one committed later changes nothing",
        {
            "store_id": "the store",
            "listed_since": "the database's clock before the listing's first request",
            "run_id": "the Dagster run that loaded it (null outside a run)",
            "loaded_at": "when its load committed",
            "account": ACCOUNT,
        },
    ),
    **SALES_AGGREGATES,
    "taptouch.listing_proofs": (
        "Proven completeness: per store and orders window (UTC day), the latest complete listing of its "
        "orders and how far back complete listings cover the window (pipelines/warehouse/proofs.py)",
        {
            "proof_id": "row id",
            "store_id": "the store",
            "window": "the orders window: the partition key, the UTC day (YYYY-MM-DD)",
            "window_start": "the window's first instant (UTC midnight)",
            "window_end": "the instant after it (the next UTC midnight)",
            "complete": "complete listings cover the window from its start: proven (false: never completely listed)",
            "covered_from": "complete listings cover [covered_from, window_end); null: none ever did",
            "listed_from": "the latest complete listing asked for orders updated from this instant",
            "listed_at": "when the latest complete listing started (this machine's clock, as sync_log.started_at)",
            "api_started_at": "when it started: the API's clock, never after this machine's",
            "settled_at": "the earlier of listed_at and api_started_at, minus the lookback (TAPTOUCH_LOOKBACK):"
            " what the API held before it had"
            " settled when the listing started; load_coverage proves a day from it",
            "listed_orders": "orders it returned (readable ids), in the window",
            "first_updated_at": "the earliest updated_at it returned",
            "last_updated_at": "the latest updated_at it returned",
            "proven_orders": "rows of taptouch.listing_proof_orders: the window's proven set",
            "proved_by": "the Dagster run of the latest complete listing",
            "proved_at": "when that listing's proof committed",
            "failed_at": "when the latest listing that failed (or may have missed a record) ended",
            "failed_by": "its Dagster run",
            "failure": "why it proves nothing (the error, redacted)",
            "account": ACCOUNT,
        },
    ),
    "taptouch.business_day_coverage": (
        "Per store and business date, whether complete listings prove the day loaded: what"
        " analytics.load_coverage reads, kept by triggers on listing_proofs, stores and business_day_starts"
        " (migration 0020; the rule: taptouch.business_day_coverage_of)",
        {
            "store_id": "the store",
            "business_date": "the store's business date",
            "day_starts_at": "the instant the business day starts",
            "day_ends_at": "the instant it ends (the next day's start)",
            "windows": "the orders windows (UTC days, YYYY-MM-DD) overlapping the day",
            "windows_proven": "those of them completely listed after the day (or the window) ended, as settled",
            "all_proven": "windows_proven = windows: complete once the day has ended (the views compare day_ends_at"
            " with now())",
            "last_proven_at": "when the latest complete listing of one of the day's windows started",
            "proven_by": "the Dagster run of that listing",
        },
    ),
    "taptouch.listing_proof_orders": (
        "The set of (order_id, version) that complete listings proved for a store's orders window",
        {
            "proof_id": "the window's proof (taptouch.listing_proofs)",
            "order_id": "an order the listing returned",
            "updated_at_exact": "its version as listed: updated_at as exact epoch seconds",
        },
    ),
    "taptouch_auth.tokens": (
        "OAuth tokens, one row per (API, client, grant, label); tokens are Fernet ciphertexts, never usable as read",
        {
            "token_id": "row id",
            "base_url": "the Taptouch API the token is for",
            "client_id": "the OAuth client id",
            "grant_type": "client_credentials | authorization_code",
            "label": "authorization_code: the merchant's label; client_credentials: the scopes, sorted",
            "scopes": "the scopes granted",
            "access_token": "the access token, Fernet-encrypted",
            "access_issued_at": "when the access token was issued",
            "access_expires_at": "when the access token expires",
            "refresh_token": "the refresh token, Fernet-encrypted (null for client_credentials)",
            "refresh_expires_at": "when the refresh token expires",
            "store_ids": "the stores the token may read",
            "rotations": "refreshes so far",
            "last_error": "why the last refresh failed (redacted); null when it succeeded",
            "authorized_at": "when the merchant authorized",
            "updated_at": "when the row was last written",
        },
    ),
    "taptouch_meta.schema_migrations": (
        "Migrations of sql/migrations applied to this database",
        {
            "version": "the file's number (NNNN)",
            "name": "the file's name",
            "checksum": "sha256 of the file's bytes when applied (an applied file is immutable)",
            "applied_at": "when it was applied",
        },
    ),
    "taptouch_meta.request_budget": (
        "API request budget per Taptouch client id, shared by every process (a GCRA token bucket)",
        {
            "client_id": "the Taptouch client id",
            "rate": "requests per second, as last configured",
            "burst": "requests allowed back to back after a pause",
            "next_at": "the bucket's theoretical arrival time (server clock)",
            "blocked_until": "a 429's Retry-After: nobody sends before it",
            "requests": "slots granted, all processes together, since the row was created",
            "rate_limited": "429s reported by any process, since the row was created",
            "updated_at": "when the row was last written",
            "last_slot": "the slot the last request was given (server clock); null when it got none "
            "(a 429's pause, or a queue longer than 60 s: it waits and asks again)",
        },
    ),
    "taptouch_meta.history_retention": (
        "How far the order history's retention (TAPTOUCH_HISTORY_DAYS) has pruned; at most one row",
        {
            "singleton": "always true: the table holds one row at most",
            "days": "TAPTOUCH_HISTORY_DAYS at the last prune",
            "pruned_before": "superseded versions first seen before this instant are pruned",
            "pruned_at": "when the retention last moved pruned_before",
            "pruned": "versions pruned so far",
        },
    ),
    "taptouch_meta.api_usage": (
        "What each step of an API-calling asset asked of the Taptouch API, one row per "
        "step, written when it ends (failed or not)",
        {
            "id": "row number",
            "run_id": "the Dagster run (null outside one)",
            "asset": "the asset key, e.g. orders or north/orders",
            "account": ACCOUNT,
            "client_id": "the Taptouch client id whose request budget the requests used",
            "started_at": "when the step's client started",
            "ended_at": "when the step's client ended",
            "requests": "API requests sent, retries included (token requests not)",
            "retries": "of those, retries of a failed attempt",
            "rate_limited": "429s received",
            "token_requests": "OAuth token requests",
            "budget_wait_s": "wall-clock seconds during which some request of the step waited for the budget",
        },
    ),
    "taptouch_meta.alert_outbox": (
        "Alerts waiting for, or done with, delivery to TAPTOUCH_ALERT_WEBHOOK_URL",
        {
            "idempotency_key": "e.g. run-failure:<run id>; sent as the Idempotency-Key header",
            "kind": "run_failure | check_failure",
            "body": "the JSON POSTed (carries idempotency_key too)",
            "created_at": "when the alert was enqueued",
            "attempts": "POSTs tried so far",
            "next_attempt_at": "not tried again before this",
            "last_attempt_at": "when the last POST was tried",
            "last_error": "why the last POST failed (redacted); null once sent",
            "sent_at": "the webhook answered 2xx; null: still pending",
        },
    ),
}


def column_text(qualified: str, column: str) -> str | None:
    """The description of a table's column (None when the catalog has none)."""
    entry = TABLES.get(qualified)
    return entry[1].get(column) if entry else None


# ------------------------------------------------------------------------------------------ views


def comments() -> dict[tuple[str, str], tuple[str, dict[str, str]]]:
    """(schema, relation) -> (its comment, {column: comment}) for every table and view described."""
    found = {tuple(q.split(".", 1)): entry for q, entry in TABLES.items()}
    for name in view_names():
        found[(VIEW_SCHEMA, name)] = (view_description(name), dict(view_columns(name)))
    return found  # type: ignore[return-value]


# --------------------------------------------------------------------------------------- applying


def apply_comments(conn: psycopg.Connection, relations: list[tuple[str, str]] | None = None) -> int:
    """``COMMENT ON`` the named relations (``(schema, name)``) and their columns, where they exist
    and their comment differs; by default the schemas and every table of :data:`TABLES` (what the
    migrations create; the views are commented by ``apply_views``, under its lock, so a view being
    recreated by another process is never touched here). Returns the number of comments written."""
    everything = comments()
    if relations is None:
        wanted = {r: everything[r] for r in everything if r[0] != VIEW_SCHEMA}
    else:
        wanted = {r: everything[r] for r in relations if r in everything}
    return write_comments(conn, wanted, SCHEMAS if relations is None else None)
