-- 0009: several Taptouch accounts in one warehouse (issue 17). Every taptouch.* table gains
-- `account` (text, not null): 'default' for a single-account deployment and for every row that
-- existed before this migration; the account's name (TAPTOUCH_ACCOUNTS) for rows loaded by its
-- assets. Keys do not change: Taptouch ids are global.
--
-- How a row gets its account without the loader naming the column: the sync session of an
-- account runs `select set_config('taptouch.account', '<name>', false)` on its connection, and
-- the column's default reads that setting (unset or empty: 'default').
--
-- Why a domain: the loader stages orders in `create temp table stage_x (like taptouch.x)`, which
-- copies NOT NULL but not column defaults, and COPYs only the columns it knows; a plain
-- `text not null default ...` column would be null in staging and the COPY would fail. A column
-- of the domain `taptouch.account_name` (text, with the same default) keeps that default in the
-- staging tables too, because a domain's default applies wherever the column has none of its own.
-- The domain has no constraint of its own (NOT NULL is on each column), so adding the column
-- stores 'default' as the old rows' value without rewriting the table (PostgreSQL 11+).
do $$
begin
    if not exists (select 1 from pg_type t join pg_namespace n on n.oid = t.typnamespace
                   where n.nspname = 'taptouch' and t.typname = 'account_name') then
        create domain taptouch.account_name as text
            default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
    end if;
end
$$;

alter table taptouch.stores add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.orders add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.order_items add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.order_payments add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.order_refunds add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.inventory_levels add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.inventory_snapshots add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.quarantine add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.sync_log add column if not exists account taptouch.account_name not null default 'default';
alter table taptouch.sync_marks add column if not exists account taptouch.account_name not null default 'default';

-- From now on new rows take the session's account ('default' when none is set).
alter table taptouch.stores alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.orders alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.order_items alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.order_payments alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.order_refunds alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.inventory_levels alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.inventory_snapshots alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.quarantine alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.sync_log alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');
alter table taptouch.sync_marks alter column account set default coalesce(nullif(current_setting('taptouch.account', true), ''), 'default');

