"""Order history and forget-customer at their edges: two versions of one order in one listing, a
version replaced by a load without run settings (a reconciliation's repair) under a retention, and
a customer whose id a record sends as a string (the loader quarantines it; forgetting reaches it)."""

from __future__ import annotations

import psycopg
import pytest

from pipelines.warehouse.forget import forget_customer
from pipelines.warehouse.history import Retention
from pipelines.warehouse.loader import OrderWindowLoad
from tests.support import factories

STORE, ZONE = 7101, "Australia/Sydney"


def load(conn: psycopg.Connection, records: list, window: str, retention: Retention | None = None):
    with OrderWindowLoad(conn, window=window, timezones={STORE: ZONE}, retention=retention) as window_load:
        window_load.add_page(STORE, records)
        counts = window_load.finish()
    conn.commit()
    return counts


def history(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("select order_id, status from taptouch.order_history order by order_id, version").fetchall()


def test_an_order_edited_while_it_was_paged_keeps_both_versions(migrated_db):
    with psycopg.connect(migrated_db) as conn:
        first = factories.order(1, updated_at="2026-11-02T12:31:05+11:00")
        edited = factories.order(1, updated_at="2026-11-02T13:00:00+11:00", status="voided")
        counts = load(conn, [first, edited], "2026-11-02")
        assert (counts.inserted, counts.duplicates) == (1, 1)
        assert conn.execute("select status from taptouch.orders").fetchall() == [("voided",)]
        assert history(conn) == [(1, "completed"), (1, "voided")]
        load(conn, [first, edited, edited], "2026-11-02")  # the same two versions again: nothing new
        assert history(conn) == [(1, "completed"), (1, "voided")]


def test_a_version_a_repair_replaced_is_pruned_by_the_retention_in_force(migrated_db):
    with psycopg.connect(migrated_db) as conn:
        old = factories.order(1, customer={"id": 901, "name": "Old Name", "email": "old@example.com"})
        load(conn, [old], "2026-11-02", Retention(1))
        conn.execute("update taptouch.order_history set first_seen_at = now() - interval '10 days'")
        conn.commit()
        load(conn, [factories.order(2)], "2026-11-02", Retention(1))  # prunes; order 1's version is current
        assert history(conn) == [(1, "completed"), (2, "completed")]
        repaired = factories.order(1, updated_at="2026-11-02T14:00:00+11:00", status="voided")
        load(conn, [repaired], "repair", None)  # no run settings: the retention last applied holds
        assert history(conn) == [(1, "voided"), (2, "completed")]
        assert "Old Name" not in str(conn.execute("select raw::text from taptouch.order_history").fetchall())


def test_a_load_without_settings_prunes_nothing_when_no_retention_was_set(migrated_db):
    with psycopg.connect(migrated_db) as conn:
        load(conn, [factories.order(1)], "2026-11-02")
        conn.execute("update taptouch.order_history set first_seen_at = now() - interval '10 days'")
        conn.commit()
        load(conn, [factories.order(1, updated_at="2026-11-02T14:00:00+11:00", status="voided")], "repair")
        assert history(conn) == [(1, "completed"), (1, "voided")]


@pytest.mark.parametrize("sent_id", ["901", " 901 "])
def test_forgetting_reaches_a_quarantined_record_whose_customer_id_is_a_string(migrated_db, sent_id):
    with psycopg.connect(migrated_db) as conn:
        kept = factories.order(1, customer={"id": 901, "name": "Alice Kept", "email": "alice@example.com"})
        stringy = factories.order(2, customer={"id": sent_id, "name": "Alice Str", "email": "alice2@example.com"})
        other = factories.order(3, customer={"id": "9010", "name": "Bob Other", "email": "bob@example.com"})
        counts = load(conn, [kept, stringy, other], "2026-11-02")
        assert (counts.inserted, counts.quarantined) == (1, 2)
        changed = forget_customer(conn, 901)
        conn.commit()
        assert changed["taptouch.quarantine"] == 1
        held = str(conn.execute("select coalesce(raw::text, raw_text) from taptouch.quarantine").fetchall())
        assert "Alice Str" not in held and "alice2@example.com" not in held
        assert "Bob Other" in held  # customer 9010 is someone else
        everything = str(conn.execute("select raw::text from taptouch.orders").fetchall())
        assert "Alice Kept" not in everything
