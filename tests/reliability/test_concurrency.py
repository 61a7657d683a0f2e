"""Two runs of one partition at once; a backfill overlapping the hourly schedule."""

import pytest

from tests.support.reliability import dbfaults

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("seed", [5, 6])
def test_concurrent_runs_no_duplicates_no_deadlock(migrated_db, seed):
    o = dbfaults.concurrent_runs(migrated_db, seed=seed)
    assert not o.errors, o.errors  # no deadlock, serialisation or other error surfaced
    days = len(dbfaults.days())
    assert days == 8
    # each daily window twice at once, then per day a backfill run racing an "hourly" run
    assert o.runs == 2 * days + 2 * days
    assert o.diff.ok, str(o.diff)
    # the two simultaneous runs of each window inserted every order exactly once between them
    assert o.inserted == o.diff.orders_expected > 0
