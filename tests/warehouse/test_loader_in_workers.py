"""tests/warehouse/test_loader.py again, every orders page decoded in a worker process
(tests/support/decode_workers.py): newest wins, children follow, atomic windows, hostile text.
Not re-run: the test that replaces the record boundary in this process (a worker runs its own)."""

from tests.support.decode_workers import through_workers  # noqa: F401  (autouse)
from tests.warehouse.test_loader import *  # noqa: F403  (re-collected here)

del test_batches_copied_while_the_next_is_decoded_keep_every_count_and_row_exact  # noqa: F821
