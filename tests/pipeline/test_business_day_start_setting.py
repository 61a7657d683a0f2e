"""TAPTOUCH_BUSINESS_DAY_START through the code location and the CLI: a bad value fails the run once
(never retried) and `taptouch-sync rebuild` cleanly, naming the variable and the allowed range."""

from __future__ import annotations

import dagster as dg

from pipelines.cli import main
from pipelines.definitions import defs
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchResource

MESSAGE = (
    "TAPTOUCH_BUSINESS_DAY_START must be a local time HH:MM from 00:00 to 11:59, got '13:00': set it to "
    "the time the stores' business day starts (e.g. 04:00), or unset it for 00:00"
)


def test_a_bad_day_start_fails_the_orders_step_once(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_BUSINESS_DAY_START", "13:00")
    res = {
        "taptouch": TaptouchResource(client_id="c", client_secret="s", base_url="http://127.0.0.1:9"),
        "warehouse": PostgresResource(database_url="postgresql://nobody@127.0.0.1:9/none"),
    }
    orders = defs.get_assets_def("orders")
    result = dg.materialize([orders], resources=res, partition_key="2026-11-25", raise_on_error=False)
    assert not result.success
    assert result.failure_data_for_node("orders").user_failure_data.description == MESSAGE
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]


def test_rebuild_refuses_a_bad_day_start_before_touching_the_warehouse(monkeypatch, capsys):
    monkeypatch.setenv("TAPTOUCH_BUSINESS_DAY_START", "13:00")
    code = main(["rebuild", "--database-url", "postgresql://nobody@127.0.0.1:9/none"])
    assert code == 2
    assert MESSAGE in capsys.readouterr().err
