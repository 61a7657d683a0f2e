-- 0019: a complete listing proves only what had settled when it started. The API is eventually
-- consistent (a record may reach a replica up to TAPTOUCH_LOOKBACK after its updated_at), so a
-- listing that started within the lookback of a day's (or window's) end may miss its last records.
-- settled_at = listed_at - the writer's lookback; analytics.load_coverage compares it, not listed_at.
alter table taptouch.listing_proofs add column if not exists settled_at timestamptz;
update taptouch.listing_proofs set settled_at = listed_at - interval '5 minutes'
where settled_at is null and listed_at is not null;
