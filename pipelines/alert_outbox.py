"""The alert outbox: alerts are written to the warehouse first, then POSTed until a webhook takes them.

:func:`enqueue` writes one row per event of ``taptouch_meta.alert_outbox``, keyed by
:func:`alert_key`; :func:`deliver_due` claims the due rows before POSTing them, marks a 2xx
``sent_at`` and retries anything else with :func:`backoff`, never giving up; each POST has one
whole-request deadline (:func:`post`). At least once, with the key in an ``Idempotency-Key`` header.
No dagster import: :mod:`pipelines.alerts` builds the messages and runs the sensors. The delivery
rules: docs/alerts.md, "The outbox".
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from taptouch_resource.errors import storable_text

IDEMPOTENCY_HEADER = "Idempotency-Key"
KEY_FIELD = "idempotency_key"
POST_DEADLINE = 3.0  # seconds for a whole POST: connect, TLS, send, status line and headers
TICK_BUDGET = 10.0  # seconds one delivery tick may spend POSTing
BATCH = 20  # rows one delivery tick sends at most
BACKOFF_BASE = 15.0  # seconds before the first retry; doubles per attempt
BACKOFF_CAP = 3600.0  # never more than an hour between two attempts
CLAIM_LEASE = 60.0  # a claimed row is due again after this, should its process die mid-POST
# POSTs abandoned at their deadline that may still be running in the background (a webhook that
# trickles its headers): beyond this many, no new POST starts until one of them has ended.
MAX_ABANDONED = 2


class DeliveryError(RuntimeError):
    """The webhook did not take an alert. The message names no URL (the webhook URL is a secret)."""


@dataclass(frozen=True)
class Alert:
    """One alert: ``key`` (its idempotency key), ``kind`` (``run_failure``, ``check_failure``) and
    ``body``, the JSON to POST (it carries ``idempotency_key`` too)."""

    key: str
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Delivery:
    """What one :func:`deliver_due` call did: rows ``sent``, rows ``failed`` (at most one: a tick
    stops at its first failure), the ``error`` of that failure, and rows still ``pending`` after it."""

    sent: int
    failed: int
    error: str | None
    pending: int


def alert_key(kind: str, *parts: str | None) -> str:
    """The idempotency key of an alert about ``parts`` (run id, asset, check, partition...):
    printable ASCII (each part percent-encoded), so it fits an HTTP header as it is."""
    return ":".join([kind, *(quote(part or "", safe="/-_.~+=") for part in parts)])


def storable(value: Any) -> Any:
    """``value`` (JSON: dicts, lists, strings...) with every string fit for jsonb
    (:func:`~taptouch_resource.errors.storable_text`: a NUL or a lone surrogate shown escaped): an
    error text quoting a server may carry both (the API contract says the real API can send them)."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [storable(v) for v in value]
    return value


def with_key(message: dict[str, Any], key: str) -> dict[str, Any]:
    """``message`` with its idempotency key as a body field, every string storable in jsonb."""
    return storable({**message, KEY_FIELD: key})


