"""The start-up benchmark's baseline: a code location of one asset that returns 1.

``bench/startup_bench.py`` times ``dagster asset materialize -m trivial_definitions --select one``
(with ``bench/`` on ``PYTHONPATH``) next to the same command on ``pipelines.definitions``: what is
left of an empty run's start-up once Dagster's own (the CLI, the instance, the run, a step's
process) is taken away is this project's. Method: bench/README.md, "Start-up".
"""

import dagster as dg


@dg.asset
def one() -> int:
    """A trivial asset: no resources, no I/O beyond Dagster's own output handling."""
    return 1


defs = dg.Definitions(assets=[one])
