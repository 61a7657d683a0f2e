-- analytics.hourly_sales: sales per store, business date and local hour of the day (for heatmaps).
-- One row per (store_id, business_date, local_hour) that has sales; an hour without sales has no
-- row (read it as 0). Sales, refunds and exclusions are those of daily_store_sales: orders with
-- status completed, partially_refunded or refunded; open and voided orders are left out; refunds
-- count against the hour the order was created, whenever they were made.
-- Columns:
--   store_id       the store
--   store_name     its name (taptouch.stores.name)
--   business_date  local date of the order's created_at in the store's time zone
--   local_hour     0-23, extract(hour from created_at at time zone the store's time zone)
--   order_count    number of sales orders created in that hour
--   refunds        Σ refund amounts of those orders
--   net_sales      Σ total − refunds of those orders
--   account        the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency       ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete   true when the store's business date is completely loaded (analytics.business_days):
--                  false for the current day and the edge days a load has not fully covered
-- Over a store-day, Σ order_count and Σ net_sales equal daily_store_sales.
create or replace view analytics.hourly_sales as
select
    store_id,
    store_name,
    business_date,
    local_hour,
    count(*) as order_count,
    sum(refunds)::numeric(14, 2) as refunds,
    sum(net_total)::numeric(14, 2) as net_sales,
    account,
    currency,
    day_complete
from analytics.sales_orders
group by store_id, store_name, business_date, local_hour, account, currency, day_complete;
