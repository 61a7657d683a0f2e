-- 0001: the synced data (schema taptouch), as specified in the warehouse contract.
-- Money is numeric(12,2), exact to the cent; quantities and stock are numeric; instants timestamptz;
-- raw keeps each record exactly as the API sent it (unknown fields included).

create schema if not exists taptouch;

create table if not exists taptouch.stores (
    store_id        bigint primary key,
    name            text not null,
    business_name   text,
    status          text not null,
    timezone        text not null,
    currency        text not null,
    phone           text,
    email           text,
    address         jsonb,
    created_at      timestamptz,
    updated_at      timestamptz not null,
    raw             jsonb not null,
    loaded_at       timestamptz not null default now()
);

create table if not exists taptouch.orders (
    order_id          bigint primary key,
    store_id          bigint not null,
    number            text,
    source            text,
    fulfillment_type  text,
    status            text not null,
    created_at        timestamptz not null,
    updated_at        timestamptz not null,
    completed_at      timestamptz,
    business_date     date not null,
    currency          text,
    subtotal          numeric(12,2) not null,
    discount          numeric(12,2) not null,
    surcharge         numeric(12,2) not null,
    rounding          numeric(12,2) not null,
    tax               numeric(12,2) not null,
    total             numeric(12,2) not null,
    tips              numeric(12,2) not null,
    redeem_points     numeric,
    customer_id       bigint,
    customer_name     text,
    cashier_id        bigint,
    cashier_name      text,
    raw               jsonb not null,
    loaded_at         timestamptz not null default now()
);
create index if not exists orders_store_business_date on taptouch.orders (store_id, business_date);
create index if not exists orders_store_updated_at on taptouch.orders (store_id, updated_at);

create table if not exists taptouch.order_items (
    order_id     bigint not null references taptouch.orders (order_id) on delete cascade,
    item_id      bigint not null,
    product_id   bigint,
    sku          text,
    name         text,
    category     text,
    quantity     numeric not null,
    unit_price   numeric(12,2) not null,
    discount     numeric(12,2) not null,
    tax          numeric(12,2) not null,
    total        numeric(12,2) not null,
    modifiers    jsonb not null default '[]'::jsonb,
    primary key (order_id, item_id)
);

create table if not exists taptouch.order_payments (
    order_id     bigint not null references taptouch.orders (order_id) on delete cascade,
    payment_id   bigint not null,
    method       text not null,
    amount       numeric(12,2) not null,
    tip          numeric(12,2) not null,
    surcharge    numeric(12,2) not null,
    paid_at      timestamptz,
    primary key (order_id, payment_id)
);

create table if not exists taptouch.order_refunds (
    order_id     bigint not null references taptouch.orders (order_id) on delete cascade,
    refund_id    bigint not null,
    amount       numeric(12,2) not null,
    reason       text,
    refunded_at  timestamptz,
    primary key (order_id, refund_id)
);

create table if not exists taptouch.inventory_levels (
    store_id       bigint not null,
    product_id     bigint not null,
    sku            text,
    name           text,
    category       text,
    unit           text,
    on_hand        numeric not null,
    reorder_level  numeric,
    cost_price     numeric(12,2),
    sell_price     numeric(12,2),
    updated_at     timestamptz,
    raw            jsonb not null,
    synced_at      timestamptz not null default now(),
    primary key (store_id, product_id)
);

create table if not exists taptouch.inventory_snapshots (
    snapshot_date  date not null,
    store_id       bigint not null,
    product_id     bigint not null,
    on_hand        numeric not null,
    cost_price     numeric(12,2),
    sell_price     numeric(12,2),
    synced_at      timestamptz not null default now(),
    primary key (snapshot_date, store_id, product_id)
);

-- Records that failed validation: kept with a reason a person understands, never silently dropped.
create table if not exists taptouch.quarantine (
    quarantine_id   bigserial primary key,
    entity          text not null,          -- store | order | inventory
    record_key      text,                   -- the record's id when it has one
    store_id        bigint,
    reason          text not null,
    raw             jsonb,                  -- the record as the API sent it (text in raw_text when not JSON-safe)
    raw_text        text,
    "window"        text,                   -- partition key or window, e.g. 2026-11-02
    run_id          text,
    quarantined_at  timestamptz not null default now(),
    resolved_at     timestamptz              -- set when a later load accepted a valid version of the record
);
create index if not exists quarantine_window on taptouch.quarantine (entity, "window");

-- Sync bookkeeping: one row per (entity, store, window) load that committed.
create table if not exists taptouch.sync_log (
    sync_id         bigserial primary key,
    entity          text not null,
    store_id        bigint,
    "window"        text,
    run_id          text,
    started_at      timestamptz not null,
    finished_at     timestamptz not null default now(),
    inserted        integer not null default 0,
    updated         integer not null default 0,
    unchanged       integer not null default 0,
    quarantined     integer not null default 0,
    deleted         integer not null default 0
);
create index if not exists sync_log_entity_finished on taptouch.sync_log (entity, finished_at desc);
