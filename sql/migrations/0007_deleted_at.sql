-- 0007: soft deletes. Taptouch has no tombstones (an order deleted at the source simply stops
-- being listed [model]); the reconciliation (pipelines/reconcile.py) sets deleted_at when the API
-- no longer returns an order of its window, and clears it when the order comes back. Nothing is
-- removed; the analytics views leave such orders out (sql/analytics/sales_orders.sql).
alter table taptouch.orders add column if not exists deleted_at timestamptz;
