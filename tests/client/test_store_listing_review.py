"""The store listing is read by page number only: a store that leaves the listing while it is read
(the contract's "stores that become forbidden", "data changes under the paginator") shifts the
pages, and the store on the page boundary is never seen, though the token could read it all along."""

from __future__ import annotations

from pipelines.sync import list_stores
from tests.support.contract_api import FakeAPI, client_of, store


def _shifting_api() -> FakeAPI:
    # stores 1..5, page size 2; after page 0 ([1, 2]) the merchant revokes store 1
    fake = FakeAPI([store(i) for i in range(1, 6)])

    def after(request):
        if request.url.path == "/integration/v1/stores" and request.url.params.get("index") == "0":
            fake.stores[:] = [s for s in fake.stores if s["id"] != 1]

    fake.after = after
    return fake


def test_the_orders_and_inventory_runs_store_listing_misses_no_readable_store():
    fake = _shifting_api()
    listing = list_stores(client_of(fake, page_size=2))
    assert {2, 3, 4, 5} <= set(listing.store_ids), listing.store_ids


def test_an_orders_window_after_a_shifted_store_listing_loads_every_readable_stores_orders(migrated_db):
    import psycopg

    from pipelines.sync import OrdersRun, OrderWindow, sync_orders_window
    from pipelines.warehouse import proofs
    from tests.support.contract_api import order

    fake = _shifting_api()
    fake.orders = {sid: [order(100 * sid + 1, sid, "2026-11-26T12:00:00+11:00")] for sid in range(1, 6)}

    def before(request):  # store 1 is forbidden from now on (the merchant revoked it)
        if request.url.path.startswith("/integration/v1/stores/1/"):
            from tests.support.contract_api import env

            return env(None, ack=403, errors={"code": "store_forbidden", "message": "no"}, status=403)
        return None

    fake.before = before
    client = client_of(fake, page_size=2)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        listing = list_stores(client, conn)
        window = OrderWindow.day("2026-11-26")
        result = sync_orders_window(client, conn, window, OrdersRun(listing.timezones))
        loaded = {r[0] for r in conn.execute("select store_id from taptouch.orders")}
        problems = proofs.window_problems(conn, [window.key], listing.store_ids)
    failed = {f.store_id for f in result.failures}
    # every store is either loaded, or reported: store 3 (readable all along) must not vanish silently
    assert {2, 3, 4, 5} <= loaded | failed | {p.store_id for p in problems}, (sorted(loaded), failed, problems)
