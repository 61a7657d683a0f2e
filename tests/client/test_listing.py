"""Order listings that know whether they are complete (taptouch_resource.listing), against an API
whose data moves while it is being read: edits and deletions between pages, unsorted pages, many
records at one instant, a server clock in the envelope."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qs

import httpx
import pytest

from taptouch_resource import TaptouchClient, TaptouchProtocolError
from taptouch_resource.listing import Page, Paginator, api_clock, parse_instant
from tests.support.contract_api import client_of

T0 = datetime(2026, 11, 2, tzinfo=UTC)
T1 = T0 + timedelta(days=1)
NOW = int((T1 + timedelta(hours=1)).timestamp())  # the fake API's clock (status.timestamp)


def at(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


class MovingAPI:
    """A store's order listing over mutable data: [updated_from, updated_to) by updated_at, sorted by
    (updated_at, id) unless ``unsorted`` (shuffled) or ``by_id`` (by id alone, as a server sorting by
    id or creation does); ``after_page(n)`` runs after the n-th orders page is served."""

    def __init__(self, orders: dict[int, int], *, unsorted: bool = False, by_id: bool = False):
        self.orders = dict(orders)  # id -> seconds after T0
        self.unsorted, self.by_id = unsorted, by_id
        self.after_page = lambda n: None
        self.pages = 0
        self.timestamp: object = NOW

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 3600})
        q = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        lo, hi = parse_instant(q["updated_from"]), parse_instant(q["updated_to"])
        rows = sorted((T0 + timedelta(seconds=s), oid) for oid, s in self.orders.items())
        rows = [(u, oid) for u, oid in rows if lo <= u < hi]
        if self.unsorted:
            rows.sort(key=lambda r: (r[1] * 7919) % 1009)
        if self.by_id:
            rows.sort(key=lambda r: r[1])
        index, count = int(q.get("index", 0)), int(q["count"])
        page = rows[index * count : (index + 1) * count]
        body = {
            "status": {"timestamp": self.timestamp, "ack": 200, "errors": None},
            "data": [{"id": oid, "updated_at": u.isoformat()} for u, oid in page],
        }
        self.pages += 1
        response = httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        self.after_page(self.pages)
        return response


def client_for(handler, page_size: int = 5, **kw) -> TaptouchClient:
    """A client of the fake API (or of any request handler standing in front of it)."""
    return client_of(handler, page_size, **kw)


def read(fake: MovingAPI, page_size: int = 5, late: timedelta = timedelta(0)):
    listing = client_for(fake, page_size).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, late=late)
    ids = [json.loads(r)["id"] for page in listing for r in page]
    return listing, ids


def test_an_edit_between_pages_skips_nothing():
    # ids 1..12 one second apart; right after page 1 (ids 1-5) order 2 is edited (moves to the end).
    # Reading by page number, page 2 would start at id 7: id 6 slid onto page 1 and was never read.
    fake = MovingAPI({i: i for i in range(1, 13)})
    fake.after_page = lambda n: fake.orders.update({2: 100}) if n == 1 else None
    listing, ids = read(fake)
    assert set(ids) == set(range(1, 13))
    assert ids.count(2) == 2  # both versions are read; the loader keeps the newest
    assert listing.complete and not listing.verified


def test_a_deletion_between_pages_skips_nothing():
    fake = MovingAPI({i: i for i in range(1, 13)})
    fake.after_page = lambda n: fake.orders.pop(3) if n == 1 else None
    listing, ids = read(fake)
    assert set(ids) == set(range(1, 13))  # 3 was read before it went; 6 is not skipped
    assert listing.complete


def test_offset_paging_would_have_skipped():
    """The hazard this guards against, shown on the fake itself: page-number reads lose id 6."""
    fake = MovingAPI({i: i for i in range(1, 13)})
    fake.after_page = lambda n: fake.orders.update({2: 100}) if n == 1 else None
    client = client_for(fake)
    pages = client._paginate(
        "/integration/v1/stores/7101/orders", {"updated_from": T0.isoformat(), "updated_to": T1.isoformat()}, "orders"
    )
    ids = {json.loads(r)["id"] for page in pages for r in page}
    assert 6 not in ids


def pages_of(answers: list[Page], page_size: int = 2, max_pages: int = 10) -> tuple[list[list[bytes]], list[dict]]:
    """What a Paginator yields over ``answers`` (one per request), and the params it asked with."""
    asked: list[dict] = []

    def fetch(params: dict) -> Page:
        asked.append(params)
        return answers[len(asked) - 1]

    paginator = Paginator(fetch, page_size=page_size, max_pages=max_pages, what="things")
    return list(paginator.paginate({"q": 1})), asked


def test_the_paginator_walks_index_pages_to_the_first_short_one():
    pages, asked = pages_of([Page([b"1", b"2"]), Page([b"3", b"4"]), Page([b"5"]), Page([b"never"])])
    assert pages == [[b"1", b"2"], [b"3", b"4"], [b"5"]]
    assert asked == [{"q": 1, "index": i, "count": 2} for i in range(3)]


@pytest.mark.parametrize(
    "answers, error",
    [
        ([Page([b"1", b"2", b"3"])], "page 0 holds 3 records, more than the 2 asked for"),
        ([Page([b"1", b"2"]), Page([b"3"], more="has_more")], "page 1 is the last .* has_more=true"),
        ([Page([b"1", b"2"]), Page([b"1", b"2"])], "page 1 is identical to page 0; the server seems to ignore"),
        ([Page([b"1", b"2"]), Page([b"3", b"4"]), Page([b"1", b"2"])], "page 2 is identical to page 0; .* cycle"),
        ([Page([b"1", b"2"]), Page([b"3", b"4"]), Page([b"5", b"6"])], "more than 3 pages"),
    ],
)
def test_the_paginator_refuses_what_the_page_rules_forbid(answers, error):
    with pytest.raises(TaptouchProtocolError, match=error):
        pages_of(answers, max_pages=3)


def test_a_short_page_saying_no_more_or_a_full_page_saying_more_is_fine():
    assert pages_of([Page([b"1", b"2"], more="has_more"), Page([])])[0] == [[b"1", b"2"], []]


def test_many_records_at_one_instant_are_all_read():
    fake = MovingAPI({i: 10 for i in range(1, 13)} | {20: 11, 21: 12})
    listing, ids = read(fake)
    assert sorted(set(ids)) == list(range(1, 13)) + [20, 21]
    assert listing.complete


def test_unsorted_pages_trigger_a_verifying_pass():
    fake = MovingAPI({i: i for i in range(1, 23)}, unsorted=True)
    listing, ids = read(fake)
    assert set(ids) == set(range(1, 23))
    assert listing.verified and listing.complete


def test_a_server_sorted_by_id_whose_pages_look_in_order_skips_nothing():
    # a server sorting by id (the contract promises updated_at order, but correctness must not
    # depend on it): order 5 was edited last, so page 0 (ids 1-5) looks in order and ends at its
    # edit. Before, the cursor jumped there and ids 6-12, stamped earlier, were never asked for,
    # while the listing said it was complete. The range the cursor jumps over is now asked for once
    # more; it holds orders page 0 did not, so the range is read by page number and verified
    fake = MovingAPI({i: i for i in range(1, 13)} | {5: 100}, by_id=True)
    listing, ids = read(fake)
    assert set(ids) == set(range(1, 13))
    assert listing.verified and listing.complete


@pytest.mark.parametrize("seed", range(6))
def test_a_listing_called_complete_holds_every_order_whatever_the_servers_order(seed):
    """Random orders, some edited before the listing and more while it runs, on servers sorted by
    (updated_at, id), by id alone, or shuffled: a listing that says it is complete read every order
    that stayed in the range the whole time; without edits during it, it is complete."""
    rng = random.Random(seed)
    for _ in range(60):
        n = rng.randint(0, 30)
        orders = {i: i + rng.choice([0, 0, 0, rng.randint(0, 60)]) for i in range(1, n + 1)}
        order = rng.choice(["updated", "id", "shuffled"])
        fake = MovingAPI(orders, by_id=order == "id", unsorted=order == "shuffled")
        untouched = set(orders)
        moving = rng.random() < 0.5
        if moving:
            fake.after_page = random_chaos(fake, rng, untouched)
        try:
            listing, ids = read(fake, page_size=rng.randint(3, 6))
        except TaptouchProtocolError as exc:  # records moving by a whole page look like an ignored index
            assert moving and "ignore the 'index'" in str(exc)
            continue
        assert not moving and listing.complete or moving
        if listing.complete:
            assert untouched <= set(ids), (order, orders)


def test_unsorted_pages_with_a_skip_are_read_again_until_two_passes_agree():
    # unsorted pages, and while the range is read by page number an old order appears at the front
    # (a late replica): that pass has already read the front, so only the verifying pass finds it,
    # which proves the first pass skipped something. A second verifying pass reads what the first
    # did: the range held still for a whole pass, which then skipped nothing: complete
    fake = MovingAPI({i: i for i in range(1, 23)}, unsorted=True)
    assert (1009 * 7919) % 1009 == 0  # id 1009 sorts first on the unsorted server
    fake.after_page = lambda n: fake.orders.update({1009: 0}) if n == 2 else None
    listing, ids = read(fake)
    assert 1009 in ids  # found, and loaded
    assert listing.verified and listing.complete
    # the keyset page (out of order), then three passes of 5 pages (the last asked for once)
    assert fake.pages == 1 + 5 + 5 + 5


def test_a_range_that_changes_under_every_page_number_pass_is_not_complete():
    # on a server not in updated_at order every edit shifts the pages, and two passes can skip the
    # same record: after the first pass, verifying passes run until two in a row read the same
    # versions (stamped before the listing started). Here an order is edited after every page, so
    # no two passes agree: after three verifying passes the listing is not complete
    fake = MovingAPI({i: i for i in range(1, 23)}, unsorted=True)

    def edit(n: int) -> None:
        fake.orders[n % 22 + 1] = 100 + n  # a new version, still in the range and before the start

    fake.after_page = edit
    listing, ids = read(fake)
    assert set(range(1, 23)) <= set(ids)
    assert listing.verified and not listing.complete
    assert fake.pages == 1 + 4 * 5  # the keyset page, the first pass and three verifying passes


def _by_pass(
    fake: MovingAPI, page_size: int, change: Callable[[str, int, int], None]
) -> Callable[[httpx.Request], httpx.Response]:
    """``fake`` with ``change(when, read, index)`` run "before" and "after" each orders answer:
    ``read`` counts the reads of the whole range from its first page (1: the keyset read, 2: the
    first page-number pass, 3: the first verifying pass...), ``index`` is the answer's page."""
    read = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return fake(request)
        q = request.url.params
        index = int(q.get("index", "0"))
        if parse_instant(q["updated_from"]) == T0 and index == 0 and q["count"] == str(page_size):
            read[0] += 1
        change("before", read[0], index)
        response = fake(request)
        change("after", read[0], index)
        return response

    return handler


