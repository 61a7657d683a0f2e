-- analytics.inventory_history: daily stock snapshots beside the units sold that day.
-- One row per taptouch.inventory_snapshots row (snapshot_date, store_id, product_id): the stock at
-- the last inventory sync of that store-local date, joined to the product's sales of the same
-- business date (snapshot_date = business_date, matched by product_id). Sales are items of orders
-- with status completed, partially_refunded or refunded; open and voided are left out, refunds
-- (order-level money) do not reduce units, as in inventory_status.
-- Columns:
--   snapshot_date   the store's business date of the snapshot (= the business_date of the sales beside it)
--   store_id        the store
--   store_name      its name (taptouch.stores.name)
--   product_id      the product
--   sku, name, category, unit   as currently listed in inventory_levels (null once delisted)
--   on_hand         units in stock at the snapshot
--   cost_price      unit cost at the snapshot
--   sell_price      unit sell price at the snapshot
--   stock_value     greatest(on_hand, 0) × cost_price, rounded to cents (negative stock counts as 0)
--   units_sold      Σ item quantity of the product on sales orders of that business date (0 if none)
--   item_sales      Σ item total of those lines (0.00 if none)
--   account         the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency        ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete    true when the store's business date is completely loaded (analytics.business_days):
--                   false for the current day and the edge days a load has not fully covered
create or replace view analytics.inventory_history as
with sales as (
    select order_id, store_id, business_date
    from analytics.sales_orders
),
daily_units as (
    select
        sales.store_id,
        sales.business_date,
        items.product_id,
        sum(items.quantity) as units_sold,
        sum(items.total) as item_sales
    from taptouch.order_items as items
    join sales using (order_id)
    where items.product_id is not null
    group by sales.store_id, sales.business_date, items.product_id
)
select
    snapshots.snapshot_date,
    snapshots.store_id,
    stores.name as store_name,
    snapshots.product_id,
    levels.sku,
    levels.name,
    levels.category,
    levels.unit,
    snapshots.on_hand,
    snapshots.cost_price,
    snapshots.sell_price,
    round(greatest(snapshots.on_hand, 0) * snapshots.cost_price, 2) as stock_value,
    coalesce(daily_units.units_sold, 0) as units_sold,
    round(coalesce(daily_units.item_sales, 0), 2) as item_sales,
    snapshots.account::text as account,
    stores.currency,
    coalesce(days.day_complete, false) as day_complete
from taptouch.inventory_snapshots as snapshots
left join daily_units
    on daily_units.store_id = snapshots.store_id
    and daily_units.business_date = snapshots.snapshot_date
    and daily_units.product_id = snapshots.product_id
left join taptouch.inventory_levels as levels
    on levels.store_id = snapshots.store_id
    and levels.product_id = snapshots.product_id
left join taptouch.stores as stores
    on stores.store_id = snapshots.store_id
left join analytics.load_coverage as days
    on days.store_id = snapshots.store_id and days.business_date = snapshots.snapshot_date;
