"""Counterexamples found by the order-listing fuzzer (tests/client/fuzz_order_listing.py): each a
server behaviour and data changes the API contract allows, after which the listing said it was
complete while an order that sat untouched in the range for the whole listing was never returned."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.support.contract_api import FakeAPI, client_of, instant, order, store

BASE = 1764100000  # 2025-11-25T19:46:40Z
T0 = datetime.fromtimestamp(BASE, UTC)
T1 = T0 + timedelta(days=1)  # the window reaches past now: orders created meanwhile are in it


def _at(seconds: float) -> str:
    return datetime.fromtimestamp(BASE + seconds, UTC).isoformat()


def test_an_order_created_and_deleted_during_each_page_number_pass_hides_no_untouched_order():
    # a server sorted newest first (the contract does not promise the order): the listing reads the
    # range by page number and verifies it. During each pass an order is created (newest: at the
    # front, behind the reader, every record shifts one place back) and deleted again a page later
    # (voided and removed: every record shifts one place forward), so order 3, at the page boundary,
    # is skipped by both passes. Neither pass read the short-lived order, so both read the same
    # versions and the range looks as if it held still
    now = BASE + 100
    fake = FakeAPI([store(1)], orders={1: [order(i, 1, _at(i)) for i in range(1, 7)]})
    fake.sort = lambda o: (-instant(o["updated_at"]), -o["id"])
    fake.clock = lambda: now
    state = {"pass": 0, "next": 100}

    def after(request):
        p = request.url.params
        if p.get("updated_from") != T0.isoformat() or p.get("count") != "2":
            return
        index = p.get("index")
        live = fake.orders[1]
        if index == "0":
            state["pass"] += 1
            if state["pass"] >= 2:  # each page-number pass (the first request was the keyset page)
                state["next"] += 1
                live.append(order(state["next"], 1, _at(100.5)))  # created now, newest
        elif index == "1" and state["pass"] >= 2:
            live[:] = [o for o in live if o["id"] != state["next"]]  # and deleted again

    fake.after = after
    client = client_of(fake, page_size=2, clock=lambda: float(now))
    listing = client.iter_order_record_pages(1, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert listing.verified and state["pass"] >= 3  # the scenario ran: page-number passes
    # orders 1-6 were in the range, unchanged, for the whole listing
    assert set(range(1, 7)) <= ids or not listing.complete, (sorted(ids), listing.complete)