@pytest.mark.parametrize("late", [timedelta(0), timedelta(hours=1)])
def test_removed_recent_orders_cannot_hide_a_skip_from_the_verifying_passes(late):
    # a server sorted by id, orders stamped in reverse of their ids (out of order: read by page
    # number). Orders 1-3 are edited after the listing started (with late 1 h: to 30 min before
    # it), then deleted one by one: during the first pass, between the passes and during the first
    # verifying pass. Each slides order 5 onto a page already read, so both passes read the same
    # versions of the orders stamped before the start (less late), and the listing was complete
    # without order 5 (review). Every version a pass read must now be read again by the next one
    now = NOW - T0.timestamp()
    recent = now + 5 if late == timedelta(0) else now - 1800
    fake = MovingAPI({i: 100 - i for i in range(1, 11)}, by_id=True)

    def change(when: str, read: int, index: int) -> None:
        if (when, read, index) == ("after", 1, 0):
            fake.orders.update({1: recent, 2: recent, 3: recent})
        elif (when, read, index) in (("after", 2, 1), ("before", 3, 0), ("after", 3, 0)):
            fake.orders.pop(min(i for i in (1, 2, 3) if i in fake.orders), None)

    listing = client_for(_by_pass(fake, 2, change), 2).iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1 + timedelta(days=2), late=late
    )
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert listing.verified
    assert 5 in ids or not listing.complete


