-- 0012: high-water marks are per account. Two accounts that list one store keep their own marks
-- (the key gains `account`, filled since 0009). sync_marks holds one row per store and window
-- (200 stores over two years: about 150k rows), so rebuilding its key takes well under a second.
-- A mark may only move from a complete listing and never past the listing's start on the API's
-- clock (pipelines/warehouse/marks.py); marks written before this migration followed the older
-- rule (the newest updated_at loaded), so one that lies in the future may have passed edits made
-- since: it is dropped, and the next run of its window reads the whole window once.
alter table taptouch.sync_marks drop constraint if exists sync_marks_pkey;
alter table taptouch.sync_marks add primary key (entity, account, store_id, "window");
delete from taptouch.sync_marks where high_water > now();
