-- analytics.load_coverage: per store and business date, whether complete listings prove the day loaded.
-- One row per (store_id, business_date) overlapping an orders window that some listing of the store
-- touched (taptouch.listing_proofs: complete or failed), for stores in taptouch.stores. Orders are
-- loaded in UTC-day windows of updated_at (the orders partitions), and an order is updated no
-- earlier than it is created, so the orders of a business day lie in the windows whose UTC day
-- overlaps it (two, or three around a daylight-saving change), or later ones (late edits). A day is
-- complete when each of those windows has a complete listing of the store (every page read, no
-- error, pipelines/warehouse/proofs.py) that started after the day ended, or, for a window that ends
-- first, after the window ended (nothing enters a window once it has ended), by at least the
-- lookback a record may take to reach the API's listings (listing_proofs.settled_at). A store with no order
-- in a window needs its own complete listing too: a failed listing proves nothing. A day that has not
-- ended yet is never complete. Reads the proofs only (one row per store and window), never the orders.
-- Columns:
--   store_id        the store
--   store_name      its name (taptouch.stores.name)
--   business_date   the store's business date (as in every view's business_date)
--   day_complete    true when every orders window overlapping the day was completely listed after the
--                   day (or the window) ended: the day's figures are final except for later edits
--   day_starts_at   when the business day starts, as an instant (timestamptz)
--   day_ends_at     when it ends (the next day's start)
--   windows         the orders windows (UTC days, YYYY-MM-DD) overlapping the day
--   windows_proven  those of them completely listed after the day (or the window) ended
--   last_proven_at  when the latest complete listing of one of the day's windows started (null: none)
--   proven_by       the Dagster run of that listing
--   account         the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
create or replace view analytics.load_coverage as
with days as (
    select distinct proofs.store_id, dates.business_date
    from taptouch.listing_proofs as proofs
    cross join lateral (  -- a UTC day overlaps two business dates at most (limit: the planner's estimate)
        select generated::date as business_date
        from generate_series(
            taptouch.business_date_at(proofs.store_id, proofs.window_start),
            taptouch.business_date_at(proofs.store_id, proofs.window_end - interval '1 microsecond'),
            interval '1 day'
        ) as generated
        limit 3
    ) as dates
),
windows as (
    select
        days.store_id,
        stores.name as store_name,
        days.business_date,
        local_day.starts_at as day_starts_at,
        local_day.ends_at as day_ends_at,
        to_char(utc_days.utc_day, 'YYYY-MM-DD') as window_key,
        least(local_day.ends_at, (utc_days.utc_day + 1)::timestamp at time zone 'UTC') as proven_after,
        stores.account
    from days
    join taptouch.stores as stores using (store_id)
    cross join lateral taptouch.business_day_bounds(days.store_id, days.business_date) as local_day
    cross join lateral (
        select generated::date as utc_day
        from generate_series((local_day.starts_at at time zone 'UTC')::date,
                             ((local_day.ends_at - interval '1 microsecond') at time zone 'UTC')::date,
                             interval '1 day') as generated
        limit 3  -- three around a daylight-saving change at most (limit: the planner's estimate)
    ) as utc_days
),
judged as (
    select
        windows.*,
        proofs.listed_at,
        proofs.proved_by,
        case when proofs.complete and coalesce(proofs.settled_at, proofs.listed_at) >= windows.proven_after
             then windows.window_key end
            as proven_window
    from windows
    left join taptouch.listing_proofs as proofs
        on proofs.store_id = windows.store_id and proofs."window" = windows.window_key and proofs.complete
)
select
    store_id,
    store_name,
    business_date,
    (count(proven_window) = count(*) and day_ends_at <= now()) as day_complete,
    day_starts_at,
    day_ends_at,
    array_agg(window_key order by window_key) as windows,
    coalesce(array_agg(proven_window order by proven_window) filter (where proven_window is not null), '{}')
        as windows_proven,
    max(listed_at) as last_proven_at,
    (array_agg(proved_by order by listed_at desc nulls last))[1] as proven_by,
    account::text as account
from judged
group by store_id, store_name, business_date, day_starts_at, day_ends_at, account;
