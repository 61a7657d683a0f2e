"""Inventory: a product that stops being listed (no longer stocked, the contract's own rule) between
the two asks of the listing's last page is an ordinary change of data under the paginator. It failed
the store as a permanent ("not transient: the step is not retried") protocol error."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import psycopg

from pipelines.sync import sync_inventory
from tests.support.contract_api import FakeAPI, client_of, store


def product(pid: int) -> dict:
    return {
        "product_id": pid,
        "sku": f"S{pid}",
        "name": f"P{pid}",
        "category": "C",
        "unit": "each",
        "on_hand": Decimal("12.5"),
        "reorder_level": 5,
        "cost_price": Decimal("18.20"),
        "sell_price": Decimal("32.00"),
        "updated_at": "2026-11-27T08:00:00+11:00",
    }


def test_a_product_delisted_between_the_two_asks_of_the_last_page_does_not_fail_the_store(migrated_db):
    fake = FakeAPI([store(1)], inventory={1: [product(p) for p in (1, 2, 3)]})
    asks = {"1": 0}

    def after(request):  # the last page (index 1) is asked twice; product 3 sells out in between
        index = request.url.params.get("index")
        if request.url.path.endswith("/inventory") and index == "1":
            asks["1"] += 1
            if asks["1"] == 1:
                fake.inventory[1] = [p for p in fake.inventory[1] if p["product_id"] != 3]

    fake.after = after
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        result = sync_inventory(
            client_of(fake, page_size=2),
            conn,
            timezones={1: "Australia/Melbourne"},
            now=datetime(2026, 11, 27, 1, tzinfo=UTC),
            confirm_s=0,
        )
        levels = {r[0] for r in conn.execute("select product_id from taptouch.inventory_levels")}
    assert not result.failures, [str(f) for f in result.failures]
    assert {1, 2} <= levels