def backoff(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed POST: 15, 30, 60, ... capped at 1 hour."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(max(attempts - 1, 0), 20))


# ------------------------------------------------------------------------------------ one POST

_abandoned: list[threading.Thread] = []
_abandoned_guard = threading.Lock()
_posting = threading.local()  # .url: the webhook URL the POST of this thread (a worker of post) sends to


class _HideWebhookURL(logging.Filter):
    """httpx logs each request at INFO with its whole URL (``HTTP Request: POST https://...``): in a
    POST of :func:`post`, the webhook's path and query (the secret) are shown as ``/***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        url = getattr(_posting, "url", None)
        if url is None:
            return True
        if isinstance(record.args, tuple):
            record.args = tuple(_shown(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        record.msg, record.args = record.getMessage().replace(url, _shown(url)), ()
        return True


def _shown(url: str) -> str:
    """``url`` fit to log: its scheme and host only."""
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}{'' if parts.port is None else f':{parts.port}'}/***"
    except ValueError:
        return "***"


logging.getLogger("httpx").addFilter(_HideWebhookURL())


def post(
    body: dict[str, Any],
    key: str,
    url: str,
    *,
    deadline: float = POST_DEADLINE,
    transport: httpx.BaseTransport | None = None,
) -> None:
    """POST ``body`` as JSON with the ``Idempotency-Key`` header; returns once the webhook
    answered 2xx, raises :class:`DeliveryError` otherwise. Returns or raises within ``deadline``
    seconds, whatever the webhook does.

    httpx's timeout bounds each read, write or connect, not the request: a webhook that trickles
    one byte a second holds it for ever. So the request runs in a worker thread that this call
    waits for at most ``deadline`` (httpx's per-operation timeout is the deadline too, so a webhook
    that goes silent also ends the thread). Only the status line and headers are read, never the
    body. A thread still running at the deadline is left to end on its own; while
    :data:`MAX_ABANDONED` of them are, no new POST starts (the attempt fails at once)."""
    from .settings import SettingError, checked_webhook_url

    try:
        checked_webhook_url(url)  # never a secret URL in the clear across the network, whatever the path
    except SettingError as exc:
        raise DeliveryError(str(exc)) from None
    with _abandoned_guard:
        _abandoned[:] = [t for t in _abandoned if t.is_alive()]
        if len(_abandoned) >= MAX_ABANDONED:
            raise DeliveryError(
                f"the alert webhook is still answering {len(_abandoned)} earlier POSTs past their deadline: not tried"
            )
    payload = json.dumps(body).encode()
    plain_http = urlsplit(url).scheme.lower() == "http"
    headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key}
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        _posting.url = url  # this worker thread's records of httpx hide it (_HideWebhookURL)
        try:
            with (
                # no proxy from the environment for plain http (loopback only): the secret URL and
                # the alert would cross the network in the clear to it
                httpx.Client(timeout=deadline, transport=transport, trust_env=not plain_http) as client,
                client.stream("POST", url, content=payload, headers=headers) as response,
            ):
                outcome["status"] = response.status_code
        except Exception as exc:  # noqa: BLE001 - any failure is a failed attempt; reported by its class only
            outcome["error"] = type(exc).__name__

    worker = threading.Thread(target=attempt, name="taptouch-alert-post", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        with _abandoned_guard:
            _abandoned.append(worker)
        raise DeliveryError(f"the alert webhook did not answer within {deadline:g} s")
    if "error" in outcome:
        raise DeliveryError(f"the alert webhook is unreachable: {outcome['error']}")
    status = outcome["status"]
    if not 200 <= status < 300:
        raise DeliveryError(f"the alert webhook answered HTTP {status}")


# ------------------------------------------------------------------------------------ the table

_INSERT = """
insert into taptouch_meta.alert_outbox (idempotency_key, kind, body) values (%s, %s, %s)
on conflict (idempotency_key) do nothing
"""

_CLAIM = """
update taptouch_meta.alert_outbox
set attempts = attempts + 1, last_attempt_at = now(), next_attempt_at = now() + make_interval(secs => %s)
where idempotency_key = (
    select idempotency_key from taptouch_meta.alert_outbox
    where sent_at is null and next_attempt_at <= now()
    order by next_attempt_at, created_at
    limit 1
    for update skip locked
)
returning idempotency_key, body, attempts
"""

_SENT = """
update taptouch_meta.alert_outbox set sent_at = now(), last_error = null where idempotency_key = %s
"""

_FAILED = """
update taptouch_meta.alert_outbox
set last_error = %s, next_attempt_at = now() + make_interval(secs => %s)
where idempotency_key = %s
"""

_PENDING = "select count(*) from taptouch_meta.alert_outbox where sent_at is null"


def enqueue(conn, alerts: list[Alert]) -> int:
    """Write ``alerts`` to the outbox in one transaction; an alert whose key is already there
    (sent or not) is skipped. Returns how many rows were added."""
    added = 0
    with conn.transaction():
        for alert in alerts:
            cursor = conn.execute(_INSERT, (alert.key, alert.kind, json.dumps(with_key(alert.body, alert.key))))
            added += cursor.rowcount
    return added


def deliver_due(
    conn,
    url: str,
    *,
    batch: int = BATCH,
    budget: float = TICK_BUDGET,
    deadline: float = POST_DEADLINE,
    send: Callable[..., None] = post,
) -> Delivery:
    """POST the outbox rows that are due, oldest first: at most ``batch`` of them within
    ``budget`` seconds (each POST within ``min(deadline, what is left)``), stopping at the first
    failure. ``conn``: a psycopg connection in autocommit mode (each claim and outcome commits
    on its own, so no transaction stays open across a POST)."""
    started = time.monotonic()
    sent = failed = 0
    error = None
    while sent + failed < batch:
        left = budget - (time.monotonic() - started)
        if left < 0.5:
            break
        row = conn.execute(_CLAIM, (CLAIM_LEASE,)).fetchone()
        if row is None:
            break
        key, body, attempts = row
        try:
            send(body, key, url, deadline=min(deadline, left))
        except DeliveryError as exc:
            error = str(exc)
            conn.execute(_FAILED, (error, backoff(attempts), key))
            failed += 1
            break
        conn.execute(_SENT, (key,))
        sent += 1
    pending = conn.execute(_PENDING).fetchone()[0]
    return Delivery(sent=sent, failed=failed, error=error, pending=pending)
