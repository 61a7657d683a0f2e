"""Alerts: a failed run, or a failed asset check, posts one message to a webhook.

Set ``TAPTOUCH_ALERT_WEBHOOK_URL`` to a Slack incoming-webhook URL (or Mattermost, Rocket.Chat,
Discord's ``/slack`` URL, a Teams incoming webhook, or any HTTP endpoint that takes a JSON POST);
unset, both sensors skip every tick and nothing is sent. The body is Slack-compatible:
``{"text": "...", "blocks": [...]}`` (``text`` alone is enough for the others). It names the job,
the account (a named account's assets, ``TAPTOUCH_ACCOUNTS``), asset(s), partition, run id, an
error summary and a link to the run in the Dagster UI (``TAPTOUCH_UI_URL``, default
``http://127.0.0.1:3000``), and never a secret: every URL loses its
user-info and query, and anything that looks like a credential (``secret=…``, ``password=…``,
``Bearer …``, the values of the secret settings) is replaced by ``***``.

Sensors (both on by default, read by the Dagster daemon):

* ``taptouch_run_failure_alert``: every run of the instance that fails, once.
* ``taptouch_check_failure_alert``: every failed asset check evaluation at or above
  ``TAPTOUCH_ALERT_MIN_SEVERITY`` (``WARN``, the default, or ``ERROR``) in a run that succeeded,
  once (a check that fails its run, e.g. a blocking ERROR check, is in the run's own alert).

``TAPTOUCH_ALERT_SENSOR_INTERVAL`` (seconds, default 30, read when the definitions load) is how
often they look. A webhook that cannot be reached fails the tick (the daemon shows it) and the
alert is tried again at the next tick.
"""

import json
import logging
import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import httpx

log = logging.getLogger(__name__)

WEBHOOK_ENV = "TAPTOUCH_ALERT_WEBHOOK_URL"
MIN_SEVERITY_ENV = "TAPTOUCH_ALERT_MIN_SEVERITY"
UI_URL_ENV = "TAPTOUCH_UI_URL"
INTERVAL_ENV = "TAPTOUCH_ALERT_SENSOR_INTERVAL"
DEFAULT_UI_URL = "http://127.0.0.1:3000"
ERROR_CHARS = 600
TIMEOUT = 10.0

# Environment variables whose values never appear in an alert, whatever the text around them.
SECRET_ENVS = ("TAPTOUCH_CLIENT_SECRET", "TAPTOUCH_TOKEN_KEY", "TAPTOUCH_DATABASE_URL", "DAGSTER_PG_URL",
               WEBHOOK_ENV, "TAPTOUCH_TEST_DATABASE_URL")


def secret_envs() -> list[str]:
    """:data:`SECRET_ENVS` and every account's ``TAPTOUCH_<NAME>_CLIENT_SECRET``."""
    return [*SECRET_ENVS, *sorted(k for k in os.environ if k.startswith("TAPTOUCH_") and k.endswith("_CLIENT_SECRET")
                                  and k not in SECRET_ENVS)]


def webhook_url() -> str | None:
    return os.environ.get(WEBHOOK_ENV, "").strip() or None


def ui_url() -> str:
    return (os.environ.get(UI_URL_ENV, "").strip() or DEFAULT_UI_URL).rstrip("/")


def min_severity() -> dg.AssetCheckSeverity:
    raw = os.environ.get(MIN_SEVERITY_ENV, "").strip().upper() or "WARN"
    try:
        return dg.AssetCheckSeverity[raw]
    except KeyError:
        raise ValueError(f"{MIN_SEVERITY_ENV} must be WARN or ERROR, got {raw!r}") from None


def sensor_interval() -> int:
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = int(raw) if raw else 30
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV} must be a whole number of seconds from 1 to 86400, got {raw!r}: "
                         f"set it so, or unset it for 30") from None
    if not 1 <= value <= 86_400:
        raise ValueError(f"{INTERVAL_ENV} must be a whole number of seconds from 1 to 86400, got {value}: "
                         f"set it so, or unset it for 30")
    return value


# ------------------------------------------------------------------------------------ redaction

