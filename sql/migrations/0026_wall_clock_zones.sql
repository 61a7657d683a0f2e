-- 0026: a store's wall clock in SQL for the zone names PostgreSQL reads as abbreviations.
-- PostgreSQL looks a zone name up among its time zone abbreviations first: `at time zone 'CET'` is
-- the abbreviation CET, a fixed +01:00, never the IANA zone CET with its summer time. Four IANA
-- names that a store may carry (CET, MET, EET, WET) are such abbreviations in the Default set, so
-- every local hour of such a store was an hour off all summer (an order at 00:30 CEST counted at
-- 23:00 of its business date), and its business days' bounds were an hour late. Business dates were
-- right: they are computed in Python (pipelines/warehouse/records.py, business_date).
-- taptouch.pg_zone(name) gives the name PostgreSQL must be given for the IANA zone `name`: those four
-- as the zones they are links to since tzdata 2024b (the same rules for every date since 1996),
-- every other name unchanged (EST, MST, HST, GMT, UTC, UCT, Zulu are abbreviations too, with the
-- zone's own fixed offset). Every SQL use of a store's zone goes through it: these functions here,
-- the sales aggregates (pipelines/warehouse/aggregates.py) and analytics.sales_orders.
-- Repairs: the hourly aggregates and the business-day coverage of stores in those zones (none: instant).

create or replace function taptouch.pg_zone(p_zone text) returns text
language sql immutable parallel safe as $$
    select case p_zone
        when 'CET' then 'Europe/Brussels'
        when 'MET' then 'Europe/Brussels'
        when 'EET' then 'Europe/Athens'
        when 'WET' then 'Europe/Lisbon'
        else p_zone
    end
$$;

comment on function taptouch.pg_zone(text) is
    'The name to give PostgreSQL''s AT TIME ZONE for a store''s IANA zone: CET, MET, EET and WET (which PostgreSQL reads as fixed-offset abbreviations) as the zones they link to, any other name unchanged';

create or replace function taptouch.business_date_at(p_store_id bigint, p_at timestamptz) returns date
language sql stable parallel safe as $$
    select ((p_at at time zone taptouch.pg_zone(s.timezone)) - taptouch.business_day_start(p_store_id))::date
    from taptouch.stores as s where s.store_id = p_store_id
$$;

create or replace function taptouch.business_day_bounds(
    p_store_id bigint, p_business_date date, out starts_at timestamptz, out ends_at timestamptz
) returns setof record
language sql stable parallel safe rows 1 as $$
    select (p_business_date + st.day_start) at time zone taptouch.pg_zone(s.timezone),
           (p_business_date + 1 + st.day_start) at time zone taptouch.pg_zone(s.timezone)
    from taptouch.stores as s
    cross join lateral (select taptouch.business_day_start(p_store_id) as day_start) as st
    where s.store_id = p_store_id
$$;

-- as in 0020, the zone read through taptouch.pg_zone
create or replace function taptouch.business_day_coverage_of(p_store_id bigint, p_from date, p_to date)
returns table (
    store_id bigint, business_date date, day_starts_at timestamptz, day_ends_at timestamptz,
    windows text[], windows_proven text[], last_proven_at timestamptz, proven_by text
)
language plpgsql stable set jit = off as $$
declare
    zone text;
    day_start time;
begin
    select taptouch.pg_zone(stores.timezone), coalesce(dated.day_starts, time '00:00') into zone, day_start
    from taptouch.stores as stores
    left join taptouch_meta.business_day_starts as dated on dated.store_id = stores.store_id
    where stores.store_id = p_store_id;
    if not found then
        return;
    end if;
    return query
    with days as (
        select distinct dates.business_date
        from taptouch.listing_proofs as proofs
        cross join lateral (  -- a UTC day overlaps two business dates at most (limit: the planner's estimate)
            select generated::date as business_date
            from generate_series(
                ((proofs.window_start at time zone zone) - day_start)::date,
                (((proofs.window_end - interval '1 microsecond') at time zone zone) - day_start)::date,
                interval '1 day'
            ) as generated
            limit 3
        ) as dates
        where proofs.store_id = p_store_id
          -- a business date lies within two days of the UTC days its windows cover (an index range)
          and proofs."window" >= coalesce(to_char(p_from - 2, 'YYYY-MM-DD'), '')
          and proofs."window" <= coalesce(to_char(p_to + 2, 'YYYY-MM-DD'), '9999')
    ),
    bounds as (
        select days.business_date,
               (days.business_date + day_start) at time zone zone as starts_at,
               (days.business_date + 1 + day_start) at time zone zone as ends_at
        from days
        where days.business_date between coalesce(p_from, '-infinity') and coalesce(p_to, 'infinity')
    ),
    judged as (
        select
            bounds.business_date,
            bounds.starts_at,
            bounds.ends_at,
            utc.window_key,
            proofs.listed_at,
            proofs.proved_by,
            case when proofs.complete
                      and coalesce(proofs.settled_at, proofs.listed_at) >= least(bounds.ends_at, utc.window_end)
                 then utc.window_key end as proven_window
        from bounds
        cross join lateral (
            select to_char(generated, 'YYYY-MM-DD') as window_key,
                   (generated::date + 1)::timestamp at time zone 'UTC' as window_end
            from generate_series((bounds.starts_at at time zone 'UTC')::date,
                                 ((bounds.ends_at - interval '1 microsecond') at time zone 'UTC')::date,
                                 interval '1 day') as generated
            limit 3
        ) as utc
        left join taptouch.listing_proofs as proofs
            on proofs.store_id = p_store_id and proofs."window" = utc.window_key and proofs.complete
    )
    select
        p_store_id,
        judged.business_date,
        judged.starts_at,
        judged.ends_at,
        array_agg(judged.window_key order by judged.window_key),
        coalesce(array_agg(judged.proven_window order by judged.proven_window)
                 filter (where judged.proven_window is not null), '{}'),
        max(judged.listed_at),
        (array_agg(judged.proved_by order by judged.listed_at desc nulls last))[1]
    from judged
    group by judged.business_date, judged.starts_at, judged.ends_at;
end
$$;

-- the hourly aggregates of the stores in those zones, recomputed (as aggregates.py computes them)
-- under the orders merge lock (pipelines/warehouse/merge.py, ORDERS.lock_key), which every writer of
-- the aggregates holds: a load merging meanwhile would otherwise add its store-days' rows beside these
select pg_advisory_xact_lock(791822641);

delete from taptouch.sales_hours as hours using taptouch.stores as stores
where stores.store_id = hours.store_id and stores.timezone in ('CET', 'MET', 'EET', 'WET');

insert into taptouch.sales_hours
    (store_id, business_date, local_hour, account, order_count, refunds, net_sales)
select sales.store_id, sales.business_date, sales.local_hour, sales.account, count(*), sum(sales.refunds),
       sum(sales.total - sales.refunds)
from (
    select orders.store_id, orders.business_date, orders.account::text as account, orders.total,
           extract(hour from orders.created_at at time zone taptouch.pg_zone(stores.timezone))::integer as local_hour,
           coalesce((select sum(r.amount) from taptouch.order_refunds as r where r.order_id = orders.order_id), 0)
               as refunds
    from taptouch.orders as orders
    join taptouch.stores as stores using (store_id)
    where stores.timezone in ('CET', 'MET', 'EET', 'WET')
      and orders.status in ('completed', 'partially_refunded', 'refunded') and orders.deleted_at is null
) as sales
group by sales.store_id, sales.business_date, sales.local_hour, sales.account;

select taptouch.refresh_business_day_coverage(stores.store_id, null, null)
from taptouch.stores as stores where stores.timezone in ('CET', 'MET', 'EET', 'WET');
