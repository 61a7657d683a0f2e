"""tests/records/test_hostile_records.py again, every page decoded in a worker process
(tests/support/decode_workers.py): the hostile records load or are quarantined exactly as there."""

from tests.records.test_hostile_records import *  # noqa: F403  (re-collected here)
from tests.support.decode_workers import through_workers  # noqa: F401  (autouse)
