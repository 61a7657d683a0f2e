"""A hostile review of the maintenance paths (rebuild, forget-customer, move-store, the history's
retention): what the warehouse holds after each, and what the next load believes because of it.
Each test fails on the code it was written against (2026-12-06)."""

from __future__ import annotations

import psycopg

from pipelines.warehouse import rebuild as rebuild_module
from pipelines.warehouse.forget import forget_customer
from pipelines.warehouse.history import Retention
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from taptouch_resource import jsonutil
from tests.support import factories as f

STORE, ZONE = 7101, "Australia/Melbourne"
SAM = {"id": 901, "name": "Sam Lee", "email": "sam@example.com"}


def load(conn: psycopg.Connection, records: list, window: str = "2026-11-02", retention: Retention | None = None):
    """One orders window load of ``records`` (dicts, or the exact bytes the API sent)."""
    with OrderWindowLoad(conn, window=window, timezones={STORE: ZONE}, retention=retention) as w:
        w.add_page(STORE, records)
        counts = w.finish()
    if not conn.autocommit:
        conn.commit()
    return counts


def personal(conn: psycopg.Connection) -> list[str]:
    """Where the customer's name or e-mail is still held (table names)."""
    found = []
    for table, text in (
        ("taptouch.orders", "raw::text || coalesce(customer_name, '')"),
        ("taptouch.order_history", "raw::text"),
        ("taptouch.quarantine", "coalesce(raw::text, raw_text)"),
    ):
        rows = conn.execute(f"select {text} from {table}").fetchall()  # noqa: S608 - names from above
        if any("Sam Lee" in r[0] or "sam@example.com" in r[0] for r in rows):
            found.append(table)
    return found


# ------------------------------------------------------------------------------------ forget-customer
def test_forgotten_customer_comes_back_on_the_next_listing_of_a_version_rebuild_loaded(migrated_db):
    """rebuild merges a quarantined version with raw_hash null; once the customer is forgotten, the
    next listing of that same version (same bytes, unchanged at the source) is not recognised as
    unchanged and its JSON differs from the forgotten raw: the merge writes the name and e-mail back."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(STORE, ZONE)])
        v1 = f.order(1, customer=SAM)
        load(conn, [jsonutil.dumps(v1).encode()])
        # a newer version a former rule refused (as test_rebuild does), retried by rebuild once it passes
        v2 = f.order(1, customer=SAM, updated_at="2026-11-02T14:00:00+11:00", status="voided", payments=[])
        v2["completed_at"] = None
        v2_bytes = jsonutil.dumps(v2).encode()
        conn.execute(
            "insert into taptouch.quarantine (entity, record_key, store_id, reason, raw, updated_at_exact)"
            " values ('order', '1', %s, 'an old rule refused it', %s::jsonb, 1793588400)",
            (STORE, v2_bytes.decode()),
        )
        rebuild_module.rebuild(conn)
        assert conn.execute("select status from taptouch.orders where order_id = 1").fetchone() == ("voided",)

        forget_customer(conn, 901)
        assert personal(conn) == []

        load(conn, [v2_bytes])  # the API lists the same, unchanged version again
        assert personal(conn) == [], "a forgotten customer's personal data came back"


def test_forgotten_customer_comes_back_when_the_same_version_is_sent_with_another_key_order(migrated_db):
    """The merge treats "the same JSON in another key order" as the same content (merge.py), yet
    after forget-customer such a re-listing of the unchanged version replaces the forgotten raw."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(STORE, ZONE)])
        v1 = f.order(1, customer=SAM)
        load(conn, [jsonutil.dumps(v1).encode()])
        forget_customer(conn, 901)
        assert personal(conn) == []

        same = dict(v1, customer={"email": SAM["email"], "name": SAM["name"], "id": 901})  # keys reordered
        assert jsonutil.dumps(same) != jsonutil.dumps(v1)
        load(conn, [jsonutil.dumps(same).encode()])
        assert personal(conn) == [], "a forgotten customer's personal data came back"


# ------------------------------------------------------------------------------------ history retention
def test_a_repair_after_the_retention_was_raised_prunes_by_the_old_shorter_one(migrated_db):
    """TAPTOUCH_HISTORY_DAYS raised from 1 to 30: a load with 30 finds nothing new to prune and leaves
    taptouch_meta.history_retention.days at 1; a load without run settings (a reconciliation's
    repair, rebuild's retry) then prunes the versions it replaced by 1 day: a version first seen 10
    days ago, which the retention in force (30 days) keeps, is deleted."""
    with psycopg.connect(migrated_db) as conn:
        load(conn, [f.order(1)], retention=Retention(1))
        load(conn, [f.order(2)], retention=Retention(30))  # the setting raised: loads now keep 30 days
        conn.execute("update taptouch.order_history set first_seen_at = now() - interval '10 days'")
        conn.commit()
        repaired = f.order(1, updated_at="2026-11-02T14:00:00+11:00", status="voided", payments=[])
        repaired["completed_at"] = None
        load(conn, [repaired], window="repair", retention=None)  # no run settings
        versions = conn.execute("select status from taptouch.order_history where order_id = 1 order by version")
        assert [r[0] for r in versions] == ["completed", "voided"], "a version within the 30 days was pruned"


