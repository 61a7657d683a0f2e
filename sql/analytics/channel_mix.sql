-- analytics.channel_mix: sales per store, business date, order source and fulfillment type.
-- depends: orders, stores
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
create or replace view analytics.channel_mix as
with sales as (
    select order_id, store_id, business_date, source, fulfillment_type, total
    from taptouch.orders
    where status in ('completed', 'partially_refunded', 'refunded')
),
order_refunds as (
    select r.order_id, sum(r.amount) as refunded
    from taptouch.order_refunds as r
    join sales using (order_id)
    group by r.order_id
),
daily as (
    select
        sales.store_id,
        sales.business_date,
        sales.source,
        sales.fulfillment_type,
        count(*) as order_count,
        coalesce(sum(order_refunds.refunded), 0) as refunds,
        sum(sales.total) as total_sales
    from sales
    left join order_refunds using (order_id)
    group by sales.store_id, sales.business_date, sales.source, sales.fulfillment_type
)
select
    daily.store_id,
    stores.name as store_name,
    daily.business_date,
    daily.source,
    daily.fulfillment_type,
    daily.order_count,
    daily.refunds::numeric(14, 2) as refunds,
    (daily.total_sales - daily.refunds)::numeric(14, 2) as net_sales
from daily
left join taptouch.stores as stores using (store_id);
