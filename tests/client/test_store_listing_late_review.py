"""Hostile review of _every_store's first-pass dedup (73451ed): each test failed before its fix."""

from __future__ import annotations

from pipelines.sync import list_stores
from tests.support.contract_api import FakeAPI, client_of, store


def test_a_store_record_with_a_boolean_id_does_not_hide_store_1_on_a_later_pass():
    """Store 1 sits on a page boundary when store 9 is revoked after the first page: the first pass
    misses it, the second serves it (test_store_listing_review.py). The listing also holds a
    malformed record whose id is ``true`` (the contract: wrongly typed fields). _every_store keys
    records by id, and True == 1 in Python: the second pass took store 1 for a store the first had
    served (73451ed keeps only records of stores new to a pass) and dropped it; its orders are never
    loaded and no check names it (before 73451ed every record of every pass was kept)."""
    bad = store(2)
    bad["id"] = True
    fake = FakeAPI([store(9), bad, store(1), store(3), store(4)])

    def after(request):
        if request.url.path == "/integration/v1/stores" and request.url.params.get("index") == "0":
            fake.stores[:] = [s for s in fake.stores if s["id"] != 9 or s["id"] is True]

    fake.after = after
    listing = list_stores(client_of(fake, page_size=2))
    assert 1 in listing.store_ids, listing.store_ids
