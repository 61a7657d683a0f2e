"""Alerts: a failed run, or a failed asset check, sends one message to a webhook, at least once.

``taptouch_run_failure_alert`` and ``taptouch_check_failure_alert`` write each alert, redacted
(:func:`redact`), to the warehouse's outbox (:mod:`pipelines.alert_outbox`, one row per event), and
``taptouch_alert_outbox`` POSTs it with backoff until the webhook takes it. Nothing is queued or
sent while ``TAPTOUCH_ALERT_WEBHOOK_URL`` is unset. Settings, the message, redaction and delivery:
docs/alerts.md.
"""

import logging
import os
import re
from typing import Any

import dagster as dg
import psycopg

from . import alert_outbox as outbox
from . import settings
from .warehouse.db import EmbeddedServerError, WarehouseConfigError, connect
from .warehouse.resource import PostgresResource

log = logging.getLogger(__name__)

WEBHOOK_ENV = settings.ALERT_WEBHOOK_ENV
MIN_SEVERITY_ENV = settings.ALERT_MIN_SEVERITY_ENV
UI_URL_ENV = settings.UI_URL_ENV
INTERVAL_ENV = settings.ALERT_INTERVAL_ENV
DEFAULT_UI_URL = settings.DEFAULT_UI_URL
ERROR_CHARS = 600

# Environment variables whose values never appear in an alert, whatever the text around them.
SECRET_ENVS = (
    "TAPTOUCH_CLIENT_SECRET",
    "TAPTOUCH_TOKEN_KEY",
    "TAPTOUCH_DATABASE_URL",
    "DAGSTER_PG_URL",
    WEBHOOK_ENV,
    "TAPTOUCH_TEST_DATABASE_URL",
)


def secret_envs() -> list[str]:
    """:data:`SECRET_ENVS` and every account's ``TAPTOUCH_<NAME>_CLIENT_SECRET``."""
    return [
        *SECRET_ENVS,
        *sorted(
            k for k in os.environ if k.startswith("TAPTOUCH_") and k.endswith("_CLIENT_SECRET") and k not in SECRET_ENVS
        ),
    ]


def min_severity(alert: settings.AlertSettings) -> dg.AssetCheckSeverity:
    """The lowest severity of a failed check that is alerted on."""
    return dg.AssetCheckSeverity[alert.checked_min_severity()]


# ------------------------------------------------------------------------------------ redaction

