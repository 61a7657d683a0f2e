"""Hostile review of the late commits (f8b4bc1, 62f01d4, 73451ed): each test failed before its fix."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.pipeline.test_reconcile import _deleted, world  # noqa: F401  (the fixture)


@pytest.mark.parametrize("bad_id", ["absent", "\u00b2", "B-7"], ids=["no-id", "superscript-two", "text-id"])
def test_a_store_record_whose_id_cannot_be_read_holds_back_deletions(world, migrated_db, monkeypatch, bad_id):  # noqa: F811
    """As test_deletions_state_review.py::test_a_store_whose_store_record_is_malformed_holds_back_deletions,
    but store B's record in the store listing is malformed in its id (absent, or a string: the
    contract's "missing or wrongly typed fields"). B's orders are not listed at all, so an order that
    moved to B must not be marked deleted at A (docs/operating.md: "its record in the store listing is
    malformed, so its orders were not listed at all" holds every store's deletions back). The run
    dropped such a key (str.isdigit): a record without an id held nothing back and the moved order
    was deleted; an id of "\u00b2" (isdigit, but int() refuses it) crashed the run with a ValueError."""
    import dagster as dg

    from pipelines.warehouse.resource import PostgresResource
    from taptouch_resource import TaptouchResource
    from taptouch_resource.client import TaptouchClient
    from tests.pipeline.test_reconcile import _moved_to, order_deletions

    sb, _, conn = world
    now = datetime.now(UTC)
    store_a, store_b = sorted(sb.store_ids())
    moved = _moved_to(conn, store_b, store_a, now)
    real_list = TaptouchClient.list_stores

    def list_stores(self):
        for r in real_list(self):
            if isinstance(r, dict) and r.get("id") == store_b:
                r = dict(r)
                if bad_id == "absent":
                    del r["id"]
                else:
                    r["id"] = bad_id
            yield r

    monkeypatch.setattr(TaptouchClient, "list_stores", list_stores)
    with sb.serve() as url:
        result = dg.materialize(
            [order_deletions],
            resources={
                "taptouch": TaptouchResource(
                    client_id="sandbox-client", client_secret="sandbox-secret", base_url=url, requests_per_second=0
                ),
                "warehouse": PostgresResource(database_url=migrated_db),
            },
            raise_on_error=False,
        )
    assert result.success, "the deletions run failed on a store record's id"
    assert _deleted(conn) == {}, f"order {moved}, live at store {store_b}, marked deleted at store {store_a}"
