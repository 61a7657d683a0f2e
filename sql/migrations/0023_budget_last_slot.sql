-- 0023: the shared API budget tells a request that got a slot from one that must wait longer than
-- one wait (a queue longer than 60 s: a low rate and many waiting requests) by the row it wrote:
-- last_slot is the slot the last request was given, null when it got none (a 429's pause, or a long
-- queue: it waits and asks again). pipelines/warehouse/budget.py, docs/operating.md.
alter table taptouch_meta.request_budget add column if not exists last_slot timestamptz;