_REDACTED = "***"
# A URL runs to the next whitespace, ", <, >, | or backtick: everything RFC 3986 allows in a user info
# (the sub-delims ! $ & ' ( ) * + , ; =, percent escapes) and what it does not but libpq takes (#, ?,
# / and @ in a password) stays inside it, so no part of a password is left outside the URL. No
# word boundary before the scheme: "dsn_postgresql://u:pw@h" is a URL too.
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s\"<>|`]+")
_KEY_VALUE = re.compile(
    r"(?i)\b((?:client_)?secret|password|passwd|pwd|token|access_token|refresh_token|api_key|apikey|"
    r"authorization|code_verifier|key)(\\?[\"']?\s*[=:]\s*)"
    # the value: JSON escaped inside a JSON string (\"...\"), a JSON string (escapes inside), quoted, bare
    r"(\\\"(?:[^\"\\]|\\[^\"])*\\\"|\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s,;&'\"]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
_LONG_TOKEN = re.compile(r"\b(?=[A-Za-z0-9_\-]*[0-9])(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}\b")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")
_AUTHORITY_END = re.compile(r"[/?#]")
MAX_REDACT_CHARS = 20_000  # longer texts are cut before redaction (far past what an alert shows)
# Secret settings that hold a URL: the password of each, in every reading (libpq's and a person's;
# pieces split at @ / ? #; percent-decoded), is hidden on its own too, wherever it appears.
URL_SECRET_ENVS = ("TAPTOUCH_DATABASE_URL", "DAGSTER_PG_URL", "TAPTOUCH_TEST_DATABASE_URL")


def _host_port(host: str) -> str:
    """One ``host[:port]`` of an authority: a port that is not a number is hidden (it may be the
    start of a password whose ``@`` is missing: ``https://help.taptouch.net:docs/``)."""
    if host.startswith("["):  # IPv6 literal
        end = host.find("]")
        if end < 0:
            return _REDACTED
        name, port = host[: end + 1], host[end + 1 :]
        if port and not port.startswith(":"):
            return name + _REDACTED
        port = port[1:]
    else:
        name, _, port = host.partition(":")
    if not port:
        return name
    return f"{name}:{port}" if port.isascii() and port.isdigit() else f"{name}:{_REDACTED}"


def _redact_url(url: str) -> str:
    """``url`` without its user info (all of it up to the **last** ``@``: a password may hold
    ``#``, ``?``, ``/`` or ``@``, which libpq reads as part of it), query or fragment; a
    non-numeric port is hidden. Never raises: on any surprise the whole URL is hidden."""
    try:
        scheme, _, rest = url.partition("://")
        at = rest.rfind("@")
        user_info = at >= 0
        rest = rest[at + 1 :]
        end = _AUTHORITY_END.search(rest)
        authority, tail = (rest[: end.start()], rest[end.start() :]) if end else (rest, "")
        hosts = ",".join(_host_port(host) for host in authority.split(","))  # libpq: h1:5432,h2:5433
        path, mark, query = tail.partition("#")[0].partition("?")
        return (
            f"{scheme}://"
            + (f"{_REDACTED}@" if user_info else "")
            + hosts
            + path
            + (f"?{_REDACTED}" if mark and query else "")
        )
    except Exception:  # noqa: BLE001 - redaction must never raise; hide everything instead
        return _REDACTED


def _known_secrets() -> list[str]:
    """The values of the secret settings, and each piece of a URL setting's password, longest first."""
    from pipelines.warehouse.urls import secrets_of

    found: set[str] = set()
    for env in secret_envs():
        value = os.environ.get(env, "").strip()
        if value:
            found.add(value)
            if env in URL_SECRET_ENVS:
                found.update(secrets_of(value))
    return sorted(found, key=len, reverse=True)


def _hide(text: str, secret: str) -> str:
    if len(secret) >= 4:
        return text.replace(secret, _REDACTED)
    # a short one only as a whole word: "p" must not mask every p of the message
    return re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", _REDACTED, text)


def redact(text: str, keep: tuple[str | None, ...] = ()) -> str:
    """``text`` without anything that looks like a credential. Never raises (on any surprise the
    whole text is ``***``) and never keeps part of a secret: a URL loses all of its user info, up
    to its last ``@``.

    ``keep``: values known not to be secrets (a Dagster run id, a partition key) that the
    heuristics would otherwise mask (a run id is a 36-character token with letters and digits,
    like an API key): they are shown as they are, unless they hold a secret setting's value."""
    try:
        return _redact(str(text)[:MAX_REDACT_CHARS], keep)
    except Exception:  # noqa: BLE001 - an alert must not be lost to its redaction
        log.warning("redaction failed on a %d-character text: the whole text is hidden", len(str(text)))
        return _REDACTED


def _redact(text: str, keep: tuple[str | None, ...]) -> str:
    for secret in _known_secrets():  # first: a kept value holding a secret is no longer found below
        text = _hide(text, secret)
    shielded = {}
    for i, value in enumerate(v for v in keep if v):
        if value in text:
            token = f"\ue000{i}\ue001"  # private-use characters: no pattern below matches them
            text = text.replace(value, token)
            shielded[token] = value
    text = _URL.sub(lambda m: _redact_url(m.group(0)), text)
    text = _JWT.sub(_REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {_REDACTED}", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{_REDACTED}", text)
    text = _LONG_TOKEN.sub(_REDACTED, text)
    for token, value in shielded.items():
        text = text.replace(token, value)
    return text


def _short(text: str | None, limit: int = ERROR_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------ messages


def build_message(
    *, title: str, fields: dict[str, str], error: str | None, link: str, keep: tuple[str | None, ...] = ()
) -> dict:
    """A Slack-compatible body: ``text`` (what every webhook shows) plus ``blocks``. Every field,
    the error and the link are redacted; ``keep`` (run id, partition) is shown as it is."""
    error = _short(redact(error, keep)) if error else None
    fields = {k: redact(str(v), keep) for k, v in fields.items() if v}
    link = redact(link, keep)
    lines = [title] + [f"{k}: {v}" for k, v in fields.items()]
    if error:
        lines.append(f"error: {error}")
    lines.append(link)
    text = "\n".join(lines)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields.items()][:10]},
    ]
    if error:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{error}```"}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|Open in Dagster>"}]})
    return {"text": text, "blocks": blocks}


def _partition(tags: dict[str, str]) -> str | None:
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if start and end:
        return start if start == end else f"{start}..{end}"
    return None


def account_of(asset_keys) -> str:
    """The account(s) of assets under an account's key prefix (``north/orders`` -> ``north``);
    empty for the single-account setup's keys, so its alerts read as before."""
    return ", ".join(sorted({k.path[0] for k in asset_keys if len(k.path) > 1}))


def run_failure_message(
    run, step_errors: list[tuple[str, str]], failure_message: str | None, *, ui_url: str = settings.DEFAULT_UI_URL
) -> dict:
    """The alert for a failed ``run`` (a DagsterRun); ``step_errors`` = [(step key, error text)];
    ``ui_url``: the Dagster UI the link points at (:attr:`settings.AlertSettings.ui_url`)."""
    keys = list(run.asset_selection or ())
    assets = sorted(k.to_user_string() for k in keys)
    if not assets:
        assets = sorted({step for step, _ in step_errors})
    error = "; ".join(f"{step}: {err}" for step, err in step_errors) or failure_message
    partition = _partition(dict(run.tags))
    return build_message(
        title=f"taptouch-sync: run failed ({run.job_name})",
        fields={
            "account": account_of(keys),
            "asset": ", ".join(assets) or "-",
            "partition": partition or "-",
            "run": run.run_id,
            "job": run.job_name,
        },
        error=error,
        link=f"{ui_url}/runs/{run.run_id}",
        keep=(run.run_id, partition),
    )


def run_failure_alert(
    run, step_errors: list[tuple[str, str]], failure_message: str | None, *, ui_url: str
) -> outbox.Alert:
    """:func:`run_failure_message` as an outbox alert, keyed ``run-failure:<run id>``."""
    return outbox.Alert(
        key=outbox.alert_key("run-failure", run.run_id),
        kind="run_failure",
        body=run_failure_message(run, step_errors, failure_message, ui_url=ui_url),
    )


# ------------------------------------------------------------------------------------ delivery

# What "the warehouse is unreachable" looks like: the alerts are then sent directly, once.
_OUTBOX_UNAVAILABLE = (psycopg.Error, WarehouseConfigError, EmbeddedServerError, OSError)
CONNECT_TIMEOUT = 3  # seconds to reach the warehouse from a sensor tick
STATEMENT_TIMEOUT_MS = 5000


def _outbox_connection(warehouse: PostgresResource) -> psycopg.Connection:
    """An autocommit connection for the outbox, quick to give up: a sensor tick must stay short."""
    return connect(
        warehouse.url(),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    )


def _reason(exc: BaseException) -> str:
    """An exception's class and the first line of its message, redacted (a psycopg error goes on
    with the statement it failed on)."""
    lines = str(exc).strip().splitlines()
    return redact(f"{type(exc).__name__}: {lines[0] if lines else ''}")


def submit(alerts: list[outbox.Alert], url: str, warehouse: PostgresResource, logger) -> None:
    """Write ``alerts`` to the outbox (the delivery sensor sends them). When the warehouse cannot
    take them (unreachable, not migrated), POST each directly, once (best effort), log that, and
    raise if any of them was not taken: that alert is lost, and the tick shows it."""
    if not alerts:
        return
    try:
        with _outbox_connection(warehouse) as conn:
            added = outbox.enqueue(conn, alerts)
        logger.info(f"{added} alert(s) queued in taptouch_meta.alert_outbox ({len(alerts) - added} already there)")
        return
    except _OUTBOX_UNAVAILABLE as exc:
        reason = _reason(exc)
    logger.warning(
        f"the alert outbox (taptouch_meta.alert_outbox) is unavailable ({reason}): sending {len(alerts)} "
        f"alert(s) directly, once, without retries"
    )
    lost = []
    for alert in alerts:
        try:
            outbox.post(outbox.with_key(alert.body, alert.key), alert.key, url)
        except outbox.DeliveryError as exc:
            lost.append(f"{alert.key}: {exc}")
    if lost:
        raise RuntimeError(
            f"{len(lost)} alert(s) lost: the outbox is unavailable ({reason}) and the webhook did not "
            f"take them: {'; '.join(lost)}"
        )


@dg.run_failure_sensor(
    name="taptouch_run_failure_alert",
    monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=settings.alert_sensor_interval(),
    description=f"Queues one alert per failed run, and one per failed non-blocking asset check of it (at or above "
    f"${MIN_SEVERITY_ENV}), for ${WEBHOOK_ENV} (off when unset).",
)
def taptouch_run_failure_alert(context: dg.RunFailureSensorContext, warehouse: PostgresResource) -> None:
    alert = settings.alert_settings()
    if not alert.webhook_url:
        return
    step_errors = []
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        err = getattr(data, "error", None)
        text = (err.message if err is not None else None) or event.message or ""
        step_errors.append((event.step_key or "?", text.strip()))
    failure = run_failure_alert(context.dagster_run, step_errors, context.failure_event.message, ui_url=alert.ui_url)
    # the run's failed non-blocking checks too (a run that fails after them has no other word of them)
    threshold, bad = _threshold(alert)
    checks = failed_check_alerts(
        context.instance, context.dagster_run.run_id, alert, blocking=False, threshold=threshold
    )
    submit([failure, *checks], alert.webhook_url, warehouse, context.log)
    if bad is not None:
        raise bad


# ------------------------------------------------------------------------------------ failed checks


def check_failure_message(evaluation, run_id: str | None, partition: str | None, *, ui_url: str) -> dict:
    """The alert for a failed ``AssetCheckEvaluation``."""
    asset = evaluation.asset_key.to_user_string()
    summary = evaluation.description or ", ".join(
        f"{k}={_metadata_text(v)}"
        for k, v in list(evaluation.metadata.items())[:6]
        if not isinstance(v, dg.MarkdownMetadataValue)
    )
    return build_message(
        title=f"taptouch-sync: check {evaluation.check_name} on {asset} failed ({evaluation.severity.value})",
        fields={
            "account": account_of([evaluation.asset_key]),
            "asset": asset,
            "check": evaluation.check_name,
            "severity": evaluation.severity.value,
            "partition": partition or "-",
            "run": run_id or "-",
        },
        error=summary,
        link=f"{ui_url}/runs/{run_id}" if run_id else f"{ui_url}/assets/{'/'.join(evaluation.asset_key.path)}",
        keep=(run_id, partition),
    )


def _metadata_text(value) -> str:
    return str(getattr(value, "value", value))


def _severity_rank(severity: dg.AssetCheckSeverity) -> int:
    return 2 if severity == dg.AssetCheckSeverity.ERROR else 1


def _check_partition(instance, run, entry, evaluation, materializations: dict) -> str | None:
    """The partition a check evaluation is about. Dagster 1.13 leaves ``evaluation.partition`` and
    the event's partition empty for a check run with its asset, so: those when set, else the
    partition of the materialization the check targeted, else the run's partition (or range)."""
    found = getattr(evaluation, "partition", None) or getattr(entry.dagster_event, "partition", None)
    if found:
        return found
    target = getattr(evaluation, "target_materialization_data", None)
    if target is not None and target.run_id == run.run_id:
        if not materializations:
            from dagster._core.events import DagsterEventType

            for record in instance.get_records_for_run(
                run.run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION
            ).records:
                materializations[record.storage_id] = record.event_log_entry.dagster_event.partition
        if materializations.get(target.storage_id):
            return materializations[target.storage_id]
    return _partition(dict(run.tags))


def _threshold(alert: settings.AlertSettings) -> tuple[dg.AssetCheckSeverity, settings.SettingError | None]:
    """(the lowest severity alerted on, the setting's error). A bad ``TAPTOUCH_ALERT_MIN_SEVERITY``
    alerts on every failed check (WARN) and is raised after they are queued, failing the tick: a
    run-status sensor's cursor moves past the run even when its tick fails, so raising first would
    lose the run's alerts for good."""
    try:
        return min_severity(alert), None
    except settings.SettingError as exc:
        return dg.AssetCheckSeverity.WARN, exc


def failed_check_alerts(
    instance,
    run_id: str,
    alert: settings.AlertSettings,
    *,
    blocking: bool = True,
    threshold: dg.AssetCheckSeverity | None = None,
) -> list[outbox.Alert]:
    """One alert per failed check evaluation of run ``run_id`` at or above ``threshold`` (default
    ``alert.min_severity``), keyed ``check-failure:<run id>:<asset>:<check>:<partition>``;
    ``blocking=False``: not those of blocking checks (a failed run's alert names them already:
    they failed its step)."""
    if threshold is None:
        threshold = min_severity(alert)
    from dagster._core.events import DagsterEventType

    run = instance.get_run_by_id(run_id)
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    alerts: list[outbox.Alert] = []
    materializations: dict[int, str | None] = {}
    for record in records:
        entry = record.event_log_entry
        evaluation = entry.dagster_event.event_specific_data
        if evaluation.passed or _severity_rank(evaluation.severity) < _severity_rank(threshold):
            continue
        if evaluation.blocking and not blocking:
            continue
        partition = _check_partition(instance, run, entry, evaluation, materializations)
        key = outbox.alert_key(
            "check-failure", run_id, evaluation.asset_key.to_user_string(), evaluation.check_name, partition
        )
        alerts.append(
            outbox.Alert(
                key=key,
                kind="check_failure",
                body=check_failure_message(evaluation, run_id, partition, ui_url=alert.ui_url),
            )
        )
    return alerts


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="taptouch_check_failure_alert",
    monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=settings.alert_sensor_interval(),
    description=f"Queues one alert per failed asset check (at or above ${MIN_SEVERITY_ENV}, default WARN) of a "
    f"run that succeeded for ${WEBHOOK_ENV} (off when unset; a failed run's are queued with its own alert).",
)
def taptouch_check_failure_alert(context: dg.RunStatusSensorContext, warehouse: PostgresResource) -> None:
    alert = settings.alert_settings()
    if not alert.webhook_url:
        return
    threshold, bad = _threshold(alert)
    submit(
        failed_check_alerts(context.instance, context.dagster_run.run_id, alert, threshold=threshold),
        alert.webhook_url,
        warehouse,
        context.log,
    )
    if bad is not None:
        raise bad


# ------------------------------------------------------------------------------------ the outbox


@dg.sensor(
    name="taptouch_alert_outbox",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=settings.alert_sensor_interval(),
    description=f"POSTs the alerts queued in taptouch_meta.alert_outbox to ${WEBHOOK_ENV}, retrying with backoff until "
    f"they are taken (off when unset).",
)
def taptouch_alert_outbox(context: dg.SensorEvaluationContext, warehouse: PostgresResource):
    url = settings.alert_settings().webhook_url
    if not url:
        return dg.SkipReason(f"{WEBHOOK_ENV} is unset: alerts are off")
    try:
        settings.checked_webhook_url(url)
    except settings.SettingError as exc:  # the queued alerts wait for a URL that can be posted to
        raise RuntimeError(f"{exc} (the queued alerts wait in taptouch_meta.alert_outbox)") from None
    try:
        with _outbox_connection(warehouse) as conn:
            delivery = outbox.deliver_due(conn, url)
    except _OUTBOX_UNAVAILABLE as exc:
        raise RuntimeError(
            f"the alert outbox (taptouch_meta.alert_outbox) is unavailable: "
            f"{_reason(exc)} (the queued alerts wait; a missing table: run "
            f"taptouch-sync migrate)"
        ) from None
    if delivery.failed:
        raise RuntimeError(
            f"alert delivery failed: {delivery.error}; sent {delivery.sent}, {delivery.pending} pending "
            f"(retried with backoff)"
        )
    return dg.SkipReason(f"sent {delivery.sent} alert(s), {delivery.pending} pending")


sensors = [taptouch_run_failure_alert, taptouch_check_failure_alert, taptouch_alert_outbox]
