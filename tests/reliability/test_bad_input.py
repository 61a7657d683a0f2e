"""The bad-input catalogue: a typed error for envelope problems, quarantine for record problems."""

import pytest

from tests.support.reliability import badinput

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize("case", badinput.run_envelope_cases(), ids=lambda c: c.name)
def test_envelope_level_bad_input_is_a_clear_typed_error(case):
    assert case.ok, f"{case.name}: expected {case.expected}, got {case.detail}"


def test_record_level_bad_input_quarantined_with_reason_others_loaded(conn):
    results = badinput.run_record_cases(conn)
    assert len(results) == len(badinput.record_cases()) + 1
    bad = [f"{r.name}: {r.detail}" for r in results if not r.ok]
    assert not bad, "\n".join(bad)
    # nothing else lost: every quarantined record has a reason and its raw form
    rows = conn.execute(
        "select count(*), count(*) filter (where reason <> '' and (raw is not null"
        " or raw_text is not null)) from taptouch.quarantine"
    ).fetchone()
    assert rows[0] == rows[1] == sum(1 for c in badinput.record_cases() if c[2] == "quarantine")
    # the tables the injection strings name are intact
    assert conn.execute("select count(*) from taptouch.stores").fetchone()[0] == 1
