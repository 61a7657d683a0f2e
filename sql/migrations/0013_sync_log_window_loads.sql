-- 0013: analytics.business_days asks, for each store-local day, whether each orders window that
-- overlaps it has a load that started late enough: of the store, or of its account. One index
-- probe each (sync_log gains a row per store and load, hourly: millions over the years).
create index if not exists sync_log_orders_store_window
    on taptouch.sync_log (store_id, "window", started_at) where entity = 'orders';
create index if not exists sync_log_orders_account_window
    on taptouch.sync_log (account, "window", started_at) where entity = 'orders';
