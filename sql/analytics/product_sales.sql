-- analytics.product_sales: units and item sales per store, business date and product.
-- One row per (store_id, business_date, product_id, product_name, category) sold on that day, the
-- product as named on the order lines. Only items of sales orders count (status completed,
-- partially_refunded or refunded); items of open and voided orders are left out, as in
-- daily_store_sales.
-- Refunds are order-level in Taptouch (an amount, not lines), so they are NOT allocated to products:
-- the items of a refunded or partially refunded order still count here, in full. Likewise the
-- order-level discount is not allocated. So Σ net_item_sales over a store-day equals
-- daily_store_sales.gross_sales (Σ subtotal), not its net_sales.
-- Columns:
--   store_id          the store
--   store_name        its name (taptouch.stores.name)
--   business_date     local date of the order's created_at in the store's time zone
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
with sales as (
    select order_id, store_id, business_date, account, day_complete
    from analytics.sales_orders
),
items as (
    select
        sales.store_id,
        sales.business_date,
        sales.account,
        sales.day_complete,
        items.order_id,
        items.item_id,
        items.product_id,
        items.name as product_name,
        items.category,
        items.quantity,
        items.total,
        items.discount,
        items.modifiers
    from taptouch.order_items as items
    join sales using (order_id)
),
item_modifiers as (
    select
        items.order_id,
        items.item_id,
        sum(
            items.quantity
            * (modifier ->> 'price')::numeric
            * coalesce((modifier ->> 'quantity')::numeric, 1)
        ) as modifier_revenue
    from items
    cross join lateral jsonb_array_elements(items.modifiers) as modifier
    group by items.order_id, items.item_id
),
daily as (
    select
        items.store_id,
        items.business_date,
        items.product_id,
        items.product_name,
        items.category,
        count(distinct items.order_id) as order_count,
        sum(items.quantity) as units,
        sum(items.total) as net_item_sales,
        sum(items.discount) as item_discounts,
        coalesce(sum(item_modifiers.modifier_revenue), 0) as modifier_revenue,
        items.account,
        items.day_complete
    from items
    left join item_modifiers using (order_id, item_id)
    group by items.store_id, items.business_date, items.product_id, items.product_name, items.category,
             items.account, items.day_complete
)
select
    daily.store_id,
    stores.name as store_name,
    daily.business_date,
    daily.product_id,
    daily.product_name,
    daily.category,
    daily.order_count,
    daily.units,
    daily.net_item_sales::numeric(14, 2) as net_item_sales,
    daily.item_discounts::numeric(14, 2) as item_discounts,
    round(daily.modifier_revenue, 2)::numeric(14, 2) as modifier_revenue,
    daily.account,
    stores.currency,
    daily.day_complete
from daily
left join taptouch.stores as stores using (store_id);
