-- analytics.channel_mix: sales per store, business date, order source and fulfillment type.
-- One row per (store_id, business_date, source, fulfillment_type) that has sales. Sales, refunds
-- and exclusions are those of daily_store_sales (completed, partially_refunded and refunded orders;
-- open and voided left out; refunds attributed to the order's business date and channel).
-- Over a store-day, Σ order_count and Σ net_sales equal daily_store_sales.
-- Columns:
--   store_id          the store
--   store_name        its name (taptouch.stores.name)
--   business_date     local date of the order's created_at in the store's time zone
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
    store_id,
    store_name,
    business_date,
    source,
    fulfillment_type,
    count(*) as order_count,
    sum(refunds)::numeric(14, 2) as refunds,
    sum(net_total)::numeric(14, 2) as net_sales,
    account,
    currency,
    day_complete
from analytics.sales_orders
group by store_id, store_name, business_date, source, fulfillment_type, account, currency, day_complete;
