-- 0020: whether a store's business day is proven loaded, kept per store-day (issue 23: flat cost).
-- Until now analytics.load_coverage derived every store-day's verdict from taptouch.listing_proofs
-- on every query, and analytics.business_days enumerated every store-day of the warehouse, so each
-- dated view's day_complete grew with the history (330 ms at p95 at 2M orders for a month's payment
-- mix). taptouch.business_day_coverage holds the verdict's inputs per (store_id, business_date),
-- written by triggers whenever what it depends on changes:
--   * a listing proof is written or removed (taptouch.listing_proofs): the store-days its window
--     overlaps (one to three) are recomputed;
--   * a store is added or its time zone changes (taptouch.stores), or its business-day start is
--     recorded, changed or removed (taptouch_meta.business_day_starts): all its days are recomputed;
--   * listing_proofs is truncated: the table is emptied.
-- The rule lives in one place, taptouch.business_day_coverage_of (what the rows must be, computed
-- from the proofs), used by the triggers and by anything that checks the table. The views compare
-- day_ends_at with now() when read: a day that has not ended is never complete.
create table if not exists taptouch.business_day_coverage (
    store_id        bigint not null,
    business_date   date not null,
    day_starts_at   timestamptz not null,
    day_ends_at     timestamptz not null,
    windows         text[] not null,        -- the orders windows (UTC days, YYYY-MM-DD) the day overlaps
    windows_proven  text[] not null,        -- those completely listed after the day (or the window) ended
    all_proven      boolean generated always as (windows_proven = windows) stored,
    last_proven_at  timestamptz,
    proven_by       text,
    primary key (store_id, business_date)
);

-- The orders windows (UTC days) a store's business date overlaps: two, one (a store on UTC with the
-- day starting at midnight) or three (a 25-hour day around a daylight-saving change), with the day's
-- bounds. No row for a store not in taptouch.stores.
create or replace function taptouch.business_day_windows(p_store_id bigint, p_business_date date)
returns table (day_starts_at timestamptz, day_ends_at timestamptz, window_key text, window_end timestamptz)
language sql stable parallel safe rows 2 as $$
    select bounds.starts_at, bounds.ends_at, to_char(utc.utc_day, 'YYYY-MM-DD'),
           (utc.utc_day + 1)::timestamp at time zone 'UTC'
    from taptouch.business_day_bounds(p_store_id, p_business_date) as bounds
    cross join lateral (
        select generated::date as utc_day
        from generate_series((bounds.starts_at at time zone 'UTC')::date,
                             ((bounds.ends_at - interval '1 microsecond') at time zone 'UTC')::date,
                             interval '1 day') as generated
        limit 3  -- three at most; the limit is also the planner's estimate (not generate_series' 1,000)
    ) as utc
$$;

-- What taptouch.business_day_coverage must hold for a store's business dates in [p_from, p_to]
-- (null: unbounded): one row per business date overlapping an orders window that some listing of
-- the store touched (complete or failed). A window proves the day when its complete listing had
-- settled (listing_proofs.settled_at: listed_at minus the lookback) after the day ended, or after
-- the window ended for a window that ends first: nothing enters a window once it has ended.
-- plpgsql with the store's zone and day start read once: its plans are kept for the session (a
-- trigger calls it for every proof written; SQL functions such as business_date_at are planned
-- again at each call, ~0.2 ms each). The bounds and windows are those of business_day_bounds and
-- business_day_windows (the table is checked against them: tests/warehouse/test_coverage_model.py).
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
    select stores.timezone, coalesce(dated.day_starts, time '00:00') into zone, day_start
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

-- Replace a store's rows for business dates in [p_from, p_to] (null: all its rows) by what they must be.
-- One writer per store at a time (a transaction-level lock, held to its commit): two transactions
-- refreshing the same store-days (two windows of a store, a stores run moving its zone, a
-- reconciliation) would otherwise both insert a day's row, the second failing on the first's
-- (tests/warehouse/test_coverage_concurrency.py); the second waits, then reads what the first committed.
create or replace function taptouch.refresh_business_day_coverage(p_store_id bigint, p_from date, p_to date)
returns void language plpgsql set jit = off as $$
begin
    perform pg_advisory_xact_lock(hashtextextended('taptouch.business_day_coverage', p_store_id));
    delete from taptouch.business_day_coverage as coverage
    where coverage.store_id = p_store_id
      and coverage.business_date between coalesce(p_from, '-infinity') and coalesce(p_to, 'infinity');
    insert into taptouch.business_day_coverage
        (store_id, business_date, day_starts_at, day_ends_at, windows, windows_proven, last_proven_at, proven_by)
    select * from taptouch.business_day_coverage_of(p_store_id, p_from, p_to);
end
$$;

-- A proof's window (UTC day W) overlaps business dates W-1 to W+1 at most (zones from UTC-12 to
-- UTC+14, a day start up to 12:00): those are recomputed (the dates it does not overlap come out as
-- they were).
create or replace function taptouch.listing_proofs_coverage() returns trigger
language plpgsql as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        perform taptouch.refresh_business_day_coverage(
            old.store_id, (old.window_start at time zone 'UTC')::date - 1, (old.window_end at time zone 'UTC')::date);
    end if;
    if tg_op = 'INSERT' or (tg_op = 'UPDATE' and (new.store_id, new.window_start) is distinct from (old.store_id, old.window_start)) then
        perform taptouch.refresh_business_day_coverage(
            new.store_id, (new.window_start at time zone 'UTC')::date - 1, (new.window_end at time zone 'UTC')::date);
    end if;
    return null;
end
$$;

create or replace function taptouch.store_coverage() returns trigger
language plpgsql as $$
begin
    if tg_op in ('UPDATE', 'DELETE') then
        perform taptouch.refresh_business_day_coverage(old.store_id, null, null);
    end if;
    if tg_op = 'INSERT' or (tg_op = 'UPDATE' and new.store_id is distinct from old.store_id) then
        perform taptouch.refresh_business_day_coverage(new.store_id, null, null);
    end if;
    return null;
end
$$;

create or replace function taptouch.clear_business_day_coverage() returns trigger
language plpgsql as $$
begin
    -- (delete, not truncate: a truncate naming both tables has this one open in the same statement)
    delete from taptouch.business_day_coverage;
    return null;
end
$$;

drop trigger if exists business_day_coverage on taptouch.listing_proofs;
create trigger business_day_coverage
    after insert or update or delete on taptouch.listing_proofs
    for each row execute function taptouch.listing_proofs_coverage();

drop trigger if exists business_day_coverage_truncate on taptouch.listing_proofs;
create trigger business_day_coverage_truncate
    after truncate on taptouch.listing_proofs
    for each statement execute function taptouch.clear_business_day_coverage();

drop trigger if exists business_day_coverage_new_store on taptouch.stores;
create trigger business_day_coverage_new_store
    after insert on taptouch.stores
    for each row execute function taptouch.store_coverage();

drop trigger if exists business_day_coverage_store_zone on taptouch.stores;
create trigger business_day_coverage_store_zone
    after update on taptouch.stores
    for each row when (old.timezone is distinct from new.timezone or old.store_id is distinct from new.store_id)
    execute function taptouch.store_coverage();

drop trigger if exists business_day_coverage_day_start on taptouch_meta.business_day_starts;
create trigger business_day_coverage_day_start
    after insert or update or delete on taptouch_meta.business_day_starts
    for each row execute function taptouch.store_coverage();

-- The proofs written so far (one set-based pass per store).
select taptouch.refresh_business_day_coverage(stores.store_id, null, null) from taptouch.stores as stores;
