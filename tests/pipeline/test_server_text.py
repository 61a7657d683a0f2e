"""Text a server sent, holding a NUL or a lone surrogate (the API contract says the real API may send
both), written by the warehouse: a store's failure in its window's proofs, a refused refresh's
description in the token store (a hostile review, 2026-12-06). PostgreSQL's text holds neither: the
write failed and took the window's healthy stores, or the dead refresh token's removal, with it."""

from __future__ import annotations

import json
import re
from datetime import date

import httpx
import psycopg
import pytest

from pipelines.settings import RunSettings
from pipelines.sync import OrdersRun, OrderWindow, day_window, list_stores, sync_orders_window
from taptouch_resource import TaptouchClient
from taptouch_resource.auth import ReauthorizationRequired
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.oauth_helpers import CLIENT_ID, CLIENT_SECRET, authorize, make_store

pytestmark = pytest.mark.postgres

HOSTILE = "no access \x00 here \ud800 (store)"


def _hostile_store_transport(sb: Sandbox, bad: int, message: str = HOSTILE) -> httpx.MockTransport:
    """The sandbox, but store ``bad``'s orders answer 403 with an envelope message holding a NUL
    and a lone surrogate (JSON escapes \\u0000 and \\ud800: the API contract says the real API can send them)."""
    inner = sb.transport()
    body = json.dumps(
        {"status": {"timestamp": 1764300000, "ack": 403, "errors": {"code": "store_forbidden", "message": message}}}
    ).encode()  # ensure_ascii: written as \u0000 and \ud800

    def handler(request: httpx.Request) -> httpx.Response:
        if re.search(rf"/stores/{bad}/orders", request.url.path):
            return httpx.Response(403, content=body, headers={"content-type": "application/json"})
        return inner.handle_request(request)

    return httpx.MockTransport(handler)


@pytest.fixture(params=["a NUL \x00 here", "a lone surrogate \ud800 here"], ids=["nul", "surrogate"])
def world(migrated_db, request):
    sb = Sandbox(SandboxConfig(seed=5, stores=3, days=3, end_date=date(2026, 11, 27), orders_per_day=30))
    bad = sb.store_ids()[1]
    client = TaptouchClient(
        client_id="sandbox-client",
        client_secret="sandbox-secret",
        transport=_hostile_store_transport(sb, bad, request.param),
        requests_per_second=None,
        sleep=lambda s: None,
        page_size=20,
    )
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        yield sb, client, conn, bad


def test_a_store_whose_error_text_holds_a_nul_costs_only_its_store(world):
    """A store's listing fails with a server message holding NUL / a lone surrogate: the window's
    other stores still commit (the failure text written to taptouch.listing_proofs.failure must be
    storable, as the alerts' now are)."""
    sb, client, conn, bad = world
    listing = list_stores(client)
    start, end = day_window("2026-11-26")
    result = sync_orders_window(
        client, conn, OrderWindow("2026-11-26", start, end), OrdersRun(listing.timezones, settings=RunSettings())
    )
    assert [f.store_id for f in result.failures] == [bad]
    loaded = {r[0] for r in conn.execute("select distinct store_id from taptouch.orders")}
    assert loaded == set(sb.store_ids()) - {bad}
    (failure,) = conn.execute(
        "select failure from taptouch.listing_proofs where store_id = %s and failure is not null", (bad,)
    ).fetchone()
    assert "store_forbidden" in failure


@pytest.mark.parametrize("text", ["revoked \x00 here", "revoked \ud800 here"], ids=["nul", "surrogate"])
def test_a_refused_refresh_whose_description_holds_a_nul_drops_the_dead_token(migrated_db, text):
    """Taptouch refuses the refresh token (invalid_grant) with an error_description holding a NUL
    or a lone surrogate: the dead refresh token is dropped and ReauthorizationRequired says to
    authorize again (on HEAD the update of last_error fails: a database error, the dead token kept)."""
    from pipelines.authorize import merchant_auth

    sb = Sandbox(SandboxConfig(seed=5, stores=2, days=2, end_date=date(2026, 11, 2), orders_per_day=5))
    with sb.serve() as served:
        store = make_store(migrated_db)
        authorize(served, store, merchant="cafe")
    body = json.dumps({"error": "invalid_grant", "error_description": text}).encode()
    refusing = httpx.MockTransport(
        lambda request: httpx.Response(400, content=body, headers={"content-type": "application/json"})
    )
    auth = merchant_auth(
        store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe", transport=refusing
    )
    with pytest.raises(ReauthorizationRequired):
        store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=10 * 86400.0)
    [grant] = store.grants()
    assert not grant.has_refresh_token
    assert "revoked" in grant.last_error
