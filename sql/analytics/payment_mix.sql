-- analytics.payment_mix: payments per store, business date and payment method.
-- One row per (store_id, business_date, method) with payments on sales orders (status completed,
-- partially_refunded or refunded, dated by the order's business date as in daily_store_sales).
-- Payments on open orders (e.g. a gift card part-payment) and voided orders are left out.
-- Refunds are order-level and carry no method, so they are not taken off any method here: Σ amount
-- over a store-day's methods is the tendered Σ total, and daily_store_sales.net_sales =
-- Σ amount − refunds.
-- Columns:
--   store_id       the store
--   store_name     its name (taptouch.stores.name)
--   business_date  local date of the order's created_at in the store's time zone
--   method         cash | visa | mastercard | amex | eftpos | gift_card | points (as the API sends it)
--   payment_count  number of payments
--   amount         Σ payment amount (card surcharges included, tips not)
--   surcharges     Σ card surcharge inside those amounts
--   tips           Σ tips given with those payments (on top of amount)
--   account        the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency       ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete   true when the store's business date is completely loaded (analytics.business_days):
--                  false for the current day and the edge days a load has not fully covered
create or replace view analytics.payment_mix as
with sales as (
    select order_id, store_id, business_date, account, day_complete
    from analytics.sales_orders
),
payments as (
    select
        sales.store_id,
        sales.business_date,
        sales.account,
        sales.day_complete,
        payments.method,
        payments.amount,
        payments.surcharge,
        payments.tip
    from taptouch.order_payments as payments
    join sales using (order_id)
),
daily as (
    select
        store_id,
        business_date,
        method,
        count(*) as payment_count,
        sum(amount) as amount,
        sum(surcharge) as surcharges,
        sum(tip) as tips,
        account,
        day_complete
    from payments
    group by store_id, business_date, method, account, day_complete
)
select
    daily.store_id,
    stores.name as store_name,
    daily.business_date,
    daily.method,
    daily.payment_count,
    daily.amount::numeric(14, 2) as amount,
    daily.surcharges::numeric(14, 2) as surcharges,
    daily.tips::numeric(14, 2) as tips,
    daily.account,
    stores.currency,
    daily.day_complete
from daily
left join taptouch.stores as stores using (store_id);
