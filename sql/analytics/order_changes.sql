-- analytics.order_changes: what each version of an order changed against the version before it.
-- One row per version of taptouch.order_history (every distinct version of an order a load saw), in
-- version order per order. The previous version is the next older version the history holds
-- (by version instant, whenever it was seen); the first version held has none: its *_before
-- columns are null and it is compared with an order not seen before (no status, no refunds).
-- "After the business day closed": the version's updated_at (when the change was made at the
-- source) is at or after the end of the order's business date at its store (taptouch.business_day_bounds).
-- Columns:
--   order_id              the order
--   version               the version: its updated_at as exact epoch seconds, every digit the API sent
--   previous_version      the version before it in the history (null: the first version held)
--   store_id              the order's store
--   store_name            its name (taptouch.stores.name)
--   business_date         the order's business date (taptouch.orders.business_date)
--   updated_at            the version's updated_at (to the microsecond)
--   first_seen_at         when a load first saw the version
--   first_seen_run_id     the Dagster run whose load first saw it (null outside a run)
--   status_before         the previous version's status (null: the first version held)
--   status                this version's status
--   status_changed        true when the status differs from the previous version's (false for the first)
--   total_before          the previous version's total (null: the first version held)
--   total                 this version's total
--   total_change          total − total_before (null for the first version held)
--   items_changed         true when the items (lines, quantities, prices, modifiers) differ from the
--                         previous version's (false for the first)
--   refunds_before        Σ refund amounts of the previous version (null: the first version held)
--   refunds               Σ refund amounts of this version (0 when none)
--   refunds_change        refunds − refunds_before (for the first version held: its refunds)
--   day_ends_at           when the order's business day ended (the store's day bounds)
--   refunded_after_close  true when this version added refunds (refunds_change > 0) and its updated_at is
--                         at or after day_ends_at
--   voided_after_close    true when this version voided the order (status voided, the previous version's
--                         not) and its updated_at is at or after day_ends_at
--   deleted_at            when the reconciliation found the API no longer lists the order (null: listed)
--   account               the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency              ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete          true when the store's business date is completely loaded (analytics.business_days)
create or replace view analytics.order_changes as
with versions as (
    select
        history.order_id,
        history.version,
        lag(history.version) over by_version as previous_version,
        history.updated_at,
        history.first_seen_at,
        history.first_seen_run_id,
        lag(history.status) over by_version as status_before,
        history.status,
        lag(history.total) over by_version as total_before,
        history.total,
        lag(lines.items) over by_version as items_before,
        lines.items,
        lag(history.refunds) over by_version as refunds_before,
        history.refunds
    from taptouch.order_history as history
    -- the lines as a set: ordered by line id, each line's modifiers by modifier id (the API's array
    -- order carries no meaning; order_items is keyed by item_id)
    cross join lateral (
        select jsonb_agg(
                   case when jsonb_typeof(line -> 'modifiers') = 'array'
                        then jsonb_set(line, '{modifiers}', coalesce(
                                 (select jsonb_agg(modifier order by modifier -> 'id', modifier::text)
                                  from jsonb_array_elements(line -> 'modifiers') as modifier), '[]'::jsonb))
                        else line end
                   order by line -> 'id', line::text) as items
        from jsonb_array_elements(case when jsonb_typeof(history.raw -> 'items') = 'array'
                                       then history.raw -> 'items' else '[]'::jsonb end) as line
    ) as lines
    window by_version as (partition by history.order_id order by history.version)
)
select
    versions.order_id,
    versions.version,
    versions.previous_version,
    orders.store_id,
    stores.name as store_name,
    orders.business_date,
    versions.updated_at,
    versions.first_seen_at,
    versions.first_seen_run_id,
    versions.status_before,
    versions.status,
    coalesce(versions.status is distinct from versions.status_before and versions.previous_version is not null,
             false) as status_changed,
    versions.total_before,
    versions.total,
    versions.total - versions.total_before as total_change,
    coalesce(versions.items is distinct from versions.items_before and versions.previous_version is not null,
             false) as items_changed,
    versions.refunds_before,
    versions.refunds,
    versions.refunds - coalesce(versions.refunds_before, 0) as refunds_change,
    -- (null past 9999-12-30 23:59:59.999999 UTC: a reader east of UTC could not read it, as daily_restatements' next_day_ends_at)
    case when bounds.ends_at <= timestamptz '9999-12-30 23:59:59.999999+00' then bounds.ends_at end as day_ends_at,
    coalesce(versions.refunds > coalesce(versions.refunds_before, 0) and versions.updated_at >= bounds.ends_at,
             false) as refunded_after_close,
    coalesce(versions.status = 'voided' and versions.status_before is distinct from 'voided'
             and versions.updated_at >= bounds.ends_at, false) as voided_after_close,
    orders.deleted_at,
    orders.account::text as account,
    stores.currency,
    coalesce(days.day_complete, false) as day_complete
from versions
join taptouch.orders as orders using (order_id)
left join taptouch.stores as stores on stores.store_id = orders.store_id
left join lateral taptouch.business_day_bounds(orders.store_id, orders.business_date) as bounds on true
left join analytics.load_coverage as days
    on days.store_id = orders.store_id and days.business_date = orders.business_date;
