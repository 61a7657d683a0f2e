-- 0025: the start of each store's latest committed inventory listing. Two inventory runs of one
-- store may overlap and commit in the other order; the older listing must then change nothing: it
-- would bring back a product the newer one delisted, or delist one the newer one listed unchanged.
-- pipelines/warehouse/loader.py (load_inventory), docs/warehouse.md.
create table if not exists taptouch.inventory_listings (
    store_id      bigint primary key,
    listed_since  timestamptz not null,   -- the database's clock before the listing's first request
    run_id        text,
    loaded_at     timestamptz not null default now(),
    account       taptouch.account_name not null
);
