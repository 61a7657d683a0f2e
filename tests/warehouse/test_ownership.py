"""Two accounts that list the same store: the first account that loaded a store
owns it; the other skips it with a warning naming both; an order and its child rows always carry
the same account; marks are per account (tests/warehouse/test_marks.py)."""

from __future__ import annotations

import logging
from datetime import date

import psycopg
import pytest

from pipelines.sync import day_window, list_stores, sync_stores
from pipelines.warehouse.loader import OrderWindowLoad
from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.windows import load_window

pytestmark = pytest.mark.postgres

DAY = "2026-11-26"
START, END = day_window(DAY)


def session(url: str, account: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("select set_config('taptouch.account', %s, false)", (account,))
    return conn


@pytest.fixture
def sandbox():
    return Sandbox(SandboxConfig(seed=8, stores=2, days=2, end_date=date(2026, 11, 26), orders_per_day=30))


def client_of(sb: Sandbox) -> TaptouchClient:
    return TaptouchClient(
        client_id=sb.config.client_id,
        client_secret=sb.config.client_secret,
        transport=sb.transport(),
        requests_per_second=None,
        sleep=lambda s: None,
    )


def test_the_first_account_owns_a_store_and_the_other_skips_it(sandbox, migrated_db, caplog):
    client = client_of(sandbox)
    with session(migrated_db, "north") as north, session(migrated_db, "south") as south:
        sync_stores(client, north)
        listing = list_stores(client, north)
        load_window(client, north, DAY, START, END, timezones=listing.timezones)

        caplog.set_level(logging.WARNING)
        counts, records = sync_stores(client, south)  # south is granted the same stores
        assert records == [] and counts.rows == 0
        theirs = list_stores(client, south)
        assert theirs.timezones == {} and theirs.foreign == {sid: "north" for sid in sandbox.store_ids()}
        text = caplog.text
        assert all(
            f"store {sid} skipped: account 'south' lists it, but account 'north'" in text for sid in sandbox.store_ids()
        )
        result = load_window(client, south, DAY, START, END, timezones=theirs.timezones)
        assert result.counts.rows == 0
        accounts = north.execute("select account, count(*) from taptouch.orders group by account").fetchall()
        assert accounts == [
            (
                "north",
                len(sandbox.orders_in_window(sandbox.store_ids()[0], START, END))
                + len(sandbox.orders_in_window(sandbox.store_ids()[1], START, END)),
            )
        ]


def test_an_order_and_its_children_carry_one_account(sandbox, migrated_db):
    client = client_of(sandbox)
    sid = sandbox.store_ids()[0]
    with session(migrated_db, "north") as north, session(migrated_db, "south") as south:
        sync_stores(client, north)
        tz = list_stores(client, north).timezones
        load_window(client, north, DAY, START, END, timezones=tz)
        order = sandbox.orders_in_window(sid, START, END)[0]
        edited = sandbox.edit_order(order["id"], status="refunded")
        # another account's load of the edited order (as before ownership, or a store moved by hand)
        with OrderWindowLoad(south, window=DAY, timezones=tz) as load:
            load.add_page(sid, [edited])
            load.finish()
        rows = north.execute(
            "select 'orders', account from taptouch.orders where order_id = %(id)s union all "
            "select 'items', account from taptouch.order_items where order_id = %(id)s union all "
            "select 'payments', account from taptouch.order_payments where order_id = %(id)s union all "
            "select 'refunds', account from taptouch.order_refunds where order_id = %(id)s",
            {"id": order["id"]},
        ).fetchall()
        assert {kind for kind, _ in rows} >= {"orders", "items", "refunds"}
        assert {account for _, account in rows} == {"north"}


def test_a_store_whose_orders_another_account_loaded_first_is_theirs(sandbox, migrated_db):
    """The orders asset may load a store before any stores run: its orders say who was first."""
    client = client_of(sandbox)
    with session(migrated_db, "north") as north, session(migrated_db, "south") as south:
        tz = list_stores(client, north).timezones  # no store rows yet
        load_window(client, north, DAY, START, END, timezones=tz)
        assert list_stores(client, south).foreign == {sid: "north" for sid in sandbox.store_ids()}
        counts, records = sync_stores(client, south)
        assert records == [] and north.execute("select count(*) from taptouch.stores").fetchone() == (0,)
