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
--   account          the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency         ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete     true when the store's business date is completely loaded (analytics.business_days):
--                    false for the current day and the edge days a load has not fully covered
create or replace view analytics.daily_store_sales as
select
    store_id,
    store_name,
    business_date,
    count(*) as order_count,
    sum(subtotal)::numeric(14, 2) as gross_sales,
    sum(discount)::numeric(14, 2) as discounts,
    sum(refunds)::numeric(14, 2) as refunds,
    sum(net_total)::numeric(14, 2) as net_sales,
    sum(tax)::numeric(14, 2) as tax,
    round(sum(total) / count(*), 2) as avg_order_value,
    account,
    currency,
    day_complete
from analytics.sales_orders
group by store_id, store_name, business_date, account, currency, day_complete;
