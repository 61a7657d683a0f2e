"""Reliability machinery shared by ``tests/reliability`` and ``python -m tests.support.reliability.report``.

- :mod:`tests.support.reliability.check`: compare the warehouse with the sandbox's truth (lost, duplicated,
  moved backwards, mismatched rows).
- :mod:`tests.support.reliability.schedules`: seeded random fault schedules (sandbox faults, a fake clock for
  token expiry, a stale-read transport) run through ``pipelines.sync``.
- :mod:`tests.support.reliability.kills`: SIGKILL a load in a child process at random points, then rerun.
- :mod:`tests.support.reliability.dbfaults`: connection terminated mid-merge, statement timeout.
- :mod:`tests.support.reliability.badinput`: the bad-input catalogue with the expected outcome of each item.
"""
