-- analytics.daily_store_sales: sales per store and business date (the store's local calendar date).
-- One row per (store_id, business_date) that has sales. Sales are orders with status completed,
-- partially_refunded or refunded; open and voided orders are left out of every figure.
-- Reads taptouch.sales_days: the figures per store-day kept current by every load, in the load's
-- transaction (pipelines/warehouse/aggregates.py; the same figures as grouping
-- analytics.sales_orders, read from a few rows per store-day). docs/warehouse.md.
-- Columns:
--   store_id         the store
--   store_name       its name (taptouch.stores.name)
--   business_date    the store's business date of the order's created_at (taptouch.orders.business_date)
--   order_count      number of sales orders
--   gross_sales      Σ subtotal of those orders (GST-inclusive, before order discounts)
--   discounts        Σ order-level discount
--   refunds          Σ refund amounts of those orders, attributed to the order's business date
--   net_sales        Σ total − refunds
--   tax              Σ GST included in total
--   avg_order_value  Σ total / order_count, rounded to cents
--   account          the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency         ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete     true when the store's business date is completely loaded (analytics.business_days):
--                    false for the current day and the edge days a load has not fully covered
create or replace view analytics.daily_store_sales as
select
    sales.store_id,
    stores.name as store_name,
    sales.business_date,
    sales.order_count,
    round(sales.gross_sales, 2) as gross_sales,
    round(sales.discounts, 2) as discounts,
    round(sales.refunds, 2) as refunds,
    round(sales.net_sales, 2) as net_sales,
    round(sales.tax, 2) as tax,
    round(sales.total / sales.order_count, 2) as avg_order_value,
    sales.account,
    stores.currency,
    coalesce(days.day_complete, false) as day_complete
from taptouch.sales_days as sales
left join taptouch.stores as stores using (store_id)
left join analytics.load_coverage as days
    on days.store_id = sales.store_id and days.business_date = sales.business_date;