def test_one_version_rendered_with_another_offset_is_the_same_version():
    # static data read by page number, each answer rendering updated_at in UTC or in +11:00 (two
    # replicas behind a load balancer): the versions a pass reads are compared by their instants,
    # so the passes agree and the listing is complete (review: compared as sent, they never did)
    fake = MovingAPI({i: 100 - i for i in range(1, 8)}, by_id=True)
    answers = [0]

    def render(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        answers[0] += 1
        if answers[0] % 3:
            return response
        body = json.loads(response.content)
        for record in body["data"]:
            record["updated_at"] = (
                parse_instant(record["updated_at"]).astimezone(timezone(timedelta(hours=11))).isoformat()
            )
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    listing = client_for(render, 2).iter_order_record_pages(7101, updated_from=T0, updated_to=T1)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 8)) and listing.verified and listing.complete


def test_started_at_is_the_api_clock_floor_minus_one_second():
    fake = MovingAPI({1: 1})
    fake.timestamp = NOW + 0.9
    listing, _ = read(fake)
    assert listing.started_at == datetime.fromtimestamp(NOW - 1, UTC)
    assert listing.newest == T0 + timedelta(seconds=1)


@pytest.mark.parametrize("value", [None, "soon", True, float("nan"), -5, 1e30, [1]])
def test_a_missing_or_absurd_clock_gives_no_start(value):
    assert api_clock(value) is None


def test_nine_fractional_digits_floor_to_the_microsecond():
    assert parse_instant("2026-11-27T12:31:05.123456789+11:00") == datetime(2026, 11, 27, 1, 31, 5, 123456, tzinfo=UTC)
    assert parse_instant("2026-11-27T12:31:05Z") == datetime(2026, 11, 27, 12, 31, 5, tzinfo=UTC)
    assert parse_instant("2026-11-27T12:31:05") is None  # no offset: not an instant


