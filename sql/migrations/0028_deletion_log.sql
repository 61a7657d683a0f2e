-- 0028: every deletion the reconciliation confirmed, and when the order was listed again. An
-- order's deleted_at is cleared when it comes back, so analytics.daily_restatements, which leaves
-- out of a day's "next day" figure the orders marked deleted by the end of the next business day,
-- judged that from the current deleted_at alone: an order deleted then and restored since counted
-- as never deleted. Each confirmation adds a row, each restore stamps restored_at.
-- pipelines/warehouse/deletions.py, sql/analytics/daily_restatements.sql.
create table if not exists taptouch.deletion_log (
    order_id     bigint not null,
    deleted_at   timestamptz not null,   -- the order's deleted_at as confirmed
    restored_at  timestamptz,            -- when a listing brought it back (its transaction's time)
    account      taptouch.account_name not null,
    primary key (order_id, deleted_at)
);

-- the deletions in force now (earlier ones, already restored, left no trace)
insert into taptouch.deletion_log (order_id, deleted_at, account)
select order_id, deleted_at, account from taptouch.orders where deleted_at is not null
on conflict do nothing;
