-- Accept rule "not older" (inventory levels, whose updated_at the API may leave out): the staged
-- content differs and its version is not older than the held one; a level without a version on
-- either side is replaced by the listing's.
{differs} and (excluded.{version} is null or t.updated_at is null or excluded.{version} >= {held})