def random_chaos(fake: MovingAPI, rng: random.Random, untouched: set[int]) -> Callable[[int], None]:
    """After each page: up to three random edits (forward in time), deletions or new orders; an
    order edited or deleted leaves ``untouched``."""
    next_id = [1000]

    def chaos(_: int) -> None:
        for _ in range(rng.randint(0, 3)):
            kind = rng.random()
            if kind < 0.4 and fake.orders:
                oid = rng.choice(sorted(fake.orders))
                fake.orders[oid] = max(fake.orders[oid], rng.randint(0, 60))  # edits move forward
                untouched.discard(oid)
            elif kind < 0.7 and fake.orders:
                oid = rng.choice(sorted(fake.orders))
                del fake.orders[oid]
                untouched.discard(oid)
            else:
                fake.orders[next_id[0]] = rng.randint(0, 60)
                next_id[0] += 1

    return chaos


def test_random_edits_and_deletions_during_a_listing_lose_nothing():
    """Every order that stays in the range for the whole listing is read, whatever moves around it."""
    rng = random.Random(20)
    for _ in range(200):
        n = rng.randint(0, 40)
        orders = {i: rng.randint(0, 30) for i in range(1, n + 1)}
        fake = MovingAPI(orders)
        untouched = set(orders)
        fake.after_page = random_chaos(fake, rng, untouched)
        # the chaos's new orders are stamped in the range already read: records reaching the
        # listing late, which ``late`` (a run's lookback) covers
        listing, ids = read(fake, page_size=rng.randint(3, 6), late=timedelta(days=2))
        assert untouched <= set(ids)
        assert listing.complete


def test_an_empty_answer_that_looks_like_the_end_is_caught_when_asked_twice():
    """The 2nd answer is an empty 200 (a careless server): it looks exactly like the end of the
    listing. Asked once more, that page comes back whole: the first answer was cut, and the listing
    reads on to its real end."""
    fake = MovingAPI({i: i for i in range(1, 13)})
    real = fake.__call__
    answers = [0]

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token") or _probe(request):
            return real(request)
        answers[0] += 1
        response = real(request)
        if answers[0] == 2:
            body = json.loads(response.content)
            body["data"] = []
            return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        return response

    client = client_for(flaky, 5)
    trusting = client.iter_order_record_pages(7101, updated_from=T0, updated_to=T1)
    assert len([r for page in trusting for r in page]) == 5 and trusting.complete  # fooled: ends early
    answers[0] = 0
    careful = client.iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in careful for r in page}
    assert careful.complete and ids == set(range(1, 13))
    answers[0] = 10  # a well-behaved server: the last page answers the same twice
    steady = client.iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    assert {json.loads(r)["id"] for page in steady for r in page} == set(range(1, 13)) and steady.complete


def _probe(request: httpx.Request) -> bool:
    """Whether an orders request asks for the range a listing's cursor is about to jump over (not
    the listing's own range, ending at T1)."""
    return parse_instant(parse_qs(request.url.query.decode())["updated_to"][-1]) != T1


def _answers(fake: MovingAPI, shape: Callable[[int, list], list]) -> Callable[[httpx.Request], httpx.Response]:
    """The fake API with each orders answer's records reshaped: ``shape(n, records)`` for the n-th."""
    answers = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.url.path.endswith("/token"):
            return response
        if _probe(request):
            return response
        answers[0] += 1
        body = json.loads(response.content)
        body["data"] = shape(answers[0], body["data"])
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    return handler


def test_a_page_cut_short_in_the_middle_is_read_on_and_the_listing_is_complete():
    # before: a full page cut to 2 records ended the listing there, and its re-ask (whole) made
    # the listing doubtful, so a store with such answers now and then was never proven complete
    fake = MovingAPI({i: i for i in range(1, 18)})
    cut = _answers(fake, lambda n, data: data[:2] if n == 2 else data)
    listing = client_for(cut, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = [json.loads(r)["id"] for page in listing for r in page]
    assert sorted(ids) == list(range(1, 18)) and len(ids) == 17 and listing.complete


def test_a_short_page_answered_differently_twice_is_not_complete():
    fake = MovingAPI({i: i for i in range(1, 13)})
    # the last page (2 records) is cut to 1, then answered whole: where the listing ends is unknown
    odd = _answers(fake, lambda n, data: data[:1] if n == 3 else data)
    listing = client_for(odd, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 13)) and not listing.complete


