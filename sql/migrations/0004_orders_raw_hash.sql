-- 0004: a digest of each order's raw record (blake2b-128 of its canonical JSON text), so that a
-- re-sync recognises an unchanged order by one indexed lookup instead of validating and merging it.
alter table taptouch.orders add column if not exists raw_hash bytea;
