"""A hostile review of the jumped-range check and late_tail: six tests failed on the code before;
the two honest-server tests are controls (complete, one extra request per whole page)."""

from __future__ import annotations

import json
from datetime import timedelta, timezone
from urllib.parse import parse_qs

import httpx
import pytest

from taptouch_resource.listing import parse_instant
from tests.client.test_listing import T0, T1, MovingAPI, _probe, client_for


def _reply(response: httpx.Response, data: list) -> httpx.Response:
    body = json.loads(response.content)
    body["data"] = data
    return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def _ids(listing) -> set[int]:
    return {json.loads(r)["id"] for page in listing for r in page}


# -- 1. the jumped range ---------------------------------------------------------------------------


def test_a_cut_answer_followed_by_the_pages_own_records_at_its_last_instant_skips_nothing():
    # a server sorted by id; page 0 (ids 1-5) looks in order and ends at 100.5 s, where orders 3-5
    # are stamped; order 6 (50 s) lies in the range the cursor jumps over. That range is asked up
    # to 101 s, so it holds 1-6 (by id). ONE false answer: cut to 2 records, exactly the page's own
    # records before 100.5 s. What follows it (index 1, count 2) is orders 3 and 4: a whole answer,
    # but all the page's own, so "nothing the page did not hold" and the cursor jumps past order 6
    fake = MovingAPI({1: 1, 2: 2, 3: 100.5, 4: 100.5, 5: 100.5, 6: 50}, by_id=True)
    lied = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.url.path.endswith("/token") or not _probe(request) or lied[0]:
            return response
        lied[0] += 1
        return _reply(response, json.loads(response.content)["data"][:2])

    listing = client_for(handler, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = _ids(listing)
    assert lied[0] == 1
    assert ids == set(range(1, 7)) or not listing.complete, (sorted(ids), listing.complete)


def test_a_cut_answer_and_a_read_order_leaving_before_what_follows_is_asked_skip_nothing():
    # a server sorted by id; page 0 (ids 1-5) ends at order 5's late edit (100 s); the range behind
    # it holds 1-4 and 6. ONE false answer: cut to 1-4 (exactly the page's own). Then order 1 is
    # deleted (or edited to now: it leaves the range) before what follows is asked by page number
    # (index 1, count 4): order 6 slides to position 3, the answer is empty, and the cursor jumps
    # past it. Asked from the range's first page, leaving makes room; by page number it shifts
    fake = MovingAPI({1: 1, 2: 2, 3: 3, 4: 4, 5: 100, 6: 50}, by_id=True)
    lied = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.url.path.endswith("/token") or not _probe(request) or lied[0]:
            return response
        lied[0] += 1
        fake.orders.pop(1)  # between the cut answer and the request that follows it
        return _reply(response, json.loads(response.content)["data"][:4])

    listing = client_for(handler, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = _ids(listing)
    assert lied[0] == 1
    assert 6 in ids or not listing.complete, (sorted(ids), listing.complete)


def test_a_whole_answer_for_the_jumped_range_holding_nothing_jumped_does_not_prove_the_range():
    # no false answer at all: a server sorted by id (what the check exists for). Page 0 (ids 1-5)
    # ends at order 5 (100.2 s); orders 6-10 are stamped 100.5 s, order 11 at 50 s. The range behind
    # the page is asked up to 101 s: by id 1-11, and the answer (count 10) is whole: 1-10. Orders
    # 6-10 lie at or after 100.2 s (the cursor's to read), so "nothing the page did not hold" and
    # the cursor jumps past order 11, though what follows a whole answer is unseen
    fake = MovingAPI({1: 1, 2: 2, 3: 3, 4: 4, 5: 100.2} | {i: 100.5 for i in range(6, 11)} | {11: 50}, by_id=True)
    listing = client_for(fake, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = _ids(listing)
    assert ids == set(range(1, 12)) or not listing.complete, (sorted(ids), listing.complete)


def test_an_honest_crowded_second_behind_a_page_is_still_complete():
    # the same shape on a server in (updated_at, id) order: whatever the fix, an honest server
    # reads complete
    fake = MovingAPI({1: 1, 2: 2, 3: 3, 4: 4, 5: 100.2} | {i: 100.5 for i in range(6, 30)} | {40: 50})
    listing = client_for(fake, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    assert _ids(listing) == set(range(1, 30)) | {40} and listing.complete


@pytest.mark.parametrize("below", [1, 2, 3, 4])
def test_an_honest_server_costs_one_extra_request_per_whole_page(below):
    # page 0: ``below`` orders, then the rest at one later instant; 3 pages in all
    orders = {i: i for i in range(1, below + 1)} | {i: 100 + i for i in range(below + 1, 13)}
    fake = MovingAPI(orders)
    listing = client_for(fake, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    assert _ids(listing) == set(range(1, 13)) and listing.complete and not listing.verified
    # keyset pages (the last asked twice) and, per whole page, the range behind it and ONE more
    assert fake.pages - listing.pages <= 2 * 2


def test_one_late_arrival_between_the_jumped_range_and_what_follows_it_leaves_an_honest_listing_complete():
    # an honest server in (updated_at, id) order, a busy store (late: 2 days). Page 0 is order 1
    # (1 s) and orders 2-5 (10 s): the range behind it is answered [1], and what follows is asked
    # with count 1. Order 99, stamped 5 s, reaches the listing late, just between the two: it fills
    # that one-record answer, which reads as "a whole answer of late arrivals, what follows unseen",
    # and the listing is not complete (before f70083d it was). A late arrival is read, not a reason
    fake = MovingAPI({1: 1} | {i: 10 for i in range(2, 6)} | {i: 20 + i for i in range(6, 9)})
    fake.after_page = lambda n: fake.orders.update({99: 5}) if n == 2 else None  # after the range's answer
    listing = client_for(fake, 5).iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1, confirm_end=True, late=timedelta(days=2)
    )
    ids = _ids(listing)
    assert set(range(1, 9)) <= ids
    assert listing.complete, (sorted(ids), listing.complete)


# -- 2. late_tail ----------------------------------------------------------------------------------


def test_a_crowded_second_read_by_page_number_with_answers_cut_like_a_late_arrival_sets_late_tail():
    # the fault late_tail was made for (a last page cut short on both answers, the second time less,
    # which reads exactly like a late arrival) on the last page of the one-second reads instead of
    # the keyset's. A reconciliation (late 1 h): orders 1-7 stamped 10 min before the listing, all
    # at one instant, so page 0 cannot move the cursor and the second is read by page number, twice.
    # Page 1 of each read is answered [] and then [6]: order 6 is taken for a late arrival, order 7
    # is never read, the listing is complete, and late_tail is False: the reconciliation confirms
    # deletions by it (order 7 is a candidate, and deleted by the next such run)
    started = T1 - timedelta(hours=1)
    s = int((started - T0).total_seconds()) - 600
    fake = MovingAPI({i: s for i in range(1, 8)})
    fake.timestamp = int(started.timestamp())
    second_to = parse_instant((T0 + timedelta(seconds=s + 1)).isoformat())
    asked = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        q = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        if request.url.path.endswith("/token") or parse_instant(q["updated_to"]) != second_to or q["index"] != "1":
            return response
        asked[0] += 1
        data = json.loads(response.content)["data"]
        return _reply(response, [] if asked[0] % 2 else data[:1])

    client = client_for(handler, 5, clock=lambda: started.timestamp())
    listing = client.iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1, confirm_end=True, late=timedelta(hours=1)
    )
    ids = _ids(listing)
    assert asked[0] == 4
    assert 7 in ids or not listing.complete or listing.late_tail, (sorted(ids), listing.complete, listing.late_tail)


@pytest.mark.parametrize("age", ["recent", "old"])
def test_a_last_page_asked_again_of_another_replica_rendering_another_offset_is_the_same_answer(age):
    # an honest server in (updated_at, id) order over static data, two replicas behind a load
    # balancer rendering updated_at in UTC or +11:00 (the case test_listing.py already models):
    # the last page's second answer came from the other replica. Nothing arrived late and nothing
    # was cut, but the answers differ byte for byte: with the orders stamped within ``late`` before
    # the listing, late_tail was set (this store confirms no deletion on about every other run);
    # with older ones the listing was not complete (and held back every store's deletions)
    started = T1 - timedelta(hours=1)
    base = int((started - T0).total_seconds()) - (1200 if age == "recent" else 7200)
    fake = MovingAPI({i: base + i for i in range(1, 8)})
    fake.timestamp = int(started.timestamp())
    seen: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.url.path.endswith("/token"):
            return response
        query = str(sorted(parse_qs(request.url.query.decode()).items()))
        if query not in seen:
            seen.add(query)
            return response
        data = json.loads(response.content)["data"]
        for record in data:  # asked again: the other replica
            record["updated_at"] = (
                parse_instant(record["updated_at"]).astimezone(timezone(timedelta(hours=11))).isoformat()
            )
        return _reply(response, data)

    client = client_for(handler, 5, clock=lambda: started.timestamp())
    listing = client.iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1, confirm_end=True, late=timedelta(hours=1)
    )
    ids = _ids(listing)
    assert ids == set(range(1, 8))
    assert listing.complete and not listing.late_tail, (listing.complete, listing.late_tail)