def test_an_unsorted_server_whose_passes_each_end_early_at_an_empty_answer_is_read_on():
    # unsorted pages are read by page number, then once more to verify. An empty answer for page 2
    # in the first pass and for page 1 in the second looked like the end in both: the verifying pass
    # found nothing the first had missed, and a listing of 10 of 17 orders was called complete.
    # Each pass's short page is asked for twice now, and a whole second answer reads on
    fake = MovingAPI({i: i for i in range(1, 18)}, unsorted=True)
    asked: dict[int, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        q = parse_qs(request.url.query.decode())
        if request.url.path.endswith("/token") or "index" not in q:
            return response
        index = int(q["index"][-1])
        asked[index] = asked.get(index, 0) + 1
        if (index, asked[index]) in ((2, 1), (1, 2)):
            body = json.loads(response.content)
            body["data"] = []
            return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        return response

    listing = client_for(handler, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert listing.verified
    assert (ids, listing.complete) == (set(range(1, 18)), True)


@pytest.mark.parametrize("late, complete", [(timedelta(0), False), (timedelta(minutes=5), True)])
def test_a_record_reaching_the_listing_late_is_a_busy_store_within_the_lookback(late, complete):
    # an order stamped 5 s before the listing started reaches the API's listing between the two
    # answers of the last page (a replica behind): within ``late`` (the run's lookback, which the
    # next run asks again) that is a busy store, not a short answer
    started = T1 - timedelta(hours=1)
    fake = MovingAPI({i: i for i in range(1, 8)})
    fake.timestamp = int(started.timestamp())

    def arrive(n: int) -> None:
        if n == 4:  # page 0, the range its cursor jumps over and what follows it, then the last page's first answer
            fake.orders[99] = int((started - T0).total_seconds()) - 5

    fake.after_page = arrive
    client = client_for(fake, 5, clock=lambda: started.timestamp())
    listing = client.iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True, late=late)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 8)) | {99} and listing.complete is complete
    # complete only by reading order 99 as a late arrival (a first answer cut short looks the same)
    assert listing.late_tail is complete


def test_a_server_comparing_whole_seconds_is_not_disorder():
    """``updated_from`` with a fraction, answered from the whole second (records a little before the
    cursor): extra records, dropped as read, not a reason to read everything three times."""
    fake = MovingAPI({i: i for i in range(1, 13)})
    real = fake.__call__

    def floors(request: httpx.Request) -> httpx.Response:
        url = str(request.url).replace("%2B00%3A00", "+00:00")
        q = parse_qs(request.url.query.decode())
        if "updated_from" in q:
            at = parse_instant(q["updated_from"][-1])
            floored = at.replace(microsecond=0).isoformat()
            request = httpx.Request(request.method, request.url.copy_merge_params({"updated_from": floored}))
        del url
        return real(request)

    client = client_for(floors, 5)
    listing = client.iter_order_record_pages(7101, updated_from=T0 + timedelta(microseconds=500_000), updated_to=T1)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 13)) and listing.complete and not listing.verified


def test_a_server_ignoring_updated_from_is_read_by_page_number():
    fake = MovingAPI({i: i for i in range(1, 13)})
    real = fake.__call__

    def ignores(request: httpx.Request) -> httpx.Response:
        if "updated_from" in request.url.params:
            request = httpx.Request(request.method, request.url.copy_merge_params({"updated_from": T0.isoformat()}))
        return real(request)

    client = client_for(ignores, 5)
    listing = client.iter_order_record_pages(7101, updated_from=T0, updated_to=T1)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 13)) and listing.verified and listing.complete


@pytest.mark.parametrize("to", ["ignored", "next second"])
def test_a_server_loose_with_updated_to_is_still_read_by_keyset(to):
    # the range a cursor jumps over is asked for with updated_to = the page's newest instant: a
    # server ignoring updated_to, or rounding it up to the next whole second, also answers records
    # past it, which the cursor reaches anyway: no reason to read the range three times
    fake = MovingAPI({i: i for i in range(1, 13)})
    real = fake.__call__

    def loose(request: httpx.Request) -> httpx.Response:
        upto = request.url.params.get("updated_to")
        if upto is not None and not request.url.path.endswith("/token"):
            moved = T1 if to == "ignored" else parse_instant(upto) + timedelta(seconds=1)
            request = httpx.Request(request.method, request.url.copy_merge_params({"updated_to": moved.isoformat()}))
        return real(request)

    listing = client_for(loose, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1)
    ids = [json.loads(r)["id"] for page in listing for r in page]
    assert sorted(set(ids)) == list(range(1, 13)) and listing.complete and not listing.verified


def test_a_server_ignoring_index_is_still_read_by_keyset():
    # keyset pages and the ranges a cursor jumps over are all asked for at index 0: a server in
    # order that ignores index answers them right
    fake = MovingAPI({i: i for i in range(1, 13)})
    real = fake.__call__
    asked: list[str] = []

    def no_index(request: httpx.Request) -> httpx.Response:
        if "index" in request.url.params:
            asked.append(request.url.params["index"])
            request = httpx.Request(request.method, request.url.copy_merge_params({"index": "0"}))
        return real(request)

    listing = client_for(no_index, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1)
    ids = [json.loads(r)["id"] for page in listing for r in page]
    assert sorted(ids) == list(range(1, 13)) and listing.complete and not listing.verified
    assert asked == ["0"] * 5  # page, the range behind it, page, the range behind it, last page


def _whole_seconds(handler: Callable[[httpx.Request], httpx.Response]) -> Callable[[httpx.Request], httpx.Response]:
    """``handler`` behind a server that compares both bounds at whole seconds."""

    def floored(request: httpx.Request) -> httpx.Response:
        params = {}
        for name in ("updated_from", "updated_to"):
            if name in request.url.params:
                params[name] = parse_instant(request.url.params[name]).replace(microsecond=0).isoformat()
        return handler(httpx.Request(request.method, request.url.copy_merge_params(params)))

    return floored