_REDACTED = "***"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>|`]+")
_KEY_VALUE = re.compile(
    r"(?i)\b((?:client_)?secret|password|passwd|pwd|token|access_token|refresh_token|api_key|apikey|"
    r"authorization|code_verifier|key)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&'\"]+)")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{8,}")
_LONG_TOKEN = re.compile(r"\b(?=[A-Za-z0-9_\-]*[0-9])(?=[A-Za-z0-9_\-]*[A-Za-z])[A-Za-z0-9_\-]{32,}\b")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


def _redact_url(match: re.Match) -> str:
    url = match.group(0)
    try:
        parts = urlsplit(url)
    except ValueError:
        return _REDACTED
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{_REDACTED}@{host}" if "@" in parts.netloc else host
    query = _REDACTED if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact(text: str) -> str:
    """``text`` without anything that looks like a credential."""
    for env in secret_envs():
        value = os.environ.get(env, "").strip()
        if len(value) >= 4:
            text = text.replace(value, _REDACTED)
    text = _URL.sub(_redact_url, text)
    text = _JWT.sub(_REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {_REDACTED}", text)
    text = _KEY_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{_REDACTED}", text)
    text = _LONG_TOKEN.sub(_REDACTED, text)
    return text


def _short(text: str | None, limit: int = ERROR_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------ messages


def build_message(*, title: str, fields: dict[str, str], error: str | None, link: str) -> dict:
    """A Slack-compatible body: ``text`` (what every webhook shows) plus ``blocks``."""
    error = redact(_short(error)) if error else None
    fields = {k: redact(str(v)) for k, v in fields.items() if v}
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


def post(message: dict, url: str | None = None) -> None:
    """POST ``message`` as JSON; raises (with the URL redacted) when the webhook does not take it."""
    url = url or webhook_url()
    if not url:
        return
    try:
        response = httpx.post(url, content=json.dumps(message), headers={"Content-Type": "application/json"},
                              timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"alert webhook {redact(url)} unreachable: {type(exc).__name__}") from None
    if response.status_code >= 300:
        raise RuntimeError(f"alert webhook {redact(url)} answered HTTP {response.status_code}")


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


def run_failure_message(run, step_errors: list[tuple[str, str]], failure_message: str | None) -> dict:
    """The alert for a failed ``run`` (a DagsterRun); ``step_errors`` = [(step key, error text)]."""
    keys = list(run.asset_selection or ())
    assets = sorted(k.to_user_string() for k in keys)
    if not assets:
        assets = sorted({step for step, _ in step_errors})
    error = "; ".join(f"{step}: {err}" for step, err in step_errors) or failure_message
    return build_message(
        title=f"taptouch-sync: run failed ({run.job_name})",
        fields={
            "account": account_of(keys),
            "asset": ", ".join(assets) or "-",
            "partition": _partition(dict(run.tags)) or "-",
            "run": run.run_id,
            "job": run.job_name,
        },
        error=error,
        link=f"{ui_url()}/runs/{run.run_id}",
    )


@dg.run_failure_sensor(
    name="taptouch_run_failure_alert", monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=sensor_interval(),
    description=f"Posts one message per failed run to ${WEBHOOK_ENV} (off when unset).",
)
def taptouch_run_failure_alert(context: dg.RunFailureSensorContext) -> None:
    url = webhook_url()
    if not url:
        return
    step_errors = []
    for event in context.get_step_failure_events():
        data = event.event_specific_data
        err = getattr(data, "error", None)
        text = (err.message if err is not None else None) or event.message or ""
        step_errors.append((event.step_key or "?", text.strip()))
    post(run_failure_message(context.dagster_run, step_errors, context.failure_event.message), url)
    context.log.info(f"alert posted for failed run {context.dagster_run.run_id}")


# ------------------------------------------------------------------------------------ failed checks


def check_failure_message(evaluation, run_id: str | None, partition: str | None) -> dict:
    """The alert for a failed ``AssetCheckEvaluation``."""
    asset = evaluation.asset_key.to_user_string()
    summary = evaluation.description or ", ".join(
        f"{k}={_metadata_text(v)}" for k, v in list(evaluation.metadata.items())[:6]
        if not isinstance(v, dg.MarkdownMetadataValue)
    )
    return build_message(
        title=f"taptouch-sync: check {evaluation.check_name} on {asset} failed ({evaluation.severity.value})",
        fields={"account": account_of([evaluation.asset_key]), "asset": asset, "check": evaluation.check_name,
                "severity": evaluation.severity.value,
                "partition": partition or "-", "run": run_id or "-"},
        error=summary,
        link=f"{ui_url()}/runs/{run_id}" if run_id else f"{ui_url()}/assets/{'/'.join(evaluation.asset_key.path)}",
    )


def _metadata_text(value) -> str:
    return str(getattr(value, "value", value))


def _severity_rank(severity: dg.AssetCheckSeverity) -> int:
    return 2 if severity == dg.AssetCheckSeverity.ERROR else 1


def failed_check_alerts(instance, run_id: str, *, threshold: dg.AssetCheckSeverity) -> list[dict]:
    """One alert per failed check evaluation of run ``run_id`` at or above ``threshold``."""
    from dagster._core.events import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    alerts = []
    for record in records:
        entry = record.event_log_entry
        evaluation = entry.dagster_event.event_specific_data
        if evaluation.passed or _severity_rank(evaluation.severity) < _severity_rank(threshold):
            continue
        partition = getattr(evaluation, "partition", None) or getattr(entry.dagster_event, "partition", None)
        alerts.append(check_failure_message(evaluation, run_id, partition))
    return alerts


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS, name="taptouch_check_failure_alert", monitor_all_code_locations=True,
    default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=sensor_interval(),
    description=f"Posts one message per failed asset check (at or above ${MIN_SEVERITY_ENV}, default WARN) of a "
                f"run that succeeded to ${WEBHOOK_ENV} (off when unset; a failed run has its own alert).",
)
def taptouch_check_failure_alert(context: dg.RunStatusSensorContext) -> None:
    url = webhook_url()
    if not url:
        return
    messages = failed_check_alerts(context.instance, context.dagster_run.run_id, threshold=min_severity())
    for message in messages:
        post(message, url)
    if messages:
        context.log.info(f"{len(messages)} check alert(s) posted for run {context.dagster_run.run_id}")


sensors = [taptouch_run_failure_alert, taptouch_check_failure_alert]
