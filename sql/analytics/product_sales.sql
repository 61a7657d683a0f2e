-- analytics.product_sales: units and item sales per store, business date and product.
-- One row per (store_id, business_date, product_id, product_name, category) sold on that day, the
-- product as named on the order lines. Only items of sales orders count (status completed,
-- partially_refunded or refunded); items of open and voided orders are left out, as in
-- daily_store_sales.
-- Refunds are order-level in Taptouch (an amount, not lines), so they are NOT allocated to products:
-- the items of a refunded or partially refunded order still count here, in full. Likewise the
-- order-level discount is not allocated. So Σ net_item_sales over a store-day equals
-- daily_store_sales.gross_sales (Σ subtotal), not its net_sales.
-- Reads taptouch.sales_products: the figures per store-day kept current by every load, in the load's
-- transaction (pipelines/warehouse/aggregates.py; the same figures as grouping
-- analytics.sales_orders, read from a few rows per store-day). docs/warehouse.md.
-- Columns:
--   store_id          the store
--   store_name        its name (taptouch.stores.name)
--   business_date     the store's business date of the order's created_at (taptouch.orders.business_date)
--   product_id        the product (null for lines without one)
--   product_name      order_items.name
--   category          order_items.category
--   order_count       sales orders with at least one line of the product
--   units             Σ item quantity
--   net_item_sales    Σ item total: quantity × (unit price + modifiers) − item discount, GST-inclusive
--   item_discounts    Σ item-level discount
--   modifier_revenue  Σ item quantity × modifier price × modifier quantity (part of net_item_sales,
--                     before item discounts), rounded to cents
--   account           the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency          ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete      true when the store's business date is completely loaded (analytics.business_days):
--                     false for the current day and the edge days a load has not fully covered
create or replace view analytics.product_sales as
select
    products.store_id,
    stores.name as store_name,
    products.business_date,
    products.product_id,
    products.product_name,
    products.category,
    products.order_count,
    products.units,
    round(products.net_item_sales, 2) as net_item_sales,
    round(products.item_discounts, 2) as item_discounts,
    round(products.modifier_revenue, 2) as modifier_revenue,
    products.account,
    stores.currency,
    coalesce(days.day_complete, false) as day_complete
from taptouch.sales_products as products
left join taptouch.stores as stores using (store_id)
left join analytics.load_coverage as days
    on days.store_id = products.store_id and days.business_date = products.business_date;
