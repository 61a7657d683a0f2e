-- analytics.channel_mix: sales per store, business date, order source and fulfillment type.
-- One row per (store_id, business_date, source, fulfillment_type) that has sales. Sales, refunds
-- and exclusions are those of daily_store_sales (completed, partially_refunded and refunded orders;
-- open and voided left out; refunds attributed to the order's business date and channel).
-- Over a store-day, Σ order_count and Σ net_sales equal daily_store_sales.
-- Reads taptouch.sales_channels: the figures per store-day kept current by every load, in the load's
-- transaction (pipelines/warehouse/aggregates.py; the same figures as grouping
-- analytics.sales_orders, read from a few rows per store-day). docs/warehouse.md.
-- Columns:
--   store_id          the store
--   store_name        its name (taptouch.stores.name)
--   business_date     the store's business date of the order's created_at (taptouch.orders.business_date)
--   source            where the order came from: pos | kiosk | online | ubereats | doordash (null if unsent)
--   fulfillment_type  dine_in | takeaway | delivery | pickup (null if unsent)
--   order_count       number of sales orders
--   refunds           Σ refund amounts of those orders
--   net_sales         Σ total − refunds
--   account           the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency          ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete      true when the store's business date is completely loaded (analytics.business_days):
--                     false for the current day and the edge days a load has not fully covered
create or replace view analytics.channel_mix as
select
    sales.store_id,
    stores.name as store_name,
    sales.business_date,
    sales.source,
    sales.fulfillment_type,
    sales.order_count,
    round(sales.refunds, 2) as refunds,
    round(sales.net_sales, 2) as net_sales,
    sales.account,
    stores.currency,
    coalesce(days.day_complete, false) as day_complete
from taptouch.sales_channels as sales
left join taptouch.stores as stores using (store_id)
left join analytics.load_coverage as days
    on days.store_id = sales.store_id and days.business_date = sales.business_date;
