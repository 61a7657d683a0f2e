-- A record the merge staged has a valid version now: its unresolved quarantine rows are stamped
-- resolved_at and kept as history (a spec with a per-store lock resolves only that store's rows).
update taptouch.quarantine q set resolved_at = now() from {staged} s
where q.entity = {entity} and q.resolved_at is null and q.record_key = s.{record_key}::text{of_store}
