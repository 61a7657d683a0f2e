-- 0010: the alert outbox. The alert sensors write each alert here (one row per idempotency key:
-- enqueuing the same event again is a no-op), and a delivery sensor POSTs the pending rows to
-- TAPTOUCH_ALERT_WEBHOOK_URL, retrying with exponential backoff across ticks until the webhook
-- answers 2xx. Delivery is at least once: a receiver may see an alert twice (same key), never miss one.
-- The body is stored already redacted; the webhook URL (a secret) is never stored.
-- In taptouch_meta with the sync's other working state (not Taptouch data: no account column).
-- A new, empty table: the migration is instant at any warehouse size.
create schema if not exists taptouch_meta;

create table if not exists taptouch_meta.alert_outbox (
    idempotency_key  text primary key,           -- e.g. run-failure:<run id>; sent as the Idempotency-Key header
    kind             text not null,               -- run_failure | check_failure
    body             jsonb not null,              -- the JSON POSTed (carries idempotency_key too)
    created_at       timestamptz not null default now(),
    attempts         integer not null default 0,  -- POSTs tried so far
    next_attempt_at  timestamptz not null default now(),  -- not tried again before this
    last_attempt_at  timestamptz,
    last_error       text,                        -- why the last POST failed (redacted); null once sent
    sent_at          timestamptz                  -- the webhook answered 2xx; null: still pending
);

create index if not exists alert_outbox_due on taptouch_meta.alert_outbox (next_attempt_at, created_at)
    where sent_at is null;
