-- 0015: order history (issue 24, part 1): every distinct version of an order a load saw, append-only.
--
-- taptouch.order_history has one row per (order_id, version), version being the exact instant of
-- the record's updated_at as taptouch.orders keeps it (updated_at_exact: every fractional digit
-- the API sent). The orders load writes it in the same transaction as its merge, from its staging
-- table, in one statement (pipelines/warehouse/history.py): each version it staged that the table
-- does not hold yet, with its raw record (as orders.raw), when and by which run it was first seen.
-- A re-listing of a version already held adds nothing (the key), so the table never changes a
-- row; only the retention (TAPTOUCH_HISTORY_DAYS) and taptouch-sync forget-customer touch it.
-- What changed against the previous version is derived, not stored (analytics.order_changes): a
-- version may arrive after a newer one (a stale replica), and the retention removes old ones,
-- so a stored "previous" would go stale; status, total and refunds are kept typed per version so
-- the views need not parse raw.
--
-- Existing orders: their current version is recorded here by this migration, first seen at their
-- orders.loaded_at by no run (the versions before it were never kept). It copies every order's
-- raw once: docs/operating.md, "Upgrading an existing warehouse", says what that costs.
create table if not exists taptouch.order_history (
    order_id          bigint not null,
    version           numeric not null,            -- updated_at as exact epoch seconds (every digit)
    updated_at        timestamptz not null,
    store_id          bigint not null,
    status            text not null,
    total             numeric(12,2) not null,
    refunds           numeric(14,2) not null,      -- Σ refund amounts of this version (0 when none)
    raw               jsonb not null,
    first_seen_at     timestamptz not null default statement_timestamp(),
    first_seen_run_id text,
    account           taptouch.account_name not null,
    primary key (order_id, version)
);
alter table taptouch.order_history
    alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');

-- the retention's scan of versions by age, and daily_restatements' "as of" reads
create index if not exists order_history_first_seen on taptouch.order_history (first_seen_at);

-- The retention's progress: versions first seen before pruned_before that were not current then
-- are gone, so a load prunes only what aged since (a range of the index above). One row at most.
create table if not exists taptouch_meta.history_retention (
    singleton      boolean primary key default true check (singleton),
    days           integer not null,
    pruned_before  timestamptz not null,
    pruned_at      timestamptz not null default now(),
    pruned         bigint not null default 0
);

insert into taptouch.order_history
    (order_id, version, updated_at, store_id, status, total, refunds, raw, first_seen_at, first_seen_run_id, account)
select o.order_id, coalesce(o.updated_at_exact, taptouch.exact_epoch(o.updated_at)), o.updated_at, o.store_id,
       o.status, o.total, coalesce(r.refunds, 0), o.raw, o.loaded_at, null, o.account
from taptouch.orders as o
left join (
    select order_id, sum(amount) as refunds from taptouch.order_refunds group by order_id
) as r using (order_id)
-- (amended: an order whose refunds sum past numeric(14,2), loaded before the boundary checked the
-- sum, gets no version here; the file failed on it, and the warehouse could not pass 0015; refunds are
-- signed money, so a sum of -1e12 or less as well)
where abs(coalesce(r.refunds, 0)) < 1000000000000
order by o.order_id
on conflict (order_id, version) do nothing;
