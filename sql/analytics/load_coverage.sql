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
-- ended yet is never complete. Reads taptouch.business_day_coverage: the verdict's inputs per store
-- and business date, kept by triggers whenever a proof, a store's time zone or its business-day start
-- changes (migration 0020, taptouch.business_day_coverage_of), so that a filter on store and date, or
-- a join by (store_id, business_date), reads one row by key whatever the history's length.
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
select
    coverage.store_id,
    stores.name as store_name,
    coverage.business_date,
    (coverage.all_proven and coverage.day_ends_at <= now()) as day_complete,
    -- (null past 9999-12-30 23:59:59.999999 UTC: a reader east of UTC could not read it, as daily_restatements' next_day_ends_at)
    case when coverage.day_starts_at <= timestamptz '9999-12-30 23:59:59.999999+00' then coverage.day_starts_at end as day_starts_at,
    case when coverage.day_ends_at <= timestamptz '9999-12-30 23:59:59.999999+00' then coverage.day_ends_at end as day_ends_at,
    coverage.windows,
    coverage.windows_proven,
    coverage.last_proven_at,
    coverage.proven_by,
    stores.account::text as account
from taptouch.business_day_coverage as coverage
-- a left join: the triggers keep rows only for stores in taptouch.stores, and a view joining
-- load_coverage without reading its store columns (or any of its columns) then skips this join (or both)
left join taptouch.stores as stores using (store_id);