@pytest.mark.parametrize("case", ["a read order deleted", "read orders edited", "whole seconds"])
def test_a_server_sorted_by_id_is_caught_whatever_leaves_the_jumped_range(case):
    # a server sorted by id: page 0 (ids 1-5) looks in order and ends at order 5, edited late; order
    # 6, stamped earlier, lies in the range the cursor jumps over. Asking for that range's page 1
    # (past the page's 4 records below 5's instant) missed order 6 whenever something made room:
    # order 1 deleted after page 0, orders 1 and 5 edited to now (an open window), or a server
    # comparing updated_to at whole seconds (100.5 read as 100: one of the page's records fewer)
    # (review). The range is asked for from its first page now
    late = timedelta(0)
    upto = T1
    if case == "whole seconds":
        fake = MovingAPI({1: 1.5, 2: 2.5, 3: 3.5, 4: 100.2, 5: 100.5, 6: 50}, by_id=True)
        handler = _whole_seconds(fake)
    else:
        fake = MovingAPI({1: 1, 2: 2, 3: 3, 4: 4, 5: 100, 6: 50}, by_id=True)
        handler = fake
    if case == "a read order deleted":
        fake.after_page = lambda n: fake.orders.pop(1) if n == 1 else None
    if case == "read orders edited":
        now = NOW - T0.timestamp()
        fake.after_page = lambda n: fake.orders.update({1: now, 5: now + 0.5}) if n == 1 else None
        upto, late = T1 + timedelta(hours=2), timedelta(hours=1)
    listing = client_for(handler, 5).iter_order_record_pages(
        7101, updated_from=T0, updated_to=upto, confirm_end=True, late=late
    )
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert 6 in ids and listing.verified


def test_a_server_sorted_by_id_reading_updated_to_at_whole_seconds_is_caught():
    # page 0 (ids 1-5) ends at order 5, stamped 100.5 s; order 6, at 100.2 s, lies in the range the
    # cursor jumps over. Asked with updated_to = 100.5, a server reading it as 100 never showed
    # order 6 (review). That range is asked up to the next whole second now; what lies at or after
    # 100.5 is the cursor's
    fake = MovingAPI({1: 1, 2: 2, 3: 3, 4: 4, 5: 100.5, 6: 100.2}, by_id=True)
    real = fake.__call__

    def floor_to(request: httpx.Request) -> httpx.Response:
        upto = request.url.params.get("updated_to")
        if upto is not None:
            floored = parse_instant(upto).replace(microsecond=0).isoformat()
            request = httpx.Request(request.method, request.url.copy_merge_params({"updated_to": floored}))
        return real(request)

    listing = client_for(floor_to, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 7)) and listing.verified and listing.complete


