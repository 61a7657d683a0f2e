-- analytics.sales_orders: every sales order, once, with its refunds — the one definition of "sales"
-- that every other view builds on.
-- Sales orders are orders with status completed, partially_refunded or refunded; open and voided
-- orders are not sales and appear in no analytics figure. Refunds are attributed to the order
-- (its business date, hour and channel), whenever they were made. Orders the API no longer returns
-- (taptouch.orders.deleted_at set by the reconciliation) are left out, and so from every view.
-- Columns:
--   order_id          the order
--   store_id          its store
--   store_name        the store's name (taptouch.stores.name)
--   business_date     the store's business date of created_at (taptouch.orders.business_date)
--   local_hour        0-23, the hour of created_at in the store's time zone
--   source            pos | kiosk | online | ubereats | doordash (null if unsent)
--   fulfillment_type  dine_in | takeaway | delivery | pickup (null if unsent)
--   status            completed | partially_refunded | refunded
--   subtotal          Σ item totals (GST-inclusive, before the order discount)
--   discount          order-level discount
--   total             what the customer paid: subtotal − discount + surcharge + rounding
--   tax               GST included in total
--   refunds           Σ refund amounts of the order (0 when none)
--   net_total         total − refunds
--   account           the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency          ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete      true when the store's business date is completely loaded (analytics.business_days):
--                     false for the current day and the edge days a load has not fully covered
create or replace view analytics.sales_orders as
with sales as (
    select
        orders.order_id,
        orders.store_id,
        stores.name as store_name,
        orders.business_date,
        extract(hour from orders.created_at at time zone taptouch.pg_zone(stores.timezone))::integer as local_hour,
        orders.source,
        orders.fulfillment_type,
        orders.status,
        orders.subtotal,
        orders.discount,
        orders.total,
        orders.tax,
        orders.account::text as account,
        stores.currency
    from taptouch.orders as orders
    left join taptouch.stores as stores using (store_id)
    where orders.status in ('completed', 'partially_refunded', 'refunded')
      and orders.deleted_at is null
),
order_refunds as (
    select refunds.order_id, sum(refunds.amount) as refunded
    from taptouch.order_refunds as refunds
    join sales using (order_id)
    group by refunds.order_id
)
select
    sales.order_id,
    sales.store_id,
    sales.store_name,
    sales.business_date,
    sales.local_hour,
    sales.source,
    sales.fulfillment_type,
    sales.status,
    sales.subtotal,
    sales.discount,
    sales.total,
    sales.tax,
    round(coalesce(order_refunds.refunded, 0), 2) as refunds,
    round(sales.total - coalesce(order_refunds.refunded, 0), 2) as net_total,
    sales.account,
    sales.currency,
    coalesce(days.day_complete, false) as day_complete
from sales
left join order_refunds using (order_id)
left join analytics.load_coverage as days
    on days.store_id = sales.store_id and days.business_date = sales.business_date;
