"""The digest look-ups beside a COPY in flight (:meth:`OrderWindowLoad._lookup`): the second
connection is an optimisation, never a new way for a window to fail."""

from __future__ import annotations

import logging
import time

import psycopg

from pipelines.warehouse import loader
from pipelines.warehouse.loader import OrderWindowLoad, load_stores
from tests.support import factories as f


def test_a_second_connection_lost_while_idle_between_pages_costs_the_window_nothing(migrated_db):
    """With ``idle_session_timeout`` set (as a managed server or the role may have it), the second
    connection, idle outside a transaction while the API pauses between pages, is ended by the
    server; the load's own connection, in its transaction, is not. The window still loads whole."""
    url = migrated_db.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as admin:
        load_stores(admin, [f.store(7101, "Australia/Melbourne")])
    orders = [f.order(900 + i) for i in range(6)]
    with (
        psycopg.connect(url, autocommit=True, options="-c idle_session_timeout=500") as conn,
        OrderWindowLoad(conn, window="2026-11-02", batch_size=1) as load,
    ):
        for i, order in enumerate(orders):
            load.add_page(7101, [order])
            if i == 1:
                assert load._side is not None  # the page's look-up ran beside a COPY
                time.sleep(1.5)  # e.g. the API asks the fetcher to wait: the side connection idles
        counts = load.finish()
    assert (counts.inserted, counts.quarantined) == (6, 0)
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("select count(*) from taptouch.orders").fetchone()[0] == 6


def test_a_second_connection_that_cannot_open_is_logged_without_the_password(migrated_db, monkeypatch, caplog):
    """The load's connection carries a password; opening the second connection fails with an error
    that quotes it (as a driver's message may). The log says the look-ups wait for the COPY and
    never shows the password; the window loads whole."""
    url = migrated_db.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as admin:
        load_stores(admin, [f.store(7101, "Australia/Melbourne")])
    secret = "s3cret-Pa55word"
    with psycopg.connect(url, autocommit=True, password=secret) as conn:  # the test server trusts: unused
        real = loader.psycopg.connect

        def refusing(*args, **kwargs):
            raise psycopg.OperationalError(f'password "{kwargs.get("password")}" refused for user "postgres"')

        monkeypatch.setattr(loader.psycopg, "connect", refusing)
        caplog.set_level(logging.INFO, logger="pipelines.warehouse.loader")
        with OrderWindowLoad(conn, window="2026-11-02", batch_size=1) as load:
            for i in range(4):
                load.add_page(7101, [f.order(960 + i)])
            counts = load.finish()
        monkeypatch.setattr(loader.psycopg, "connect", real)
    assert (counts.inserted, counts.quarantined) == (4, 0)
    assert "no second connection for reads during COPY" in caplog.text
    assert secret not in caplog.text and "refused for user" in caplog.text
