"""SIGKILL a load (a child process over real HTTP) at random points; rerun; consistent and complete."""

import os

import pytest

from tests.support.reliability.kills import run_kills

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


KILLS = int(os.environ.get("RELIABILITY_KILLS", "3"))


def test_sigkill_at_random_points_then_rerun(migrated_db):
    result = run_kills(migrated_db, KILLS, seed=7)
    assert result.kills == KILLS  # loads started until this many were killed mid-way
    assert len(result.windows_committed_at_kill) == result.kills + result.completed_early
    assert not result.inconsistent, result.inconsistent
    assert result.diff.ok, str(result.diff)
    assert result.diff.orders_found == result.diff.orders_expected > 500
