-- 0022: analytics.product_sales reads a store's dates from the index alone. Its rows of one store
-- are written day by day among every other store's (a load writes a day of all its stores at once),
-- so a store-quarter's ~3,600 rows of taptouch.sales_products lay on ~1,900 heap pages: the top
-- products of a store-quarter read them all when they were not cached (186 ms at p95 on the scale
-- bench's 10M-order warehouse, 370 ms the first run). This index holds every column the view reads,
-- in (store_id, business_date) order: the same query is an index-only scan of a few dozen adjacent
-- leaf pages (heap pages only for rows written since the table's last vacuum). It replaces 0018's
-- index on (store_id, business_date), which it serves too (the aggregates' delete by store-day).
create index if not exists sales_products_store_date_covering
    on taptouch.sales_products (store_id, business_date)
    include (product_id, product_name, category, account, order_count, units, net_item_sales, item_discounts,
             modifier_revenue);
drop index if exists taptouch.sales_products_store_date;
-- Index-only scans read the heap for a page that is not all-visible, and a load's rewrite of a
-- store-day leaves dead rows and new ones in the aggregates every hour: vacuum them after 2% of
-- their rows changed rather than autovacuum's default 20% (720,000 rows of sales_products at 10M
-- orders, about a week of hourly loads of a 200-store chain). A vacuum of a table mostly
-- all-visible reads only the pages changed since the last one.
alter table taptouch.sales_days set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
alter table taptouch.sales_hours set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
alter table taptouch.sales_channels set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
alter table taptouch.sales_payments set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
alter table taptouch.sales_products set (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
