-- analytics.business_days: whether each store's business date is completely loaded.
-- One row per (store_id, business_date) that has an order (any status) or an inventory snapshot,
-- for stores in taptouch.stores. Orders are loaded in UTC-day windows of updated_at (the orders
-- partitions: taptouch.sync_log rows with entity 'orders' and the day as window), and an order is
-- updated no earlier than it is created, so the orders of a store-local day lie in the windows whose
-- UTC day overlaps it (two, or three around a daylight-saving change), or later ones (late edits).
-- A business date is complete when each of those windows has a load that started after the local
-- day ended, or, for a window that ends first, after the window ended (nothing enters a window
-- once it has ended: its content is final then). A load counts for the store when it has a
-- taptouch.sync_log row for the store and window; a store with no order at all in a window is
-- covered by any load of that window by its account (a load writes a row only for the stores it
-- read orders of). A day that has not ended yet is never complete. A store's first day with a
-- window before the first loaded partition, and the current day, are therefore partial.
-- Columns:
--   store_id        the store
--   store_name      its name (taptouch.stores.name)
--   business_date   the store-local calendar date (as in every view's business_date)
--   day_complete    true when every orders window overlapping the day has loaded after the day (or
--                   the window) ended: the day's figures are final except for later edits
--   day_starts_at   local midnight starting the day, as an instant (timestamptz)
--   day_ends_at     local midnight ending it
--   windows         the orders windows (UTC days, YYYY-MM-DD) overlapping the day
--   windows_loaded  those of them loaded after the day (or the window) ended
--   account         the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
create or replace view analytics.business_days as
with days as (
    select store_id, business_date from taptouch.orders
    union
    select store_id, snapshot_date from taptouch.inventory_snapshots
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
    cross join lateral (
        select
            days.business_date::timestamp at time zone stores.timezone as starts_at,
            (days.business_date + 1)::timestamp at time zone stores.timezone as ends_at
    ) as local_day
    cross join lateral (
        select generated::date as utc_day
        from generate_series((local_day.starts_at at time zone 'UTC')::date,
                             ((local_day.ends_at - interval '1 microsecond') at time zone 'UTC')::date,
                             interval '1 day') as generated
    ) as utc_days
),
judged as (
    select
        windows.*,
        case when exists (
            select 1 from taptouch.sync_log as loads
            where loads.entity = 'orders' and loads.store_id = windows.store_id
              and loads."window" = windows.window_key and loads.started_at >= windows.loaded_after
        ) or (
            not exists (
                select 1 from taptouch.orders as orders
                where orders.store_id = windows.store_id
                  and orders.updated_at >= windows.window_starts_at and orders.updated_at < windows.window_ends_at
            )
            and exists (
                select 1 from taptouch.sync_log as loads
                where loads.entity = 'orders' and loads.account = windows.account
                  and loads."window" = windows.window_key and loads.started_at >= windows.loaded_after
            )
        ) then windows.window_key end as loaded_window
    from windows
),
per_day as (
    select
        store_id,
        store_name,
        business_date,
        day_starts_at,
        day_ends_at,
        array_agg(window_key order by window_key) as windows,
        coalesce(array_agg(loaded_window order by loaded_window) filter (where loaded_window is not null),
                 '{}') as windows_loaded,
        account
    from judged
    group by store_id, store_name, business_date, day_starts_at, day_ends_at, account
)
select
    store_id,
    store_name,
    business_date,
    (cardinality(windows_loaded) = cardinality(windows) and day_ends_at <= now()) as day_complete,
    day_starts_at,
    day_ends_at,
    windows,
    windows_loaded,
    account::text as account
from per_day;
