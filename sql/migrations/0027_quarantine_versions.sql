-- 0027: the version of each quarantined record (its updated_at, exact), when readable. A quarantine
-- row is resolved only once the warehouse holds a valid version at least as new: before, any valid
-- version of the record staged later resolved it, so an older version (a replica behind, or the
-- same listing serving both) closed the row of a newer version the boundary had refused, and the
-- promise "kept until a valid version replaces it" was broken. Rows written before this migration
-- have no version and keep the old rule. pipelines/warehouse/merge.py, sql/merge/resolve_quarantine.sql.
alter table taptouch.quarantine add column if not exists updated_at_exact numeric;
