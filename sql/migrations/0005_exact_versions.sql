-- 0005: versions ordered at the precision the API sends, and a quarantine that cannot fail.
--
-- updated_at_exact: the record's updated_at as exact epoch seconds with every fractional digit the
-- API sent (timestamptz keeps microseconds; two versions 0.8 microseconds apart must not compare
-- equal). Newest-wins merges compare it. Rows loaded before this migration have it null and
-- compare by taptouch.exact_epoch(updated_at).
alter table taptouch.orders add column if not exists updated_at_exact numeric;
alter table taptouch.stores add column if not exists updated_at_exact numeric;
alter table taptouch.inventory_levels add column if not exists updated_at_exact numeric;

-- The exact epoch seconds of a timestamptz (microseconds), on every PostgreSQL version (extract
-- returns double precision before 14).
create or replace function taptouch.exact_epoch(ts timestamptz) returns numeric
language sql immutable strict parallel safe as $$
    select extract(epoch from date_trunc('second', ts))::bigint::numeric
         + (extract(microseconds from ts)::bigint % 1000000)::numeric / 1000000
$$;

-- The jsonb of a text, or null when PostgreSQL cannot hold it as jsonb (a quarantined record then
-- keeps its raw form in quarantine.raw_text).
create or replace function taptouch.try_jsonb(doc text) returns jsonb
language plpgsql immutable strict as $$
begin
    return doc::jsonb;
exception when others then
    return null;
end
$$;
