-- Accept rule "newer wins" (stores, orders): the staged version is newer than the held one, or the
-- same version with other content (the spec's content test). The held version is
-- updated_at_exact, or for a row loaded before migration 0005 the microsecond instant of its
-- updated_at. A staged row never replaces a newer one, so a stale replica cannot move a row back.
excluded.{version} > {held} or (excluded.{version} = {held} and {differs})