def test_a_forgotten_customers_refused_order_listed_again_unchanged_is_quarantined_again_in_full(migrated_db):
    """A refused record listed again exactly as an open quarantine row holds it is "that row seen
    again" (merge.Quarantine.flush compares raw): after forget-customer the row's raw no longer
    equals the record, so the next load of the unchanged window writes a second open row holding
    the name and e-mail again (and every hourly run of the window keeps doing so)."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(STORE, ZONE)])
        bad = f.order(1, customer=SAM)
        bad["total"] = f.D("1.00")  # breaks the arithmetic: quarantined
        bad_bytes = jsonutil.dumps(bad).encode()
        assert load(conn, [bad_bytes]).quarantined == 1
        forget_customer(conn, 901)
        assert personal(conn) == []

        assert load(conn, [bad_bytes]).quarantined == 1  # the same window's next run, the record unchanged
        rows = conn.execute("select count(*) from taptouch.quarantine where resolved_at is null").fetchone()[0]
        assert personal(conn) == [], f"a forgotten customer's personal data came back ({rows} open row(s))"


def test_the_schema_drift_check_copies_a_customers_personal_field_out_of_the_warehouse(migrated_db):
    """A customer field no column carries (a phone: forget.py says a real API may add one) is schema
    drift, and the check's metadata (Dagster's event log, and the alert a WARN sends) shows an example
    value: the customer's phone number, copied where forget-customer never reaches."""
    from pipelines.checks import find_drift

    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(STORE, ZONE)])
        load(conn, [f.order(1, customer=dict(SAM, phone="+61 400 123 456"))])
        rows, _ = find_drift(conn, "orders")
        examples = {path: example for path, _, _, example in rows}
        assert "customer.phone" in examples
        assert "400 123 456" not in examples["customer.phone"], examples


# a review of the fixes above (the same day)


def test_same_version_relisted_with_the_customers_details_is_not_taken_for_a_forgotten_one(migrated_db):
    """No forget-customer ever ran. The API first sent the version with only the customer's id, then
    (same updated_at, other content: the contract's "same version AND different raw" is taken) with
    the name and e-mail. FORGOTTEN_CUSTOMER cannot tell "forgotten" from "the API sent only the id",
    so the new content is called the same and dropped: raw and customer_name stay without it."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(STORE, ZONE)])
        load(conn, [jsonutil.dumps(f.order(1, customer={"id": 901})).encode()])
        load(conn, [jsonutil.dumps(f.order(1, customer=SAM)).encode()])  # same version, content added
        name, raw_name = conn.execute(
            "select customer_name, raw -> 'customer' ->> 'name' from taptouch.orders where order_id = 1"
        ).fetchone()
        assert (name, raw_name) == ("Sam Lee", "Sam Lee"), "the same version's new content was dropped"


def test_a_forgotten_customers_refused_record_held_as_text_is_quarantined_again_in_full(migrated_db):
    """The seen-again match of Quarantine.flush compares raw_text exactly when the record is no jsonb
    (a lone surrogate). forget-customer rewrote raw_text (forget._forget_in_raw_text); the next run
    of the unchanged window writes a second open row holding the name and e-mail again."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        load_stores(conn, [f.store(STORE, ZONE)])
        text = jsonutil.dumps(f.order(1, customer=SAM))
        bad = (text[:-1] + ',"note":"\\ud800"}').encode()  # a lone surrogate: jsonb refuses it
        assert load(conn, [bad]).quarantined == 1
        assert conn.execute("select raw is null from taptouch.quarantine").fetchone() == (True,)
        forget_customer(conn, 901)
        held = [r[0] for r in conn.execute("select raw_text from taptouch.quarantine")]
        assert not any("Sam Lee" in t for t in held)

        load(conn, [bad])  # the same window's next run, the record unchanged at the source
        rows = [r[0] for r in conn.execute("select raw_text from taptouch.quarantine where resolved_at is null")]
        assert not any("Sam Lee" in t for t in rows), f"personal data back in the quarantine ({len(rows)} open rows)"
