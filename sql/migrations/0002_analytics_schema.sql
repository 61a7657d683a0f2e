-- 0002: schema for the analysts' views (sql/analytics/*.sql, created or replaced by the pipeline).
create schema if not exists analytics;
