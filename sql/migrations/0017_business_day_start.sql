-- 0017: business days that start at another hour than local midnight (issue 24, part 3).
-- A store's business date is the local date of (local wall-clock time minus the day's start): with
-- a start of 04:00 a sale at 01:30 counts toward the day before. The start of every store is
-- TAPTOUCH_BUSINESS_DAY_START (default 00:00); taptouch.store_business_days overrides it per store
-- (edited by hand: docs/operating.md, "Business days that start after midnight").
-- taptouch_meta.business_day_starts records the start each store's stored business dates follow,
-- written by taptouch-sync in the same transaction as the dates (pipelines/warehouse/derived.py);
-- no row: local midnight, as every date written before this migration. The SQL helpers below read
-- it, so views that place a business date in time agree with taptouch.orders.business_date.
-- New, empty tables and new functions: instant at any warehouse size.

create table if not exists taptouch.store_business_days (
    store_id    bigint primary key,
    day_starts  time not null check (day_starts >= time '00:00' and day_starts < time '12:00'),
    note        text,
    updated_at  timestamptz not null default now()
);

create table if not exists taptouch_meta.business_day_starts (
    store_id    bigint primary key,
    day_starts  time not null check (day_starts >= time '00:00' and day_starts < time '12:00'),
    derived_at  timestamptz not null default now()
);

-- The start the store's stored business dates follow (local midnight when none was recorded).
create or replace function taptouch.business_day_start(p_store_id bigint) returns time
language sql stable parallel safe as $$
    select coalesce(
        (select s.day_starts from taptouch_meta.business_day_starts as s where s.store_id = p_store_id),
        time '00:00')
$$;

-- The business date of the instant p_at at store p_store_id: the local date (in the zone
-- taptouch.stores holds) of local wall-clock time minus the store's day start. Null for a store
-- the warehouse does not hold.
create or replace function taptouch.business_date_at(p_store_id bigint, p_at timestamptz) returns date
language sql stable parallel safe as $$
    select ((p_at at time zone s.timezone) - taptouch.business_day_start(p_store_id))::date
    from taptouch.stores as s where s.store_id = p_store_id
$$;

-- The instants a business date starts (inclusive) and ends (exclusive) at store p_store_id: the
-- store's day start as local wall-clock time on that date and on the next. No row for a store the
-- warehouse does not hold. A start inside the hour a DST change skips is placed where PostgreSQL
-- reads that wall time (docs/analytics.md, "Business days").
create or replace function taptouch.business_day_bounds(
    p_store_id bigint, p_business_date date, out starts_at timestamptz, out ends_at timestamptz
) returns setof record
language sql stable parallel safe rows 1 as $$
    select (p_business_date + st.day_start) at time zone s.timezone,
           (p_business_date + 1 + st.day_start) at time zone s.timezone
    from taptouch.stores as s
    cross join lateral (select taptouch.business_day_start(p_store_id) as day_start) as st
    where s.store_id = p_store_id
$$;

comment on function taptouch.business_day_start(bigint) is
    'The local wall-clock time at which the store''s business day starts, as its stored business dates follow it (taptouch_meta.business_day_starts; 00:00 when none recorded)';
comment on function taptouch.business_date_at(bigint, timestamptz) is
    'The store''s business date of an instant: the local date of (local wall-clock time minus the store''s day start); null for a store not in taptouch.stores';
comment on function taptouch.business_day_bounds(bigint, date) is
    'The instants a store''s business date starts (inclusive) and ends (exclusive): its day start as local wall-clock time on that date and the next';