@pytest.mark.parametrize("lie", ["empty", "cut"])
def test_an_empty_or_cut_answer_for_the_jumped_range_is_asked_again(lie):
    # a server sorted by id whose answer for the range behind page 0 is an empty (or cut) 200: it
    # held none of the orders the page did not, so the cursor jumped past order 6 and the listing
    # was complete without it (the state model: a full reload with empty answers every 3rd
    # request). An answer short of the page's own records is asked for once more
    fake = MovingAPI({1: 1, 2: 2, 3: 3, 4: 4, 5: 100, 6: 50}, by_id=True)
    lied = [False]

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.url.path.endswith("/token") or not _probe(request) or lied[0]:
            return response
        lied[0] = True
        body = json.loads(response.content)
        body["data"] = [] if lie == "empty" else body["data"][:2]
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    listing = client_for(handler, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert lied[0] and ids == set(range(1, 7)) and listing.verified and listing.complete


def test_a_server_sorted_by_id_that_ignores_index_fails_loudly():
    # two faults at once: the range the cursor jumps over shows order 6 (stamped before the late
    # edit ending page 0), so the range is read by page number, where a server ignoring index
    # serves page 0 again: an error, not a listing called complete without orders 6-12
    fake = MovingAPI({i: i for i in range(1, 13)} | {5: 100}, by_id=True)
    real = fake.__call__

    def no_index(request: httpx.Request) -> httpx.Response:
        if "index" in request.url.params:
            request = httpx.Request(request.method, request.url.copy_merge_params({"index": "0"}))
        return real(request)

    listing = client_for(no_index, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    with pytest.raises(TaptouchProtocolError, match="ignore the 'index' parameter"):
        [r for page in listing for r in page]


def _index_ignored(handler: Callable[[httpx.Request], httpx.Response]) -> Callable[[httpx.Request], httpx.Response]:
    def no_index(request: httpx.Request) -> httpx.Response:
        if "index" in request.url.params:
            request = httpx.Request(request.method, request.url.copy_merge_params({"index": "0"}))
        return handler(request)

    return no_index


def _updated_to_ignored(
    handler: Callable[[httpx.Request], httpx.Response],
) -> Callable[[httpx.Request], httpx.Response]:
    def no_upper_bound(request: httpx.Request) -> httpx.Response:
        if "updated_to" in request.url.params:
            request = httpx.Request(request.method, request.url.copy_merge_params({"updated_to": T1.isoformat()}))
        return handler(request)

    return no_upper_bound


def test_the_jumped_range_is_one_request_so_nothing_shifts_between_its_pages():
    # a server sorted by id, a busy store in an open window (late: 1 h). The range behind page 0
    # (ids 1-5, 5 edited 10 min ago) holds 1-4, 6 (edited 30 min ago: late) and 7 (old). When that
    # range was read page by page, order 6 edited again between its pages slid order 7 onto the
    # page already read, and the listing was complete without 7 (review). One request now
    now = NOW - T0.timestamp()
    fake = MovingAPI({1: 1, 2: 2, 3: 3, 4: 4, 5: now - 600, 6: now - 1800, 7: 50}, by_id=True)
    fake.after_page = lambda n: fake.orders.update({6: now - 1}) if n == 2 else None
    listing = client_for(fake, 5).iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1 + timedelta(hours=2), confirm_end=True, late=timedelta(hours=1)
    )
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert 7 in ids or not listing.complete


@pytest.mark.parametrize("arriving, complete", [(1, True), (6, False)])
def test_late_records_in_the_jumped_range_of_a_server_ignoring_index_do_not_fail_the_listing(arriving, complete):
    # a server in order that ignores index; records stamped 20 min before the listing (within
    # late) reach the range behind page 0 (reading that range page by page raised "page 1 is
    # identical to page 0" here) (review). The range is asked for in one request of twice the page
    # size: one late record is a busy store's; six fill the answer, and what follows it is unseen,
    # so the listing is read on but not complete
    now = NOW - T0.timestamp()
    fake = MovingAPI({i: now - 3000 + 60 * i for i in range(1, 13)})
    late_ones = {12 + i: now - 3000 + 150 + i for i in range(1, arriving + 1)}
    fake.after_page = lambda n: fake.orders.update(late_ones) if n == 1 else None
    listing = client_for(_index_ignored(fake), 5).iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1 + timedelta(hours=2), confirm_end=True, late=timedelta(hours=1)
    )
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 13 + arriving)) and listing.complete is complete


def test_a_server_ignoring_updated_to_costs_one_request_per_jump():
    # the range behind the cursor, asked of a server that ignores updated_to, is answered with the
    # rest of the listing: read page by page to its end, 1,000 orders in pages of 10 took 5,780
    # requests (review). One request per whole page now
    fake = MovingAPI({i: i for i in range(1, 1001)})
    listing = client_for(_updated_to_ignored(fake), 10).iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1, confirm_end=True
    )
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 1001)) and listing.complete
    assert fake.pages <= 2 * listing.pages


def test_the_ranges_a_cursor_jumps_over_are_not_pages_of_the_listing():
    # 40 orders in pages of 5 with max_pages 12: 10 pages (each from the newest instant read, so
    # each holds the last record of the one before) and the last asked twice, within the bound; the
    # 9 ranges behind the cursor, each with what follows its answer (a short answer may be a cut one), are extra
    # requests, not pages (review: they counted, and 20 answers went past the bound)
    fake = MovingAPI({i: i for i in range(1, 41)})
    listing = client_for(fake, 5, max_pages=12).iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1, confirm_end=True
    )
    ids = [json.loads(r)["id"] for page in listing for r in page]
    assert sorted(ids) == list(range(1, 41)) and listing.complete
    assert (listing.pages, fake.pages) == (11, 29)


def test_a_server_that_cannot_read_one_second_is_read_by_page_number():
    fake = MovingAPI({i: 5 for i in range(1, 13)} | {20: 6})
    real = fake.__call__

    def narrow_is_empty(request: httpx.Request) -> httpx.Response:
        q = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        if "updated_to" in q and parse_instant(q["updated_to"]) - parse_instant(q["updated_from"]) <= timedelta(
            seconds=1
        ):
            request = httpx.Request(request.method, request.url.copy_merge_params({"updated_to": q["updated_from"]}))
        return real(request)

    client = client_for(narrow_is_empty, 5)
    listing = client.iter_order_record_pages(7101, updated_from=T0, updated_to=T1)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(range(1, 13)) | {20} and listing.verified


