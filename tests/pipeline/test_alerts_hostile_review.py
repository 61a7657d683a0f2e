"""A hostile review of the alerts (2026-12-06): an error text jsonb cannot hold, and a plain-http
webhook sent through the environment's proxy."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import httpx
import psycopg
import psycopg.rows
import pytest

from pipelines import alert_outbox as outbox
from pipelines import alerts
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchClient
from taptouch_resource.errors import TaptouchAPIError
from tests.support.webhook import Receiver


def _outbox_rows(db: str) -> list[dict]:
    with psycopg.connect(db, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("select * from taptouch_meta.alert_outbox order by idempotency_key").fetchall()


def _error_from_a_server_that_sends(message: str) -> str:
    """The text of the error a Taptouch client raises for a 404 whose JSON error message is
    ``message`` (the contract: NUL characters and lone surrogates may come from the real API)."""

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/token"):
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer", "expires_in": 3600})
        body = '{"status": {"ack": 404, "errors": {"code": "not_found", "message": "' + message + '"}}, "data": null}'
        return httpx.Response(404, content=body.encode(), headers={"content-type": "application/json"})

    client = TaptouchClient(
        client_id="cid",
        client_secret="secret-value-xyz",
        base_url="https://api.taptouch.test",
        transport=httpx.MockTransport(server),
        requests_per_second=None,
        sleep=lambda s: None,
    )
    with pytest.raises(TaptouchAPIError) as err:
        list(client.list_stores())
    return str(err.value)


@pytest.mark.parametrize("odd", ["\\u0000", "\\ud800"], ids=["nul", "lone-surrogate"])
def test_a_run_whose_error_holds_a_nul_or_lone_surrogate_is_queued_not_lost(monkeypatch, migrated_db, odd):
    """A server error text holding a NUL (or a lone surrogate), which the API contract says the real
    API may send, reaches the run's failure message. PostgreSQL's jsonb cannot hold either, so the
    outbox insert fails with a psycopg DataError, which submit() takes for "the outbox is
    unavailable": every alert of the run (its failure and its checks') is POSTed once, directly,
    without retries, and a webhook hiccup at that moment loses them for good (the run-status
    sensor's cursor has moved on). The warehouse was up all along: they belonged in the outbox."""
    # the client now shows the server's NUL or surrogate escaped in its errors ...
    shown = _error_from_a_server_that_sends(f"store {odd} not found")
    assert f"store {odd.replace('u0000', 'x00')} not found" in shown and "\x00" not in shown
    # ... but a run's failure text may come from elsewhere (another library's exception quoting it)
    error = f"store {json.loads(chr(34) + odd + chr(34))} not found"
    run = SimpleNamespace(
        asset_selection=set(), tags={"dagster/partition": "2026-11-02"}, run_id="r-123", job_name="orders_job"
    )
    alert = alerts.run_failure_alert(run, [("orders", error)], None, ui_url="http://127.0.0.1:3000")
    warehouse = PostgresResource(database_url=migrated_db)
    log = logging.getLogger("test")
    with Receiver(status=503) as receiver:  # the webhook has a bad minute
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        alerts.submit([alert], receiver.url, warehouse, log)  # raised "1 alert(s) lost" before the fix
        assert receiver.bodies == []  # queued, not posted by the run-status tick
    (row,) = _outbox_rows(migrated_db)
    assert row["idempotency_key"] == "run-failure:r-123" and row["sent_at"] is None
    assert "not found" in row["body"]["text"]
    with Receiver() as receiver, psycopg.connect(migrated_db, autocommit=True) as conn:
        assert outbox.deliver_due(conn, receiver.url).sent == 1
        assert "store" in receiver.bodies[0]["text"]


def test_a_plain_http_loopback_webhook_is_never_sent_through_an_http_proxy(monkeypatch):
    """Plain http:// is allowed only to this machine, because "the URL is a secret and the alerts
    would cross the network unencrypted" otherwise (settings.checked_webhook_url). But httpx reads
    HTTP_PROXY from the environment (common on corporate and Kubernetes hosts): the POST to the
    loopback relay, with its secret path, goes in the clear to the proxy instead."""
    with Receiver() as proxy, Receiver() as webhook:
        # the "proxy" records what it is sent (it stands for a host on the network)
        monkeypatch.setenv("HTTP_PROXY", proxy.url.split("/hooks")[0])
        monkeypatch.setenv("http_proxy", proxy.url.split("/hooks")[0])
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        # returns: a 2xx came back (from the proxy), so the outbox would mark the alert sent
        outbox.post({"text": "run failed"}, "run-failure:r1", webhook.url)
        assert proxy.bodies == [], "the secret webhook URL and the alert went to the HTTP proxy in the clear"
        assert len(webhook.bodies) == 1
