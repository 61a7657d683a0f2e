-- analytics.business_days: whether each store's business date is completely loaded.
-- One row per (store_id, business_date) that has an order (any status) or an inventory snapshot,
-- for stores in taptouch.stores (the distinct days are read by one index probe each, never by
-- scanning the orders). Whether the day is complete is analytics.load_coverage's verdict: each orders
-- window (UTC day) overlapping the day was completely listed for the store (taptouch.listing_proofs)
-- after the day, or the window, ended; a store with no order in a window needs its own complete
-- listing too (a failed listing proves nothing). A day load_coverage does not know (no listing of its
-- windows was ever proven: loaded before migration 0016, or never), and a day that has not ended,
-- are partial.
-- Columns:
--   store_id        the store
--   store_name      its name (taptouch.stores.name)
--   business_date   the store's business date (as in every view's business_date)
--   day_complete    true when every orders window overlapping the day was completely listed after the
--                   day (or the window) ended: the day's figures are final except for later edits
--   day_starts_at   the instant the business day starts: the store's day start (local wall-clock
--                   time, taptouch.business_day_bounds) on that date
--   day_ends_at     the store's day start on the next date
--   windows         the orders windows (UTC days, YYYY-MM-DD) overlapping the day
--   windows_loaded  those of them completely listed after the day (or the window) ended
--   account         the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
create or replace view analytics.business_days as
with recursive order_days (store_id, business_date) as (
    -- the distinct (store, business date) of the orders, one index probe each (orders_store_business_date)
    (select store_id, business_date from taptouch.orders where business_date is not null
     order by store_id, business_date limit 1)
    union all
    select following.store_id, following.business_date
    from order_days
    cross join lateral (
        select orders.store_id, orders.business_date from taptouch.orders as orders
        where (orders.store_id, orders.business_date) > (order_days.store_id, order_days.business_date)
        order by orders.store_id, orders.business_date limit 1
    ) as following
),
snapshot_days (snapshot_date, store_id) as (
    -- the distinct (date, store) of the inventory snapshots, one probe each of their primary key
    (select snapshot_date, store_id from taptouch.inventory_snapshots order by snapshot_date, store_id limit 1)
    union all
    select following.snapshot_date, following.store_id
    from snapshot_days
    cross join lateral (
        select snaps.snapshot_date, snaps.store_id from taptouch.inventory_snapshots as snaps
        where (snaps.snapshot_date, snaps.store_id) > (snapshot_days.snapshot_date, snapshot_days.store_id)
        order by snaps.snapshot_date, snaps.store_id limit 1
    ) as following
),
days as (
    select store_id, business_date from order_days
    union
    select store_id, snapshot_date from snapshot_days
),
windows as (
    select
        days.store_id,
        stores.name as store_name,
        days.business_date,
        local_day.starts_at as day_starts_at,
        local_day.ends_at as day_ends_at,
        to_char(utc_days.utc_day, 'YYYY-MM-DD') as window_key,
        utc_days.utc_day::timestamp at time zone 'UTC' as window_starts_at,
        (utc_days.utc_day + 1)::timestamp at time zone 'UTC' as window_ends_at,
        least(local_day.ends_at, (utc_days.utc_day + 1)::timestamp at time zone 'UTC') as loaded_after,
        stores.account
    from days
    join taptouch.stores as stores using (store_id)
    -- taptouch.business_day_bounds(store_id, business_date), written out so that it plans as a join
    -- (a call per row of that function costs about 8 us, 1 s per 140k store-days)
    cross join lateral (
        select
            (days.business_date + coalesce(dated.day_starts, time '00:00')) at time zone stores.timezone as starts_at,
            (days.business_date + 1 + coalesce(dated.day_starts, time '00:00')) at time zone stores.timezone as ends_at
        from (select) as one
        left join taptouch_meta.business_day_starts as dated on dated.store_id = days.store_id
    ) as local_day
    cross join lateral (
        select generated::date as utc_day
        from generate_series((local_day.starts_at at time zone 'UTC')::date,
                             ((local_day.ends_at - interval '1 microsecond') at time zone 'UTC')::date,
                             interval '1 day') as generated
        limit 3  -- three around a daylight-saving change at most (limit: the planner's estimate)
    ) as utc_days
),
per_day as (
    select
        store_id,
        store_name,
        business_date,
        day_starts_at,
        day_ends_at,
        array_agg(window_key order by window_key) as windows,
        account
    from windows
    group by store_id, store_name, business_date, day_starts_at, day_ends_at, account
)
select
    per_day.store_id,
    per_day.store_name,
    per_day.business_date,
    coalesce(coverage.day_complete and coverage.windows = per_day.windows, false) as day_complete,
    per_day.day_starts_at,
    per_day.day_ends_at,
    per_day.windows,
    coalesce(coverage.windows_proven, '{}') as windows_loaded,
    per_day.account::text as account
from per_day
left join analytics.load_coverage as coverage
    on coverage.store_id = per_day.store_id and coverage.business_date = per_day.business_date;