def test_a_page_of_records_within_one_second_on_a_whole_seconds_server():
    """15 orders inside one second at distinct microseconds, a server comparing updated_from at
    whole seconds: the cursor cannot move by keyset; that second is read alone, then the rest."""
    us = timedelta(microseconds=1)
    fake = MovingAPI({})
    fake.orders = {}
    base = {i: T0 + timedelta(seconds=5) + (10_000 + i) * us for i in range(1, 16)} | {99: T0 + timedelta(seconds=9)}
    real_call = MovingAPI.__call__

    def floors(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return real_call(fake, request)
        q = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        lo = parse_instant(q["updated_from"]).replace(microsecond=0)
        hi = parse_instant(q["updated_to"])
        rows = sorted((at, oid) for oid, at in base.items() if lo <= at < hi)
        index, count = int(q.get("index", 0)), int(q["count"])
        body = {
            "status": {"timestamp": NOW, "ack": 200, "errors": None},
            "data": [
                {"id": oid, "updated_at": at.isoformat()} for at, oid in rows[index * count : (index + 1) * count]
            ],
        }
        fake.pages += 1
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})

    client = client_for(floors, 10, max_pages=50)
    listing = client.iter_order_record_pages(7101, updated_from=T0, updated_to=T1)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert ids == set(base) and listing.complete and fake.pages < 15


@pytest.mark.parametrize("timestamp", [10**400, "1e400", 1, 0.5, 253402300798, "nan", -1])
def test_an_absurd_api_clock_is_not_believed(timestamp):
    assert api_clock(timestamp) is None


def _query(request: httpx.Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}


def _answer(response: httpx.Response, data: list) -> httpx.Response:
    body = json.loads(response.content)
    body["data"] = data
    return httpx.Response(200, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


def test_a_crowded_second_whose_two_reads_each_end_early_at_an_empty_answer_is_read_on():
    # 12 orders at one instant (more than a page) are read alone by page number, twice; an empty
    # answer at page 1 of the first read and page 2 of the second ended each early: orders never
    # served, yet the listing was complete and its mark passed them
    fake = MovingAPI({i: 10 for i in range(1, 13)} | {20: 11, 21: 12})
    narrow: dict[int, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.url.path.endswith("/token"):
            return response
        q = _query(request)
        if parse_instant(q["updated_to"]) - parse_instant(q["updated_from"]) <= timedelta(seconds=1):
            index = int(q["index"])
            narrow[index] = narrow.get(index, 0) + 1
            if (index, narrow[index]) in ((1, 1), (2, 1)):
                return _answer(response, [])
        return response

    listing = client_for(handler, 5).iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert (ids, listing.complete) == (set(range(1, 13)) | {20, 21}, True)


def test_two_short_answers_of_a_page_number_read_are_both_read():
    # an unsorted server's last page (2 records) answered cut to 1, then whole, in both passes; the
    # verifying pass's second answer also holds an order created since the listing started. Both
    # answers' records are read (neither was), and the listing is not complete (the verifying
    # pass's answers differ by more than a busy store's)
    started = T1 - timedelta(hours=1)
    fake = MovingAPI({i: i for i in range(1, 18)}, unsorted=True)
    fake.timestamp = int(started.timestamp())
    asks = [0]
    new = {"id": 500, "updated_at": (started + timedelta(seconds=30)).isoformat()}

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.url.path.endswith("/token"):
            return response
        q = _query(request)
        data = json.loads(response.content)["data"]
        if q["updated_from"] == T0.isoformat() and q["index"] == "3":
            asks[0] += 1
            if asks[0] in (1, 3):
                return _answer(response, data[:1])
            if asks[0] == 4:
                return _answer(response, data + [new])
        return response

    client = client_for(handler, 5, clock=lambda: started.timestamp())
    listing = client.iter_order_record_pages(7101, updated_from=T0, updated_to=T1, confirm_end=True)
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert listing.verified and not listing.complete
    assert ids == set(range(1, 18)) | {500}


def test_an_unsorted_busy_store_whose_first_pass_ends_differently_is_complete():
    # an order created after the listing started lands between the two answers of the first
    # pass's last page (the pages of an unsorted server shift): the verifying pass reads the range
    # again and finds nothing older than the start missed, so the listing is complete
    started = T1 - timedelta(hours=1)
    fake = MovingAPI({i: i for i in range(1, 18)}, unsorted=True)
    fake.timestamp = int(started.timestamp())
    asks = [0]

    def handler(request: httpx.Request) -> httpx.Response:
        response = fake(request)
        if request.url.path.endswith("/token"):
            return response
        data = json.loads(response.content)["data"]
        if _query(request)["updated_from"] == T0.isoformat() and 0 < len(data) < 5:
            asks[0] += 1
            if asks[0] == 1:
                fake.orders[500] = int((started - T0).total_seconds()) + 30
        return response

    client = client_for(handler, 5, clock=lambda: started.timestamp())
    listing = client.iter_order_record_pages(
        7101, updated_from=T0, updated_to=T1, confirm_end=True, late=timedelta(minutes=5)
    )
    ids = {json.loads(r)["id"] for page in listing for r in page}
    assert listing.verified and set(range(1, 18)) <= ids and listing.complete
