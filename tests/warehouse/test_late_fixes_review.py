"""Hostile review of the late commits (f8b4bc1's forget_again and quarantine parking): each test
failed on the code it was written against."""

from __future__ import annotations

import psycopg

from pipelines.warehouse.forget import forget_customer
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from taptouch_resource import jsonutil
from tests.support import factories as f

STORE, ZONE = 7101, "Australia/Melbourne"
SAM = {"id": 901, "name": "Sam Lee", "email": "sam@example.com"}


def test_a_window_that_waited_through_a_forget_leaves_a_later_edit_of_another_order_alone(migrated_db):
    """docs/operating.md, "Forgetting a customer": a *new* version of one of the customer's orders
    (an edit in Taptouch after the forget) carries the personal fields again. Window W (a ranged
    run's day) staged the customer's order 2 and waits for its turn to merge; forget-customer
    commits; the customer then edits order 1 in Taptouch and the hourly run loads that new version,
    fields and all (as documented). W then merges: its forget_again strips customer 901 from every
    order, history version and quarantine row in the warehouse, order 1's new version included,
    which W never listed nor wrote (forget_again promises "forgotten again in what the load wrote")."""
    with (
        psycopg.connect(migrated_db, autocommit=True) as conn,
        psycopg.connect(migrated_db, autocommit=True) as other,
    ):
        load_stores(conn, [f.store(STORE, ZONE)])
        with OrderWindowLoad(conn, window="2026-11-03", timezones={STORE: ZONE}) as w0:
            w0.add_page(STORE, [jsonutil.dumps(f.order(1, customer=SAM)).encode()])
            w0.finish()
        with OrderWindowLoad(conn, window="2026-11-02", timezones={STORE: ZONE}) as w:
            w.add_page(STORE, [jsonutil.dumps(f.order(2, customer=SAM)).encode()])
            w.close_staging()  # staged: waits for the day before to merge
            forget_customer(other, 901)
            edited = f.order(1, customer=SAM, updated_at="2026-11-04T09:00:00+11:00")  # an edit after the forget
            with OrderWindowLoad(other, window="2026-11-03", timezones={STORE: ZONE}) as hourly:
                hourly.add_page(STORE, [jsonutil.dumps(edited).encode()])
                hourly.finish()
            held = other.execute("select raw -> 'customer' ->> 'name' from taptouch.orders where order_id = 1")
            assert held.fetchone() == ("Sam Lee",)  # as documented: the new version carries them again
            w.finish()
        name = conn.execute("select raw -> 'customer' ->> 'name' from taptouch.orders where order_id = 1").fetchone()
        assert name == ("Sam Lee",), "a window that never listed order 1 stripped its new version's customer"
        versions = conn.execute(
            "select raw -> 'customer' ->> 'name' from taptouch.order_history where order_id = 1 order by version"
        ).fetchall()
        assert versions[-1] == ("Sam Lee",)
        two = conn.execute("select raw -> 'customer' from taptouch.orders where order_id = 2").fetchone()[0]
        assert two == {"id": 901}  # what W listed before the forget is forgotten (f8b4bc1's fix stays)


def test_parked_quarantine_rows_land_as_written_directly(migrated_db):  # a check, not a finding
    """Odd text through the parked table's COPY: the rows equal those a direct flush writes."""
    from pipelines.warehouse.merge import Quarantine

    odd = [
        b'{"id": 7, "note": "back\\\\slash \\t tab \\n nl \\u0000 nul \\ud800 lone", "total": "1"}',
        '{"id": 8, "x": "caf\u00e9 \U0001f600 \\\\N", "updated_at": "2026-11-02T12:00:00.123456789123+11:00"}'.encode(),
        b'{"id": 9, "bad": "\xff\xfe", "updated_at": "9999-12-31T23:59:59.999999999-12:00"}',
        b"not json \\. \\N \t\r\n",
        b'{"id": "12\\u00b2"}',
    ]
    reasons = ["r\\1\ttab\nnl \u00e9 " + "x" * 3000, "\\N", "\\.", "", "ok"]
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        with conn.transaction(), conn.cursor() as cur:
            direct = Quarantine("order", "direct", "run")
            parked = Quarantine("order", "parked", "run")
            for raw, why in zip(odd, reasons, strict=True):
                direct.add(raw, why, 7101)
                parked.add(raw, why, 7101)
                parked.park(cur)
            direct.flush(cur)
            parked.flush(cur)
        rows = conn.execute(
            'select "window", record_key, store_id, reason, raw, raw_text, updated_at_exact, resolved_at is null'
            " from taptouch.quarantine order by quarantine_id"
        ).fetchall()
    by = {w: [r[1:] for r in rows if r[0] == w] for w in ("direct", "parked")}
    assert len(by["direct"]) == 5 and by["direct"] == by["parked"]
