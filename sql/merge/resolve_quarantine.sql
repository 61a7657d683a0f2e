-- A record the merge staged has a valid version in the warehouse now: its unresolved quarantine
-- rows are stamped resolved_at and kept as history (a spec with a per-store lock resolves only that
-- store's rows). Only rows of a version no newer than the one the warehouse holds: a newer version
-- refused (even by this same load) stays open until a valid version at least as new arrives. A row
-- whose version could not be read is resolved by any valid version, but not one written by this
-- same transaction (the listing may have served it after the valid one).
update taptouch.quarantine q set resolved_at = now()
from {staged} s join {table} t on {on_keys}
where q.entity = {entity} and q.resolved_at is null and q.record_key = s.{record_key}::text{of_store}
  and (
    -- (a held version without a timestamp, e.g. an inventory level: nothing to compare)
    q.updated_at_exact <= coalesce(t.updated_at_exact, taptouch.exact_epoch(t.updated_at), q.updated_at_exact)
    or (q.updated_at_exact is null and q.quarantined_at < now())
  )
