-- analytics.daily_store_sales: sales per store and business date (the store's local calendar date).
-- One row per (store_id, business_date) that has sales. Sales are orders with status completed,
-- partially_refunded or refunded; open and voided orders are left out of every figure.
-- Columns:
--   store_id         the store
--   store_name       its name (taptouch.stores.name)
--   business_date    local date of the order's created_at in the store's time zone
--   order_count      number of sales orders
--   gross_sales      Σ subtotal of those orders (GST-inclusive, before order discounts)
--   discounts        Σ order-level discount
--   refunds          Σ refund amounts of those orders, attributed to the order's business date
--   net_sales        Σ total − refunds
--   tax              Σ GST included in total
--   avg_order_value  Σ total / order_count, rounded to cents
create or replace view analytics.daily_store_sales as
with sales as (
    select order_id, store_id, business_date, subtotal, discount, total, tax
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
        count(*) as order_count,
        sum(sales.subtotal) as gross_sales,
        sum(sales.discount) as discounts,
        coalesce(sum(order_refunds.refunded), 0) as refunds,
        sum(sales.total) as total_sales,
        sum(sales.tax) as tax
    from sales
    left join order_refunds using (order_id)
    group by sales.store_id, sales.business_date
)
select
    daily.store_id,
    stores.name as store_name,
    daily.business_date,
    daily.order_count,
    daily.gross_sales::numeric(14, 2) as gross_sales,
    daily.discounts::numeric(14, 2) as discounts,
    daily.refunds::numeric(14, 2) as refunds,
    (daily.total_sales - daily.refunds)::numeric(14, 2) as net_sales,
    daily.tax::numeric(14, 2) as tax,
    round(daily.total_sales / daily.order_count, 2) as avg_order_value
from daily
left join taptouch.stores as stores using (store_id);
