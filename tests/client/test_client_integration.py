"""The client against the sandbox over real HTTP with every fault switched on."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from taptouch_resource import TaptouchAPIError, TaptouchClient
from taptouch_sandbox import Faults, Sandbox, SandboxConfig

END = date(2026, 11, 27)


def served_as_held(clean, served) -> bool:
    """``served`` equals ``clean`` except for unknown fields the server added (at any depth)."""
    if isinstance(clean, dict):
        return isinstance(served, dict) and all(k in served and served_as_held(v, served[k]) for k, v in clean.items())
    if isinstance(clean, list):
        return isinstance(served, list) and len(clean) == len(served) and all(map(served_as_held, clean, served))
    return type(clean) is type(served) and clean == served


def faulty() -> Faults:
    return Faults(
        rate_limit_every=6,
        rate_limit_burst=2,
        retry_after="0",
        server_error_every=5,
        server_error_burst=2,
        timeout_every=13,
        timeout_sleep=1.0,
        token_lifetime=3,
        revoke_tokens_every=9,
        token_errors_every=2,
        duplicate_page_boundary=True,
        malformed_every=15,
        extra_fields=True,
        ack_mismatch_every=7,
    )


def test_every_record_arrives_exactly_despite_every_fault():
    sb = Sandbox(SandboxConfig(seed=11, stores=3, days=2, end_date=END, orders_per_day=40), faults=faulty())
    forbidden = sb.store_ids()[2]
    sb.faults.forbidden_stores = {forbidden}
    start = datetime(2026, 11, 26, tzinfo=UTC)
    end = start + timedelta(days=1)
    with sb.serve() as url:
        client = TaptouchClient(
            client_id="sandbox-client",
            client_secret="sandbox-secret",
            base_url=url,
            page_size=10,
            timeout=0.5,
            max_retries=12,  # the faults above line up: one inventory request fails 11 times in a row
            requests_per_second=None,
            sleep=lambda s: None,
        )
        stores = {s["id"]: s for s in client.list_stores()}
        got: dict[int, dict] = {}
        copies = 0
        for sid in sb.store_ids()[:2]:
            for order in client.iter_orders(sid, updated_from=start, updated_to=end):
                copies += 1
                got[order["id"]] = order
        with pytest.raises(TaptouchAPIError) as err:
            list(client.iter_orders(forbidden, updated_from=start, updated_to=end))
        inventory = {p["product_id"]: p for p in client.iter_inventory(sb.store_ids()[0])}
    stats = client.stats.snapshot()

    # every fault really happened
    assert stats["rate_limited"] > 0 and stats["server_errors"] > 0 and stats["network_errors"] > 0
    assert stats["unauthorized"] > 0 and stats["token_requests"] > 2
    assert copies == len(got)  # a record repeated across pages is yielded once by the keyset listing
    assert err.value.status == 403 and err.value.code == "store_forbidden"

    # each record, de-duplicated by id, is exactly what the sandbox holds (plus the unknown fields it added)
    want = {o["id"]: o for sid in sb.store_ids()[:2] for o in sb.orders_in_window(sid, start, end)}
    assert set(got) == set(want)
    malformed = sb.malformed_order_ids() & set(want)
    assert malformed, "malformed_every must hit some orders in the window"
    for oid, clean in want.items():
        served = got[oid]
        assert "x_meta" in served  # unknown fields are passed through, not dropped
        if oid not in malformed:
            assert served_as_held(clean, served), oid
    for s in sb.stores():
        assert served_as_held(s, stores[s["id"]])
    clean_inventory = {p["product_id"]: p for p in sb.inventory(sb.store_ids()[0])}
    assert set(inventory) == set(clean_inventory)
    for pid, p in clean_inventory.items():
        assert served_as_held(p, inventory[pid])
