"""A crowded second (more than a page of orders at one instant: a bulk change stamps them alike) is
read by page number twice, and the listing then carries on as complete. Orders of that second that
are edited while it is read (edits move updated_at forward: they leave the second) shift the pages of
BOTH reads, and an order that sat untouched in the range for the whole listing is never served, while
the listing says it is complete (its high-water mark and the window's proof move past it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from tests.support.contract_api import FakeAPI, client_of, order, store

T0 = datetime(2026, 11, 26, tzinfo=UTC)
T1 = T0 + timedelta(days=1)
S = "2026-11-26T12:00:00+11:00"  # 01:00:00Z, a whole second
LATER = "2026-11-26T20:00:00+11:00"  # an edit: 09:00:00Z, still in the window


def test_orders_edited_out_of_a_crowded_second_while_it_is_read_hide_no_untouched_order():
    crowd = [order(i, 1, S) for i in range(11, 18)]  # 11 12 13 14 | 15 (X) 16 | 17
    fake = FakeAPI([store(1)], orders={1: [order(1, 1, "2026-11-26T11:59:50+11:00"), *crowd]})
    reads = {"n": 0}

    def edit(*ids):
        for o in fake.orders[1]:
            if o["id"] in ids:
                o["updated_at"] = o["completed_at"] = LATER

    def after(request):
        p = request.url.params
        if p.get("updated_to") != "2026-11-26T01:00:01+00:00":  # only the reads of the crowded second
            return
        index = p.get("index")
        if index == "0":
            reads["n"] += 1
        if reads["n"] == 1 and index == "1":
            edit(11, 12)  # two orders of the second refunded after the first read's page 1
        if reads["n"] == 2 and index == "0":
            edit(13, 14)  # two more after the second read's page 0

    fake.after = after
    listing = client_of(fake, page_size=2).iter_order_record_pages(1, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert reads["n"] >= 2  # the scenario ran: the second was read twice
    # orders 15 and 16 were in the range, unchanged, for the whole listing
    assert {15, 16} <= ids or not listing.complete, (sorted(ids), listing.complete)
