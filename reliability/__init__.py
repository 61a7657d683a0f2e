"""Reliability machinery shared by ``tests/reliability`` and ``python -m reliability.report``.

- :mod:`reliability.check`: compare the warehouse with the sandbox's truth (lost, duplicated,
  moved backwards, mismatched rows).
- :mod:`reliability.schedules`: seeded random fault schedules (sandbox faults, a fake clock for
  token expiry, a stale-read transport) run through ``pipelines.sync``.
- :mod:`reliability.kills`: SIGKILL a load in a child process at random points, then rerun.
- :mod:`reliability.dbfaults`: connection terminated mid-merge, statement timeout.
- :mod:`reliability.badinput`: the bad-input catalogue with the expected outcome of each item.
"""
