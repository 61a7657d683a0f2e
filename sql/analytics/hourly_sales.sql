-- analytics.hourly_sales: sales per store, business date and local hour of the day (for heatmaps).
-- depends: orders, stores
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
-- Over a store-day, Σ order_count and Σ net_sales equal daily_store_sales.
create or replace view analytics.hourly_sales as
with sales as (
    select
        orders.order_id,
        orders.store_id,
        orders.business_date,
        extract(hour from orders.created_at at time zone stores.timezone)::integer as local_hour,
        orders.total
    from taptouch.orders as orders
    join taptouch.stores as stores using (store_id)
    where orders.status in ('completed', 'partially_refunded', 'refunded')
),
order_refunds as (
    select r.order_id, sum(r.amount) as refunded
    from taptouch.order_refunds as r
    join sales using (order_id)
    group by r.order_id
),
hourly as (
    select
        sales.store_id,
        sales.business_date,
        sales.local_hour,
        count(*) as order_count,
        coalesce(sum(order_refunds.refunded), 0) as refunds,
        sum(sales.total) as total_sales
    from sales
    left join order_refunds using (order_id)
    group by sales.store_id, sales.business_date, sales.local_hour
)
select
    hourly.store_id,
    stores.name as store_name,
    hourly.business_date,
    hourly.local_hour,
    hourly.order_count,
    hourly.refunds::numeric(14, 2) as refunds,
    (hourly.total_sales - hourly.refunds)::numeric(14, 2) as net_sales
from hourly
left join taptouch.stores as stores using (store_id);
