-- 0014: what each run asked of the Taptouch API, one row per step of an API-calling asset (stores,
-- orders, inventory, order_deletions), written when the step ends, failed or not
-- (pipelines/warehouse/budget.py, record_usage). Requests per day and account: the query in
-- docs/operating.md, "How the budget works". taptouch_meta.request_budget.requests stays what it
-- is: every slot the shared budget granted since its row was created.
-- A new, empty table: the migration is instant at any warehouse size.
create schema if not exists taptouch_meta;

create table if not exists taptouch_meta.api_usage (
    id              bigint generated always as identity primary key,
    run_id          text,                          -- the Dagster run (null outside one)
    asset           text not null,                 -- the asset key, e.g. orders or north/orders
    account         text not null,                 -- the Taptouch account ('default' for a single account)
    client_id       text not null,                 -- the Taptouch client id whose budget the requests used
    started_at      timestamptz not null,          -- when the step's client started
    ended_at        timestamptz not null default now(),
    requests        integer not null,              -- API requests sent, retries included (token requests not)
    retries         integer not null,              -- of those, retries of a failed attempt
    rate_limited    integer not null,              -- 429s received
    token_requests  integer not null,              -- OAuth token requests
    budget_wait_s   double precision not null      -- wall-clock seconds some request waited for the budget
);

create index if not exists api_usage_started on taptouch_meta.api_usage (started_at);
