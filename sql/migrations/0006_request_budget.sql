-- 0006: one API request budget per Taptouch client id, shared by every process that uses the
-- client (runs, schedules, backfills, the CLI): pipelines/warehouse/budget.py.
-- One row per client id, updated by one statement per request (a GCRA token bucket):
-- next_at is the bucket's theoretical arrival time; every clock is the server's clock_timestamp().
create schema if not exists taptouch_meta;

create table if not exists taptouch_meta.request_budget (
    client_id      text primary key,
    rate           double precision not null check (rate > 0),   -- requests per second, as last configured
    burst          integer not null check (burst >= 1),           -- requests allowed back to back after a pause
    next_at        timestamptz not null,
    blocked_until  timestamptz,                                   -- a 429's Retry-After: nobody sends before it
    requests       bigint not null default 0,                     -- slots granted, all processes together
    rate_limited   bigint not null default 0,                     -- 429s reported by any process
    updated_at     timestamptz not null default now()
);
