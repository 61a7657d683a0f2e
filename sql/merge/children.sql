-- A child table of a merged parent (an order's items, payments, refunds) follows the accepted
-- version: the children of every replaced parent are deleted, then the staged children of every
-- accepted parent (linked by the staging sequence number seq) are inserted in key order, each
-- with its parent's account, whichever account's run replaced them.
delete from {child} c using {accepted} a where c.{parent_key} = a.{parent_key} and not a.inserted;
insert into {child} ({cols}, account)
select {source_cols}, p.account from {stage} s
  join {accepted} a on a.seq = s.seq
  join {parent} p on p.{parent_key} = s.{parent_key}
order by s.{parent_key}
