-- 0027: the version of each quarantined record (its updated_at, exact), when readable. A quarantine
-- row is resolved only once the warehouse holds a valid version at least as new: before, any valid
-- version of the record staged later resolved it, so an older version (a replica behind, or the
-- same listing serving both) closed the row of a newer version the boundary had refused, and the
-- promise "kept until a valid version replaces it" was broken. Open rows written before this
-- migration get their version below where PostgreSQL reads it; the others keep the old rule.
-- pipelines/warehouse/merge.py, sql/merge/resolve_quarantine.sql.
alter table taptouch.quarantine add column if not exists updated_at_exact numeric;

-- The open rows written before it get their record's version where PostgreSQL reads its updated_at
-- as an ISO 8601 instant (to the microsecond; a row it cannot read keeps the old rule).
do $$
declare
    r record;
begin
    for r in
        select quarantine_id, raw ->> 'updated_at' as at from taptouch.quarantine
        where resolved_at is null and updated_at_exact is null and jsonb_typeof(raw -> 'updated_at') = 'string'
          and raw ->> 'updated_at' ~ '^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$'
    loop
        begin
            update taptouch.quarantine set updated_at_exact = taptouch.exact_epoch(r.at::timestamptz)
            where quarantine_id = r.quarantine_id;
        exception when others then
            null;  -- out of range: no version
        end;
    end loop;
end
$$;
