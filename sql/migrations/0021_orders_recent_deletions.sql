-- 0021: order_deletions lists each store from the earliest updated_at of its orders marked deleted
-- in the last TAPTOUCH_RESTORE_DAYS days (pipelines/reconcile.py, _earliest_deleted). Without this
-- index that query reads all of the store's orders on every run (a scan by store_id or updated_at
-- filtering deleted_at): the whole table per reconciliation. Deleted orders are rare, so this
-- partial index is small and the query one probe of it.
create index if not exists orders_store_deleted_at
    on taptouch.orders (store_id, deleted_at) include (updated_at) where deleted_at is not null;
