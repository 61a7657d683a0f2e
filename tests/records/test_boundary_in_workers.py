"""The boundary probes of tests/records/test_boundary.py that load orders, again with every page
decoded in a worker process (tests/support/decode_workers.py)."""

from tests.records.test_boundary import (  # noqa: F401  (re-collected here)
    db,
    test_fractions_beyond_microseconds_are_cut_never_rounded_into_the_next_day,
    test_marker_texts_are_never_numbers,
    test_probe_quarantines_only_its_record,
    test_quarantined_raw_is_text_when_not_json,
    test_raw_is_exactly_what_the_api_sent,
    test_seven_digit_fractions_keep_their_order,
)
from tests.support.decode_workers import through_workers  # noqa: F401  (autouse)
