"""``taptouch-sync forget-customer ID``: the customer's personal fields are gone from every place the
warehouse holds them (orders.raw and customer_name, every history version, quarantined records as
jsonb and as text), nothing else changed, the counts are reported and no value is printed."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pipelines.cli import main
from pipelines.warehouse.loader import OrderWindowLoad
from tests.support import factories
from tests.support.history_world import World

TABLES = ("taptouch.orders", "taptouch.order_history", "taptouch.quarantine")


def texts(conn, table: str) -> dict:
    """Every row's key -> its raw form as text (and the typed customer_name of orders)."""
    if table == "taptouch.orders":
        sql = "select order_id::text, raw::text || coalesce(customer_name, '') from taptouch.orders"
    elif table == "taptouch.order_history":
        sql = "select order_id || ':' || version, raw::text from taptouch.order_history"
    else:
        sql = "select quarantine_id::text, coalesce(raw::text, raw_text) from taptouch.quarantine"
    return dict(conn.execute(sql).fetchall())


def customer_rows(conn, table: str, customer_id: int) -> set[str]:
    """The keys (as :func:`texts`) of the rows whose record names the customer."""
    key, text = {
        "taptouch.orders": ("order_id::text", "raw::text"),
        "taptouch.order_history": ("order_id || ':' || version", "raw::text"),
        "taptouch.quarantine": ("quarantine_id::text", "coalesce(raw::text, raw_text)"),
    }[table]
    rows = conn.execute(f"select {key}, {text} from {table}").fetchall()  # noqa: S608 - names from above
    return {k for k, text in rows if (json.loads(text)["customer"] or {}).get("id") == customer_id}


def quarantine_two(conn, store_id: int, customer: dict, tz: str) -> None:
    """Two quarantined records of the customer: one PostgreSQL holds as jsonb (a wrong total), one
    only as text (a lone surrogate escaped in its number: jsonb refuses it)."""
    bad_total = factories.order(9_000_001, store_id=store_id, customer=customer, total="1.00")
    text = json.dumps(factories.order(9_000_002, store_id=store_id, customer=customer), default=str)
    lone = text.replace('"A-9000002"', '"A\\ud800B"').encode()
    with OrderWindowLoad(conn, window="forget-test", timezones={store_id: tz}) as load:
        load.add_page(store_id, [bad_total, lone])
        assert load.finish().quarantined == 2


@pytest.mark.slow
def test_forget_customer_removes_the_personal_fields_everywhere_and_nothing_else(migrated_db, capsys):
    w = World(migrated_db, seed=5)
    try:
        w.run()
        by_customer = Counter(o["customer"]["id"] for o in w.live() if o["customer"] and o["customer"].get("email"))
        victim_id, _ = by_customer.most_common(1)[0]
        victim = next(o for o in w.live() if o["customer"] and o["customer"]["id"] == victim_id)
        name, email = victim["customer"]["name"], victim["customer"]["email"]
        w.edit(victim, status="voided")  # a second version of one of the customer's orders in the history
        w.run()
        store = victim["store_id"]
        zone = next(s["timezone"] for s in w.sb.stores() if s["id"] == store)
        quarantine_two(w.conn, store, victim["customer"], zone)
        raw_text_rows = w.conn.execute("select count(*) from taptouch.quarantine where raw is null").fetchone()[0]
        assert raw_text_rows == 1  # the lone surrogate's record is held as text only
        orders_of = [o["id"] for o in w.live() if o["customer"] and o["customer"]["id"] == victim_id]
        versions_of = sum(1 for (oid, _) in w.seen if oid in orders_of)
        before = {t: texts(w.conn, t) for t in TABLES}
        theirs = {t: customer_rows(w.conn, t, victim_id) for t in TABLES}
        assert len(theirs["taptouch.orders"]) == len(orders_of)
        assert any(email in text for text in before["taptouch.order_history"].values())

        assert main(["forget-customer", str(victim_id), "--database-url", migrated_db]) == 0
        out = capsys.readouterr().out
        assert f"taptouch.orders: {len(orders_of)} row(s) changed" in out
        assert f"taptouch.order_history: {versions_of} row(s) changed" in out
        assert "taptouch.quarantine: 2 row(s) changed" in out
        assert name not in out and email not in out

        after = {t: texts(w.conn, t) for t in TABLES}
        for table in TABLES:
            assert after[table].keys() == before[table].keys()
            changed = {k for k in before[table] if before[table][k] != after[table][k]}
            # exactly the customer's rows changed, and none of them still holds a personal value
            assert changed == theirs[table]
            assert not any(name in after[table][k] for k in changed)
        assert not any(email in text for table in TABLES for text in after[table].values())
        rows = w.conn.execute(
            "select customer_id, customer_name, raw -> 'customer' from taptouch.orders where order_id = any(%s)",
            (orders_of,),
        ).fetchall()
        assert rows and all(r == (victim_id, None, {"id": victim_id}) for r in rows)
        text_row = w.conn.execute("select raw_text from taptouch.quarantine where raw is null").fetchone()[0]
        assert json.loads(text_row)["customer"] == {"id": victim_id}

        # again: nothing left to remove; a re-listing of the same versions does not bring them back
        assert main(["forget-customer", str(victim_id), "--database-url", migrated_db]) == 0
        assert "Nothing to remove" in capsys.readouterr().out
        w.run()
        assert texts(w.conn, "taptouch.orders") == after["taptouch.orders"]
    finally:
        w.close()


def test_forget_customer_needs_a_whole_number(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["forget-customer", "sam@example.com"])
    assert exit_.value.code == 2
    assert "customer id" in capsys.readouterr().err
