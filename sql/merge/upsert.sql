-- The merge recipe of every table a load writes: pipelines/warehouse/merge.py fills in the names
-- from a MergeSpec (table, keys, columns, accept rule, stamp column).
-- The staged rows, one per key, are inserted in key order, so two loads of overlapping rows take
-- their row locks in one order and never deadlock. A row the table already holds is replaced only
-- where the spec's accept rule says the staged version wins, and then its stamp column is set to
-- now(). The keys written (plus the returned and carried columns), and whether each row was new,
-- land in a temporary table dropped at commit.
create temp table {into} on commit drop as
with up as (
  insert into {table} as t ({cols})
  select {source_cols} from {source}
  order by {order}
  on conflict ({keys}) do update set {sets}, {stamp} = now()
  where {accept}
  returning {returned}, (xmax = 0) as inserted
)
select up.*{carried} from up{carry_join}
