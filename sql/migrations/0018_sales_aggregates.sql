-- 0018: sales aggregates per store and business date (issue 23, flat cost), kept current by the
-- loads in the orders merge's transaction (pipelines/warehouse/aggregates.py), so that the analysts'
-- views (daily_store_sales, hourly_sales, channel_mix, payment_mix, product_sales) read a few rows
-- per store-day instead of every order. Each table holds, for every (store_id, business_date) with
-- sales orders (status completed, partially_refunded or refunded, deleted_at null), exactly the
-- rows the view's grouping gives; a store-day is always recomputed whole from taptouch.orders and
-- its children (never adjusted by deltas), and the orders asset's check compares them with a
-- from-scratch recomputation. Money sums are numeric without a scale limit: exact, as the views'.
-- The migration fills them from the orders held: one pass over the orders and each child table
-- (about a minute per ten million orders on a small machine; the loads wait on its lock).

create table if not exists taptouch.sales_days (
    store_id       bigint not null,
    business_date  date not null,
    account        text not null,
    order_count    bigint not null,
    gross_sales    numeric not null,
    discounts      numeric not null,
    refunds        numeric not null,
    net_sales      numeric not null,
    tax            numeric not null,
    total          numeric not null
);
create index if not exists sales_days_store_date on taptouch.sales_days (store_id, business_date);
create index if not exists sales_days_date on taptouch.sales_days (business_date);

create table if not exists taptouch.sales_hours (
    store_id       bigint not null,
    business_date  date not null,
    local_hour     integer,
    account        text not null,
    order_count    bigint not null,
    refunds        numeric not null,
    net_sales      numeric not null
);
create index if not exists sales_hours_store_date on taptouch.sales_hours (store_id, business_date);

create table if not exists taptouch.sales_channels (
    store_id          bigint not null,
    business_date     date not null,
    source            text,
    fulfillment_type  text,
    account           text not null,
    order_count       bigint not null,
    refunds           numeric not null,
    net_sales         numeric not null
);
create index if not exists sales_channels_store_date on taptouch.sales_channels (store_id, business_date);

create table if not exists taptouch.sales_payments (
    store_id       bigint not null,
    business_date  date not null,
    method         text not null,
    account        text not null,
    payment_count  bigint not null,
    amount         numeric not null,
    surcharges     numeric not null,
    tips           numeric not null
);
create index if not exists sales_payments_store_date on taptouch.sales_payments (store_id, business_date);
create index if not exists sales_payments_date on taptouch.sales_payments (business_date);

create table if not exists taptouch.sales_products (
    store_id          bigint not null,
    business_date     date not null,
    product_id        bigint,
    product_name      text,
    category          text,
    account           text not null,
    order_count       bigint not null,
    units             numeric not null,
    net_item_sales    numeric not null,
    item_discounts    numeric not null,
    modifier_revenue  numeric not null
);
create index if not exists sales_products_store_date on taptouch.sales_products (store_id, business_date);

-- the backfill: every store-day held (the statements of aggregates.py over every key)
create temp table agg_sales on commit drop as
select
    orders.order_id,
    orders.store_id,
    orders.business_date,
    orders.account::text as account,
    extract(hour from orders.created_at at time zone stores.timezone)::integer as local_hour,
    orders.source,
    orders.fulfillment_type,
    orders.subtotal,
    orders.discount,
    orders.total,
    orders.tax,
    coalesce(refunded.amount, 0) as refunds
from taptouch.orders as orders
left join taptouch.stores as stores using (store_id)
left join (
    select order_id, sum(amount) as amount from taptouch.order_refunds group by order_id
) as refunded using (order_id)
where orders.status in ('completed', 'partially_refunded', 'refunded') and orders.deleted_at is null
  and not exists (select from taptouch.sales_days);

insert into taptouch.sales_days
select store_id, business_date, account, count(*), sum(subtotal), sum(discount), sum(refunds),
       sum(total - refunds), sum(tax), sum(total)
from agg_sales group by store_id, business_date, account;

insert into taptouch.sales_hours
select store_id, business_date, local_hour, account, count(*), sum(refunds), sum(total - refunds)
from agg_sales group by store_id, business_date, local_hour, account;

insert into taptouch.sales_channels
select store_id, business_date, source, fulfillment_type, account, count(*), sum(refunds), sum(total - refunds)
from agg_sales group by store_id, business_date, source, fulfillment_type, account;

insert into taptouch.sales_payments
select sales.store_id, sales.business_date, payments.method, sales.account, count(*), sum(payments.amount),
       sum(payments.surcharge), sum(payments.tip)
from taptouch.order_payments as payments join agg_sales as sales using (order_id)
group by sales.store_id, sales.business_date, payments.method, sales.account;

insert into taptouch.sales_products
select sales.store_id, sales.business_date, items.product_id, items.name, items.category, sales.account,
       count(distinct items.order_id), sum(items.quantity), sum(items.total), sum(items.discount),
       coalesce(sum(modifiers.revenue), 0)
from taptouch.order_items as items
join agg_sales as sales using (order_id)
left join lateral (
    select sum(items.quantity * (modifier ->> 'price')::numeric * coalesce((modifier ->> 'quantity')::numeric, 1))
        as revenue
    from jsonb_array_elements(items.modifiers) as modifier
) as modifiers on true
group by sales.store_id, sales.business_date, items.product_id, items.name, items.category, sales.account;
