-- analytics.payment_mix: payments per store, business date and payment method.
-- One row per (store_id, business_date, method) with payments on sales orders (status completed,
-- partially_refunded or refunded, dated by the order's business date as in daily_store_sales).
-- Payments on open orders (e.g. a gift card part-payment) and voided orders are left out.
-- Refunds are order-level and carry no method, so they are not taken off any method here: Σ amount
-- over a store-day's methods is the tendered Σ total, and daily_store_sales.net_sales =
-- Σ amount − refunds.
-- Reads taptouch.sales_payments: the figures per store-day kept current by every load, in the load's
-- transaction (pipelines/warehouse/aggregates.py; the same figures as grouping
-- analytics.sales_orders, read from a few rows per store-day). docs/warehouse.md.
-- Columns:
--   store_id       the store
--   store_name     its name (taptouch.stores.name)
--   business_date  the store's business date of the order's created_at (taptouch.orders.business_date)
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
select
    payments.store_id,
    stores.name as store_name,
    payments.business_date,
    payments.method,
    payments.payment_count,
    round(payments.amount, 2) as amount,
    round(payments.surcharges, 2) as surcharges,
    round(payments.tips, 2) as tips,
    payments.account,
    stores.currency,
    coalesce(days.day_complete, false) as day_complete
from taptouch.sales_payments as payments
left join taptouch.stores as stores using (store_id)
left join analytics.load_coverage as days
    on days.store_id = payments.store_id and days.business_date = payments.business_date;
