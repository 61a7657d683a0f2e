-- analytics.hourly_sales: sales per store, business date and local hour of the day (for heatmaps).
-- One row per (store_id, business_date, local_hour) that has sales; an hour without sales has no
-- row (read it as 0). Sales, refunds and exclusions are those of daily_store_sales: orders with
-- status completed, partially_refunded or refunded; open and voided orders are left out; refunds
-- count against the hour the order was created, whenever they were made.
-- Reads taptouch.sales_hours: the figures per store-day kept current by every load, in the load's
-- transaction (pipelines/warehouse/aggregates.py; the same figures as grouping
-- analytics.sales_orders, read from a few rows per store-day). docs/warehouse.md.
-- Columns:
--   store_id       the store
--   store_name     its name (taptouch.stores.name)
--   business_date  the store's business date of the order's created_at (taptouch.orders.business_date)
--   local_hour     0-23, extract(hour from created_at at time zone the store's time zone, as
--                  taptouch.pg_zone names it to PostgreSQL: 'CET' is CET with its summer time): the wall-clock
--                  hour, also when the business day starts later (with a 04:00 start, hours 0-3 are in
--                  the previous business date's rows)
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
    sales.store_id,
    stores.name as store_name,
    sales.business_date,
    sales.local_hour,
    sales.order_count,
    round(sales.refunds, 2) as refunds,
    round(sales.net_sales, 2) as net_sales,
    sales.account,
    stores.currency,
    coalesce(days.day_complete, false) as day_complete
from taptouch.sales_hours as sales
left join taptouch.stores as stores using (store_id)
left join analytics.load_coverage as days
    on days.store_id = sales.store_id and days.business_date = sales.business_date;
