-- 0016: proven completeness per store and orders window (issue 24, part 2).
-- taptouch.listing_proofs: one row per (store, orders window): what the latest complete listing of
-- the store's orders in the window returned (count, first and last instant), the run that listed
-- it and when, how far back complete listings cover the window (complete: from its start), and the
-- latest listing that failed or may have missed a record. taptouch.listing_proof_orders: the SET
-- of (order_id, version) the complete listings proved for the window, so the warehouse's set can be
-- compared with it (the orders asset's check 'orders_proven', pipelines/warehouse/proofs.py).
-- Bounded: a window's set is replaced by each complete listing of the whole window (and the part
-- an incremental listing re-read is replaced by it), so it holds about one row per order in the
-- window (an order edited later into another window stays in the set of the window it was listed
-- in until that window is listed again). Written by the orders loads in the merge's transaction,
-- and by the reconciliation for the days it listed whole.
-- New, empty tables: the migration is instant at any warehouse size.
create table if not exists taptouch.listing_proofs (
    proof_id            bigint generated always as identity primary key,
    store_id            bigint not null,
    "window"            text not null,                 -- the orders partition key: the UTC day, YYYY-MM-DD
    window_start        timestamptz not null,
    window_end          timestamptz not null,
    complete            boolean not null default false, -- complete listings cover the window from its start
    covered_from        timestamptz,                   -- complete listings cover [covered_from, window_end)
    listed_from         timestamptz,                   -- the latest complete listing asked from here
    listed_at           timestamptz,                   -- when it started (this machine's clock, as sync_log)
    api_started_at      timestamptz,                   -- when it started on the API's clock
    listed_orders       integer,                       -- orders it returned (ids readable)
    first_updated_at    timestamptz,                   -- the earliest updated_at it returned
    last_updated_at     timestamptz,                   -- the latest
    proven_orders       integer not null default 0,    -- rows of listing_proof_orders
    proved_by           text,                          -- its Dagster run
    proved_at           timestamptz,                   -- when it committed
    failed_at           timestamptz,                   -- the latest listing that failed or may have missed a record
    failed_by           text,
    failure             text,
    account             taptouch.account_name not null,
    unique (store_id, "window")
);

create index if not exists listing_proofs_window on taptouch.listing_proofs ("window", store_id);

create table if not exists taptouch.listing_proof_orders (
    proof_id            bigint not null references taptouch.listing_proofs (proof_id) on delete cascade,
    order_id            bigint not null,
    updated_at_exact    numeric not null,              -- the version listed: updated_at as exact epoch seconds
    primary key (proof_id, order_id)
);
