-- 0024: each version in taptouch.order_history keeps its created_at, so that
-- analytics.daily_restatements dates each version as it was (a version whose created_at or store
-- differs from the current one's lies on another business date). Versions recorded before this
-- migration have none: the view dates them by the order's current business date, as before.
alter table taptouch.order_history add column if not exists created_at timestamptz;
