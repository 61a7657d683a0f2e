-- 0008: high-water marks of incremental order loads. One row per (entity, store, window): the
-- newest updated_at loaded for that store in that window, written in the same transaction as the
-- data. A re-run asks the API only from (mark - TAPTOUCH_LOOKBACK); a full refresh ignores it.
create table if not exists taptouch.sync_marks (
    entity          text not null,
    store_id        bigint not null,
    "window"        text not null,
    high_water      timestamptz not null,
    full_loaded_at  timestamptz,
    updated_at      timestamptz not null default now(),
    primary key (entity, store_id, "window")
);
