-- analytics.inventory_status: current stock of every listed product, its value and how long it lasts.
-- One row per (store_id, product_id) in taptouch.inventory_levels (the products the API listed at
-- the last inventory sync). Units sold come from items of sales orders (status completed,
-- partially_refunded or refunded; open and voided left out, as in daily_store_sales), matched by
-- product_id. Refunds are order-level money, not returned stock, so they do not reduce units sold.
-- "Last 28 days" = the 28 complete business dates before today, today being the store's current
-- business date (taptouch.business_date_at: its day start counts; today's partial sales are not
-- in the average).
-- Columns:
--   store_id              the store
--   store_name            its name (taptouch.stores.name)
--   product_id, sku, name, category, unit   the product as the inventory API lists it
--   on_hand               units in stock (can be negative when sales outran recorded receipts)
--   reorder_level         the level at which to reorder (null if unset)
--   cost_price            unit cost
--   sell_price            unit sell price
--   stock_value           greatest(on_hand, 0) × cost_price, rounded to cents: negative stock counts
--                         as 0, not as a negative value (null when cost_price is null)
--   below_reorder         on_hand < reorder_level (false when reorder_level is null)
--   stock_out             on_hand <= 0
--   units_sold_28d        Σ item quantity of the product over the last 28 days
--   avg_daily_units_28d   units_sold_28d / 28, rounded to 3 decimals
--   days_of_cover         greatest(on_hand, 0) / (units_sold_28d / 28) (computed as × 28 / units,
--                         one exact division), rounded to 1 decimal;
--                         null without sales in the last 28 days, 0 when out of stock
--   updated_at            when the API last changed the level
--   synced_at             when the pipeline last wrote the row
--   account               the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency              ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
create or replace view analytics.inventory_status as
with levels as (
    select
        levels.*,
        taptouch.business_date_at(levels.store_id, now()) as local_today
    from taptouch.inventory_levels as levels
    join taptouch.stores as stores using (store_id)
),
sales as (
    select order_id, store_id, business_date
    from analytics.sales_orders
),
recent_units as (
    select
        levels.store_id,
        levels.product_id,
        sum(items.quantity) as units_sold
    from levels
    join sales
        on sales.store_id = levels.store_id
        and sales.business_date >= levels.local_today - 28
        and sales.business_date < levels.local_today
    join taptouch.order_items as items
        on items.order_id = sales.order_id
        and items.product_id = levels.product_id
    group by levels.store_id, levels.product_id
)
select
    levels.store_id,
    stores.name as store_name,
    levels.product_id,
    levels.sku,
    levels.name,
    levels.category,
    levels.unit,
    levels.on_hand,
    levels.reorder_level,
    levels.cost_price,
    levels.sell_price,
    round(greatest(levels.on_hand, 0) * levels.cost_price, 2) as stock_value,
    coalesce(levels.on_hand < levels.reorder_level, false) as below_reorder,
    levels.on_hand <= 0 as stock_out,
    coalesce(recent_units.units_sold, 0) as units_sold_28d,
    round(coalesce(recent_units.units_sold, 0) / 28, 3) as avg_daily_units_28d,
    round(greatest(levels.on_hand, 0) * 28 / nullif(recent_units.units_sold, 0), 1) as days_of_cover,
    levels.updated_at,
    levels.synced_at,
    levels.account::text as account,
    stores.currency
from levels
left join recent_units using (store_id, product_id)
left join taptouch.stores as stores using (store_id);
