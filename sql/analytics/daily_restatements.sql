-- analytics.daily_restatements: why did a day's figures change? A store-day's net sales as first loaded, at the end of the next business day, and now.
-- One row per (store_id, business_date) that has a sales order in any version of taptouch.order_history
-- or now. Each figure follows the rules of analytics.sales_orders (sales: completed,
-- partially_refunded or refunded; net = total − refunds; refunds count on the order's business
-- date), over a different version of each order:
-- - first loaded: each order as a load first saw it (its earliest first_seen_at in the history);
-- - at the end of the next business day: each order in the newest version a load had seen by the
--   end of the business date after this one (the store's day bounds, by first_seen_at: when the
--   warehouse knew it) if that version lies on this date, leaving out orders the reconciliation
--   had marked deleted by then and not restored by then (taptouch.deletion_log); null until that
--   day has ended;
-- - now: the orders as taptouch.orders holds them (deleted ones left out), as in daily_store_sales.
-- Each version counts at its own store and on its own business date (from its created_at, by the
-- store's zone and day start as the warehouse holds them now; versions recorded before migration
-- 0024 on the order's current date). Versions the retention (TAPTOUCH_HISTORY_DAYS) pruned are
-- missing from the first two.
-- Columns:
--   store_id              the store
--   store_name            its name (taptouch.stores.name)
--   business_date         the store's business date (taptouch.orders.business_date)
--   next_day_ends_at      when the next business day ends: the instant the middle figures are taken at
--                         (null when that is after year 9999's last readable instant: the day never ends)
--   first_loaded_orders   sales orders, each as first loaded
--   first_loaded_net      net sales, each order as first loaded
--   next_day_orders       sales orders as the warehouse knew them at next_day_ends_at (null before then)
--   next_day_net          net sales as the warehouse knew them at next_day_ends_at (null before then)
--   now_orders            sales orders now
--   now_net               net sales now (analytics.daily_store_sales.net_sales, 0 when no row)
--   restated_after_next_day  now_net − next_day_net: what changed after the next day ended (null before then)
--   orders_changed        orders of the day with more than one version in the history
--   account               the Taptouch account: its TAPTOUCH_ACCOUNTS name, 'default' for a single account
--   currency              ISO 4217 code of the store's money, every amount of the row is in it (taptouch.stores.currency)
--   day_complete          true when the store's business date is completely loaded (analytics.business_days)
create or replace view analytics.daily_restatements as
with versions as (
    select
        history.order_id,
        history.version,
        history.first_seen_at,
        history.store_id,
        case when history.created_at is null
                  or (history.created_at = orders.created_at and history.store_id = orders.store_id)
             then orders.business_date
             else coalesce(taptouch.business_date_at(history.store_id, history.created_at), orders.business_date)
        end as business_date,
        orders.account::text as account,
        case when history.status in ('completed', 'partially_refunded', 'refunded') then 1 else 0 end as sale,
        case when history.status in ('completed', 'partially_refunded', 'refunded')
             then history.total - history.refunds else 0 end as net,
        row_number() over (partition by history.order_id order by history.first_seen_at, history.version)
            as seen_rank,
        -- when a newer version was first seen: until then this one was the newest the warehouse knew
        min(history.first_seen_at) over (partition by history.order_id order by history.version
                                         rows between 1 following and unbounded following) as superseded_at,
        count(*) over (partition by history.order_id) as versions
    from taptouch.order_history as history
    join taptouch.orders as orders using (order_id)
),
days as (
    select store_id, business_date, account from versions where sale = 1
    union
    select store_id, business_date, account::text from taptouch.orders
    where status in ('completed', 'partially_refunded', 'refunded') and deleted_at is null
),
bounded as (
    -- null when the next day ends after the last instant the warehouse holds (records.py, _MAX_INSTANT:
    -- 9999-12-30 23:59:59.999999 UTC): that day never ends within years 1-9999, and a later instant
    -- (year 10000) cannot be read back by psycopg, which would make the whole view unreadable
    select days.*,
           case when next_day.ends_at <= timestamptz '9999-12-30 23:59:59.999999+00' then next_day.ends_at end
               as next_day_ends_at
    from days
    left join lateral taptouch.business_day_bounds(days.store_id, days.business_date + 1) as next_day on true
),
first_loaded as (
    select store_id, business_date, sum(sale) as orders, sum(net) as net,
           count(*) filter (where versions > 1) as orders_changed
    from versions where seen_rank = 1
    group by store_id, business_date
),
next_known as (
    -- each version that was the newest known when the day after its own date ended
    select
        versions.store_id, versions.business_date,
        case when deleted.order_id is not null then 0 else versions.sale end as sale,
        case when deleted.order_id is not null then 0 else versions.net end as net
    from versions
    join bounded using (store_id, business_date)
    -- marked deleted by then, and not restored by then (a restore clears orders.deleted_at)
    left join lateral (
        select log.order_id from taptouch.deletion_log as log
        where log.order_id = versions.order_id and log.deleted_at < bounded.next_day_ends_at
          and (log.restored_at is null or log.restored_at >= bounded.next_day_ends_at)
        limit 1
    ) as deleted on true
    where versions.first_seen_at < bounded.next_day_ends_at and bounded.next_day_ends_at <= now()
      and (versions.superseded_at is null or versions.superseded_at >= bounded.next_day_ends_at)
),
next_day as (
    select store_id, business_date, sum(sale) as orders, sum(net) as net
    from next_known
    group by store_id, business_date
),
now_sales as (
    select store_id, business_date, count(*) as orders, sum(net_total) as net
    from (
        select orders.store_id, orders.business_date,
               orders.total - coalesce((select sum(refunds.amount) from taptouch.order_refunds as refunds
                                        where refunds.order_id = orders.order_id), 0) as net_total
        from taptouch.orders as orders
        where orders.status in ('completed', 'partially_refunded', 'refunded') and orders.deleted_at is null
    ) as sales
    group by store_id, business_date
)
select
    bounded.store_id,
    stores.name as store_name,
    bounded.business_date,
    bounded.next_day_ends_at,
    coalesce(first_loaded.orders, 0) as first_loaded_orders,
    round(coalesce(first_loaded.net, 0), 2) as first_loaded_net,
    case when bounded.next_day_ends_at <= now() then coalesce(next_day.orders, 0) end as next_day_orders,
    case when bounded.next_day_ends_at <= now() then round(coalesce(next_day.net, 0), 2) end as next_day_net,
    coalesce(now_sales.orders, 0) as now_orders,
    round(coalesce(now_sales.net, 0), 2) as now_net,
    case when bounded.next_day_ends_at <= now()
         then round(coalesce(now_sales.net, 0) - coalesce(next_day.net, 0), 2) end as restated_after_next_day,
    coalesce(first_loaded.orders_changed, 0) as orders_changed,
    bounded.account,
    stores.currency,
    coalesce(days.day_complete, false) as day_complete
from bounded
left join first_loaded using (store_id, business_date)
left join next_day using (store_id, business_date)
left join now_sales using (store_id, business_date)
left join taptouch.stores as stores on stores.store_id = bounded.store_id
left join analytics.load_coverage as days
    on days.store_id = bounded.store_id and days.business_date = bounded.business_date;
