-- 0011: deletions and delistings need two listings (issue 20, item 3).
--
-- taptouch.deletion_candidates: orders a complete listing did not return although the warehouse
-- holds them live in that listing's range. A later complete listing, at least
-- TAPTOUCH_RECONCILE_CONFIRM_S seconds after first_missing_at, that still misses them marks them
-- deleted (taptouch.orders.deleted_at); a listing that returns one removes its row
-- (pipelines/warehouse/deletions.py). first_missing_at / last_missing_at are the clock of the runs
-- that judged; listing_started_at is the API's instant the first such listing started; seen_by
-- names that listing (asset and run).
create table if not exists taptouch.deletion_candidates (
    order_id            bigint primary key,
    account             taptouch.account_name not null,
    store_id            bigint not null,
    first_missing_at    timestamptz not null,
    last_missing_at     timestamptz not null,
    listing_started_at  timestamptz,
    seen_by             text
);
create index if not exists deletion_candidates_store on taptouch.deletion_candidates (store_id);

-- taptouch.inventory_delist_candidates: products a suspicious inventory listing (empty for a store
-- that holds levels, or dropping more than half of them) no longer lists. They are delisted only
-- when a second such listing, at least TAPTOUCH_RECONCILE_CONFIRM_S seconds later, agrees; an
-- ordinary listing clears the store's rows (pipelines/warehouse/loader.py, load_inventory).
create table if not exists taptouch.inventory_delist_candidates (
    store_id          bigint not null,
    product_id        bigint not null,
    account           taptouch.account_name not null,
    first_missing_at  timestamptz not null,
    primary key (store_id, product_id)
);
