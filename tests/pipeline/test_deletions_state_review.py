"""Hostile review of deletions across runs (each test failed on the code before its fix)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

import pipelines.reconcile as rec
from pipelines.reconcile import reconcile_orders
from tests.pipeline.test_reconcile import HOUR, _deleted, world  # noqa: F401  (the fixture)


@pytest.mark.parametrize("edited", [False, True], ids=["same-version", "newer-version-repaired"])
def test_a_reconciliations_listing_older_than_a_confirmed_deletion_does_not_restore_it(
    world,  # noqa: F811  (the fixture of test_reconcile.py)
    migrated_db,
    monkeypatch,
    edited,
):
    """A long reconciliation R1 lists store A, which still returns order X. Before R1 judges A (a
    slow listing of its other stores, its repair or judgement waiting for the orders merge lock),
    X is deleted at the source and two other reconciliations an hour apart (a manual run, the next
    scheduled one) miss it and confirm its deletion. R1's judgement then restores X from its older
    listing (and, when R1 listed a version newer than the warehouse's, its repair restores it
    too): X counts as a sale again until two more reconciliations delete it anew. An orders load
    with such an old listing leaves it deleted (deletions.note_listed's ``listed_since``); the
    reconciliation's own listings did not."""
    sb, client, conn = world
    real = datetime.now(UTC)
    store_a = min(sb.store_ids())
    gone = conn.execute(
        "select order_id from taptouch.orders where store_id = %s and status = 'completed' and updated_at >= %s"
        " and updated_at < %s order by order_id limit 1",
        (store_a, real - timedelta(days=3), real - timedelta(days=2)),
    ).fetchone()[0]
    if edited:  # the source's version is newer than the warehouse's: R1 repairs it
        sb.edit_order(gone, updated_at=(real - timedelta(days=1)).isoformat())
    real_list = rec._list_store
    fired = []

    def list_store(client_, conn_, store_id, *args):
        out = real_list(client_, conn_, store_id, *args)
        if store_id == store_a and not fired:
            fired.append(True)
            assert gone in out.ids  # R1 listed X, live
            sb.delete_order(gone)
            with psycopg.connect(migrated_db, autocommit=True) as other:
                reconcile_orders(client, other, days=7, now=real - 70 * timedelta(minutes=1))
                assert reconcile_orders(client, other, days=7, now=real - timedelta(minutes=5)).deleted == 1
            assert set(_deleted(conn)) == {gone}
        return out

    monkeypatch.setattr(rec, "_list_store", list_store)
    r1 = reconcile_orders(client, conn, days=7, now=real - 2 * HOUR, clock=lambda: datetime.now(UTC))
    assert fired and not r1.failures
    assert set(_deleted(conn)) == {gone}, f"order {gone}, deleted at the source, restored by an older listing"
    logged = conn.execute("select restored_at from taptouch.deletion_log where order_id = %s", (gone,)).fetchall()
    assert logged == [(None,)]


def test_a_store_whose_store_record_is_malformed_holds_back_deletions(world, migrated_db, monkeypatch):  # noqa: F811
    """Order X moved from store A to store B (an edit of its store) while B's orders could not be
    read: the warehouse holds X at A, and an earlier reconciliation found it missing there (a
    candidate, due now). Now B's record in the store listing is malformed for a while (the contract:
    records with missing or wrongly typed fields; here its time zone): the asset skips B with a
    warning, and its reconciliation, having listed every store it was given, confirmed X's deletion
    at A although X is live at B: a sale lost from the analytics until B's record is fixed. A failed
    or incomplete listing of B holds every store's deletions back
    (test_reconcile.py::test_no_deletion_is_confirmed_while_a_store_cannot_be_listed); a store the
    listing names but the run cannot read must too (or be excused)."""
    import dagster as dg

    from pipelines.warehouse import records as record_rules
    from pipelines.warehouse.resource import PostgresResource
    from taptouch_resource import TaptouchResource
    from tests.pipeline.test_reconcile import _moved_to, order_deletions

    sb, _, conn = world
    now = datetime.now(UTC)
    store_a, store_b = sorted(sb.store_ids())
    moved = _moved_to(conn, store_b, store_a, now)
    real_parse = record_rules.parse_store

    def parse_store(raw):
        row = real_parse(raw)
        if row["store_id"] == store_b:
            raise record_rules.InvalidRecord("timezone: not an IANA zone")
        return row

    monkeypatch.setattr(record_rules, "parse_store", parse_store)

    def run(config: dict | None = None) -> dg.ExecuteInProcessResult:
        with sb.serve() as url:
            return dg.materialize(
                [order_deletions],
                resources={
                    "taptouch": TaptouchResource(
                        client_id="sandbox-client", client_secret="sandbox-secret", base_url=url, requests_per_second=0
                    ),
                    "warehouse": PostgresResource(database_url=migrated_db),
                },
                run_config={"ops": {"order_deletions": {"config": config}}} if config else None,
            )

    result = run()
    assert result.success
    md = result.asset_materializations_for_node("order_deletions")[0].metadata
    assert _deleted(conn) == {}, f"order {moved}, live at store {store_b}, marked deleted at store {store_a}"
    assert md["deletions_held_back_by"].value == str(store_b)
    # the operator's word that nothing moved to B releases the others' deletions, as for a failed listing
    run({"excused_stores": [store_b]})
    assert set(_deleted(conn)) == {moved}


@pytest.mark.xfail(
    strict=True,
    reason="known, left alone: candidates and deletions are timed by each run's machine clock, not the"
    " database's (docs/reliability.md, hostile reviews of 2026-12-06, evening)",
)
def test_a_candidate_recorded_on_a_host_whose_clock_is_behind_waits_its_full_interval(world, monkeypatch):  # noqa: F811
    """Runs are Kubernetes Jobs on whichever node (docs/deploying.md), and the deletion judgement
    times candidates by the clock of the machine each run is on. An hourly orders load on a node
    whose clock is two hours behind misses order X, hidden for a few minutes by a replica's glitch:
    its candidate is "first missed" two hours ago. A reconciliation on a node with the right clock
    a minute later misses X too (still hidden): it takes the candidate for one missed two hours
    ago and marks X deleted, from two listings a minute apart, not TAPTOUCH_RECONCILE_CONFIRM_S
    (an hour): a live order deleted by one glitch. The request budget keeps every time on the
    database's clock for this reason (docs/operating.md: "processes on different machines need no
    synchronised clocks"); the deletion interval does not."""
    from pipelines.warehouse import deletions
    from tests.support.windows import load_window

    sb, client, conn = world
    real = datetime.now(UTC)
    x = conn.execute(
        "select order_id from taptouch.orders where status = 'completed' and updated_at >= %s and updated_at < %s"
        " order by order_id limit 1",
        (real - timedelta(days=2), real - timedelta(days=1)),
    ).fetchone()[0]
    sb.delete_order(x)  # hidden for a few minutes (a replica's glitch)
    behind = timedelta(hours=2)
    monkeypatch.setattr(deletions, "clock", lambda: datetime.now(UTC) - behind)  # the orders run's node
    start = datetime(real.year, real.month, real.day, tzinfo=UTC) - timedelta(days=12)
    assert not load_window(client, conn, "all", start, real + timedelta(days=2)).failures  # records the candidate
    monkeypatch.undo()  # the reconciliation's node: the right clock
    result = reconcile_orders(client, conn, days=7)  # a minute later, X still hidden
    sb.restore_order(x)
    assert result.deleted == 0 and _deleted(conn) == {}, (
        f"order {x} marked deleted from two listings {result.stores[0].listed_at - real} apart"
    )
