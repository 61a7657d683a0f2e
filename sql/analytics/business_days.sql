-- analytics.business_days: whether each store's business date is completely loaded.
-- One row per (store_id, business_date) that has an order (any status) or an inventory snapshot,
-- for stores in taptouch.stores (the distinct days are read by one index probe each, never by
-- scanning the orders). Whether the day is complete is analytics.load_coverage's verdict (one row by
-- key per day, taptouch.business_day_coverage; the dated views join load_coverage directly): each orders
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
)
select
    days.store_id,
    stores.name as store_name,
    days.business_date,
    coalesce(coverage.day_complete, false) as day_complete,
    -- a day no listing touched has no coverage row: its bounds and windows computed here, by the
    -- same functions the coverage rows are computed with (migration 0020)
    coalesce(coverage.day_starts_at,
             (select bounds.starts_at from taptouch.business_day_bounds(days.store_id, days.business_date) as bounds))
        as day_starts_at,
    -- null past 9999-12-30 23:59:59.999999 UTC, the last instant the warehouse holds (a reader east
    -- of UTC could not read a later one), as load_coverage's and daily_restatements'
    (select case when ends.at <= timestamptz '9999-12-30 23:59:59.999999+00' then ends.at end
     from (select coalesce(coverage.day_ends_at,
                           (select bounds.ends_at
                            from taptouch.business_day_bounds(days.store_id, days.business_date) as bounds)) as at
          ) as ends) as day_ends_at,
    coalesce(coverage.windows,
             (select array_agg(windows.window_key order by windows.window_key)
              from taptouch.business_day_windows(days.store_id, days.business_date) as windows))
        as windows,
    coalesce(coverage.windows_proven, '{}') as windows_loaded,
    stores.account::text as account
from days
join taptouch.stores as stores using (store_id)
left join analytics.load_coverage as coverage
    on coverage.store_id = days.store_id and coverage.business_date = days.business_date;
