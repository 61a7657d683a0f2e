-- 0030: versions finer than a microsecond, for the rows the migrations dated rather than a load.
-- A version is its record's updated_at as exact epoch seconds with every fractional digit sent
-- (pipelines/warehouse/records.py, _exact_epoch: .NET sends 7 digits). Three places took it from a
-- timestamptz instead, which keeps microseconds only:
--   * rows loaded before 0005 (updated_at_exact null) compare by taptouch.exact_epoch(updated_at),
--     the fraction cut: the same record listed again after the upgrade was "newer" and replaced them;
--   * 0015 recorded those orders' current version in taptouch.order_history the same way, so that
--     re-listing added a second version of one content (analytics.order_changes showed a change);
--   * 0027 read open quarantine rows' versions with ::timestamptz, which rounds (upwards for half of
--     them, and only for the texts its pattern knew): the valid version of that same instant never
--     resolved the row.
-- Each now gets the version a load writes, read from its raw record's updated_at (a text the
-- record boundary would not read keeps what it had). Reads taptouch.orders and order_history once
-- (rows whose raw updated_at has more than six fractional digits are the only ones changed).

create or replace function taptouch.exact_epoch_text(p_text text) returns numeric
language plpgsql immutable strict parallel safe as $$
declare
    m text[];
    zone text;
begin
    m := regexp_match(p_text,
        '^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,30}))?(?:([Zz])|([+-]\d{2})(?::?(\d{2}))?)$');
    if m is null then
        return null;
    end if;
    zone := case when m[4] is not null then '+00:00' else m[5] || ':' || coalesce(m[6], '00') end;
    return taptouch.exact_epoch((m[1] || ' ' || m[2] || zone)::timestamptz)
         + coalesce(('0.' || m[3])::numeric, 0);
exception when others then
    return null;  -- out of range, or a date PostgreSQL refuses: no version, as before
end
$$;

comment on function taptouch.exact_epoch_text(text) is
    'A record''s RFC 3339 instant as exact epoch seconds with every fractional digit (as the loads'' updated_at_exact); null for a text it cannot read';

-- rows loaded before 0005: their version from the record they hold, where it is the instant of
-- their updated_at (the fraction cut to the microsecond, as every load stored it)
create temp table exact_rows on commit drop as
select 'orders' as tbl, ctid as row_id, taptouch.exact_epoch_text(raw ->> 'updated_at') as exact, updated_at
from taptouch.orders where updated_at_exact is null
union all
select 'stores', ctid, taptouch.exact_epoch_text(raw ->> 'updated_at'), updated_at
from taptouch.stores where updated_at_exact is null
union all
select 'inventory_levels', ctid, taptouch.exact_epoch_text(raw ->> 'updated_at'), updated_at
from taptouch.inventory_levels where updated_at_exact is null and updated_at is not null;
delete from exact_rows where exact is null or floor(exact * 1000000) / 1000000 <> taptouch.exact_epoch(updated_at);

update taptouch.orders as t set updated_at_exact = e.exact
from exact_rows as e where e.tbl = 'orders' and t.ctid = e.row_id;
update taptouch.stores as t set updated_at_exact = e.exact
from exact_rows as e where e.tbl = 'stores' and t.ctid = e.row_id;
update taptouch.inventory_levels as t set updated_at_exact = e.exact
from exact_rows as e where e.tbl = 'inventory_levels' and t.ctid = e.row_id;

-- history versions recorded at the microsecond (0015's, and rebuild's of such rows): the exact one,
-- or gone where a later listing recorded the exact one beside it
create temp table exact_history on commit drop as
select order_id, version, taptouch.exact_epoch_text(raw ->> 'updated_at') as exact
from taptouch.order_history
where raw ->> 'updated_at' ~ '\.\d{7}';
delete from exact_history where exact is null or exact = version;

delete from taptouch.order_history as h using exact_history as e
where h.order_id = e.order_id and h.version = e.version
  and exists (select from taptouch.order_history as x where x.order_id = e.order_id and x.version = e.exact);
update taptouch.order_history as h set version = e.exact
from exact_history as e where h.order_id = e.order_id and h.version = e.version;

-- open quarantine rows: the version a load gives the record (0027 rounded it)
update taptouch.quarantine set updated_at_exact = taptouch.exact_epoch_text(raw ->> 'updated_at')
where resolved_at is null and updated_at_exact is not null and jsonb_typeof(raw -> 'updated_at') = 'string'
  and taptouch.exact_epoch_text(raw ->> 'updated_at') is distinct from updated_at_exact
  and taptouch.exact_epoch_text(raw ->> 'updated_at') is not null;
