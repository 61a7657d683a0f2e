"""Alerts: a failed run or a failed check posts exactly one Slack-compatible message, without secrets.

The end-to-end test runs a real ``dagster-daemon`` on its own DAGSTER_HOME, fails an ``orders`` run
(wrong credentials against the sandbox) with ``dagster asset materialize`` and counts what a local
HTTP receiver gets."""

from __future__ import annotations

import json
import os
import string
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import hypothesis
import hypothesis.strategies as st
import psycopg
import psycopg.rows
import pytest

from pipelines import alert_outbox, alerts, settings
from pipelines.warehouse.resource import PostgresResource
from tests.support.webhook import Receiver

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_redaction_removes_credentials_but_keeps_the_story(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", "s3cr3t-value-xyz")
    text = alerts.redact(
        "invalid_client for s3cr3t-value-xyz at https://user:pw@api.example.com/auth/v2/token?client_secret=abc "
        "postgresql://tap:hunter2@db:5432/warehouse password=hunter2 Authorization: Bearer abcdefghijklmnop "
        "token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl and 0123456789abcdef0123456789abcdef01 store 7101"
    )
    for secret in (
        "s3cr3t-value-xyz",
        "pw@",
        "hunter2",
        "client_secret=abc",
        "abcdefghijklmnop",
        "eyJhbGci",
        "0123456789abcdef0123456789abcdef01",
    ):
        assert secret not in text, secret
    assert "invalid_client" in text and "api.example.com/auth/v2/token" in text and "store 7101" in text


def test_redaction_does_not_crash_on_a_url_with_a_non_numeric_port():
    text = alerts.redact("schema changed, see https://help.taptouch.net:docs/orders for the fields")
    assert text == "schema changed, see https://help.taptouch.net:***/orders for the fields"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:1234#5678@h/db",
        "postgresql://u:1234?5678@h/db",
        "postgresql://u:1234/5678@h/db",
        "postgresql://u:1234@5678@h/db",
        "https://u:1234'5678@h/db?x=1#frag",
    ],
)
def test_no_part_of_a_url_password_survives(url):
    text = alerts.redact(f"could not connect to {url} timed out")
    assert "1234" not in text and "5678" not in text, text
    assert text.startswith("could not connect to ") and "***@h/db" in text and text.endswith(" timed out")


def test_every_piece_of_the_database_urls_password_is_hidden_wherever_it_appears(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_DATABASE_URL", "postgresql://tap:hunter2#5678@db.internal/warehouse")
    text = alerts.redact('invalid percent-encoded token: "hunter2#5678" near hunter2 and 5678')
    assert "hunter2" not in text and "5678" not in text, text


_SECRET_CHARS = string.ascii_uppercase + string.digits  # a password holds one at least; nothing else does
_URL_PUNCTUATION = "!$&'()*+,;=%~-._:#?/@[]{}^\\"


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(
    scheme=st.sampled_from(["postgresql", "postgres", "https", "http", "redis", "amqp"]),
    user=st.text(string.ascii_lowercase, min_size=1, max_size=8),
    password=st.text(_SECRET_CHARS + _URL_PUNCTUATION, min_size=1, max_size=30).filter(
        lambda p: any(c in _SECRET_CHARS for c in p)
    ),
    host=st.text(string.ascii_lowercase + ".-", min_size=1, max_size=12),
    tail=st.text(string.ascii_lowercase + "/?#=&.", max_size=12),
    before=st.sampled_from(["", "error: ", "url=", "(", "connect to '", "dsn_", "x-", "é"]),
    after=st.sampled_from(["", " failed", "' refused", ")", ", retrying"]),
)
def test_a_password_in_a_urls_user_info_never_survives_in_any_part(scheme, user, password, host, tail, before, after):
    text = alerts.redact(f"{before}{scheme}://{user}:{password}@{host}{tail}{after}")
    assert not any(c in text for c in _SECRET_CHARS), text


_PIECES = [
    "://",
    "@",
    ":",
    "[",
    "]",
    "#",
    "?",
    "/",
    "%",
    " ",
    "'",
    '"',
    ",",
    "https",
    "postgresql",
    "x",
    "1",
    "99999999999",
    "password=",
    "token:",
    "Bearer ",
    "eyJ",
    ".",
    "\ue000",
    "\ue001",
    "é",
    "\x00",
]


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(
    st.lists(st.sampled_from(_PIECES) | st.text(max_size=6), max_size=30).map("".join),
    st.lists(st.text(max_size=40), max_size=2),
)
def test_redaction_never_raises(text, keep):
    assert isinstance(alerts._redact(text, tuple(keep)), str)  # the inner function: not saved by the fallback
    assert isinstance(alerts.redact(text, tuple(keep)), str)


def test_run_ids_are_shown_and_other_long_tokens_are_not(monkeypatch):
    """A run id is a 36-character token of letters and digits: the long-token rule masked it in the
    run field, the link and the error (every alert read `run: ***`)."""
    from types import SimpleNamespace

    monkeypatch.setenv("TAPTOUCH_UI_URL", "https://dagster.example.com")
    run_id = "2b5c9f0e-3d4a-4e1b-9c7d-0a1b2c3d4e5f"
    run = SimpleNamespace(
        asset_selection=set(), tags={"dagster/partition": "2026-11-02"}, run_id=run_id, job_name="orders_job"
    )
    message = alerts.run_failure_message(
        run,
        [("orders", f"step of run {run_id} failed: key 0123456789abcdef0123456789abcdef01 refused")],
        None,
        ui_url=settings.alert_settings().ui_url,
    )
    text = message["text"]
    assert f"run: {run_id}" in text and "partition: 2026-11-02" in text
    assert f"https://dagster.example.com/runs/{run_id}" in text and f"step of run {run_id} failed" in text
    assert "0123456789abcdef0123456789abcdef01" not in text


def test_a_run_id_that_holds_a_secret_setting_is_still_hidden(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", "2b5c9f0e-3d4a")
    assert alerts.redact("run 2b5c9f0e-3d4a-4e1b", keep=("2b5c9f0e-3d4a-4e1b",)) == "run ***-4e1b"


def test_message_shape_is_slack_compatible(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_UI_URL", "https://dagster.example.com/")
    msg = alerts.build_message(
        title="t",
        fields={"asset": "orders", "partition": "2026-11-02", "run": "abc"},
        error="boom",
        link="https://dagster.example.com/runs/abc",
    )
    assert isinstance(msg["text"], str) and "orders" in msg["text"] and "2026-11-02" in msg["text"]
    assert {b["type"] for b in msg["blocks"]} <= {"section", "context"}
    json.dumps(msg)


def _run_with_failed_checks(instance, *, partition: str | None = None) -> dg.RunStatusSensorContext:
    """A successful run with an ERROR and a WARN check failing (of one daily ``partition`` when
    given), and the check sensor's context for it."""
    from dagster._core.events import DagsterEventType

    partitions = dg.DailyPartitionsDefinition(start_date="2026-01-01") if partition else None

    @dg.asset(
        partitions_def=partitions,
        check_specs=[dg.AssetCheckSpec("looks_right", asset="widgets"), dg.AssetCheckSpec("soft", asset="widgets")],
    )
    def widgets():
        yield dg.MaterializeResult(
            check_results=[
                dg.AssetCheckResult(
                    check_name="looks_right",
                    passed=False,
                    severity=dg.AssetCheckSeverity.ERROR,
                    metadata={"bad_rows": 3},
                    description="3 rows look wrong",
                ),
                dg.AssetCheckResult(check_name="soft", passed=False, severity=dg.AssetCheckSeverity.WARN),
            ]
        )

    result = dg.materialize([widgets], instance=instance, partition_key=partition)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    event = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_SUCCESS).records[0]
    return dg.build_run_status_sensor_context(
        sensor_name="taptouch_check_failure_alert",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=event.event_log_entry.dagster_event,
    )


def deliver(warehouse: PostgresResource, instance=None):
    """One tick of the delivery sensor, ``taptouch_alert_outbox``."""
    return alerts.taptouch_alert_outbox(dg.build_sensor_context(instance=instance), warehouse=warehouse)


def outbox_rows(db: str) -> list[dict]:
    with psycopg.connect(db, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute("select * from taptouch_meta.alert_outbox order by idempotency_key").fetchall()


def test_failed_checks_are_sent_once_each_at_or_above_the_severity(monkeypatch, migrated_db):
    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.delenv(alerts.WEBHOOK_ENV, raising=False)
        context = _run_with_failed_checks(instance)
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)
        assert isinstance(deliver(warehouse), dg.SkipReason)
        assert receiver.bodies == [] and outbox_rows(migrated_db) == []  # off when unset

        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        monkeypatch.setenv(alerts.MIN_SEVERITY_ENV, "ERROR")
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)
        assert receiver.bodies == []  # queued, not sent by the run-status sensor
        deliver(warehouse)
        assert len(receiver.bodies) == 1
        text = receiver.bodies[0]["text"]
        assert "looks_right" in text and "widgets" in text and "3 rows look wrong" in text
        assert f"/runs/{context.dagster_run.run_id}" in text
        assert "XXXXsecretpath" not in json.dumps(receiver.bodies)

        monkeypatch.setenv(alerts.MIN_SEVERITY_ENV, "WARN")
        receiver.bodies.clear()
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)
        deliver(warehouse)
        # looks_right was already queued (and sent) for this run: only soft is new
        assert [b["text"].split("check ")[1].split(" ")[0] for b in receiver.bodies] == ["soft"]
        assert [r["sent_at"] is not None for r in outbox_rows(migrated_db)] == [True, True]


@pytest.mark.parametrize(
    "bad, says",
    [
        ("hooks.slack.com/services/T0/B0/XXXXsecretpath", "must be an https:// URL"),
        ("http://192.0.2.2:18999/services/T0/B0/XXXXsecretpath", "plain http://"),
        ("https://hooks.slack.com:99999/XXXXsecretpath", "is not a URL"),
    ],
)
def test_a_webhook_url_that_cannot_be_posted_to_fails_the_tick_by_name_and_the_alert_waits(
    monkeypatch, migrated_db, bad, says
):
    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, bad)
        alerts.taptouch_check_failure_alert(_run_with_failed_checks(instance), warehouse=warehouse)
        with pytest.raises(RuntimeError, match=f"TAPTOUCH_ALERT_WEBHOOK_URL.*{says}") as err:
            deliver(warehouse, instance)
        assert "XXXXsecretpath" not in str(err.value) and "alert_outbox" in str(err.value)
        assert [r["sent_at"] for r in outbox_rows(migrated_db)] == [None, None]  # kept, not lost
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        deliver(warehouse, instance)
        assert len(receiver.bodies) == 2


def test_a_failed_post_is_retried_on_a_later_tick_and_delivered_exactly_once(monkeypatch, migrated_db):
    """The old sensor POSTed inside the run-status tick; Dagster moved its cursor past the run even
    though the tick raised, so an alert whose POST failed was never sent."""
    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver(fail_first=1) as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        monkeypatch.setenv(alerts.MIN_SEVERITY_ENV, "ERROR")
        alerts.taptouch_check_failure_alert(
            _run_with_failed_checks(instance), warehouse=warehouse
        )  # never raises for a webhook
        with pytest.raises(RuntimeError, match="HTTP 500") as err:
            deliver(warehouse, instance)
        assert "XXXXsecretpath" not in str(err.value)
        (row,) = outbox_rows(migrated_db)
        assert row["attempts"] == 1 and row["sent_at"] is None and "HTTP 500" in row["last_error"]
        assert row["next_attempt_at"] > row["last_attempt_at"]  # backoff

        deliver(warehouse, instance)  # the next tick: not due yet, nothing sent
        assert receiver.answers == [500]

        with psycopg.connect(migrated_db) as conn:  # the backoff has passed
            conn.execute("update taptouch_meta.alert_outbox set next_attempt_at = now()")
        assert "sent 1" in deliver(warehouse, instance).skip_message
        (row,) = outbox_rows(migrated_db)
        assert row["attempts"] == 2 and row["sent_at"] is not None and row["last_error"] is None
        deliver(warehouse, instance)
        with psycopg.connect(migrated_db) as conn:
            conn.execute("update taptouch_meta.alert_outbox set next_attempt_at = now()")
        deliver(warehouse, instance)
        assert receiver.answers == [500, 200] and len(receiver.delivered()) == 1
        assert receiver.bodies[0] == receiver.bodies[1]


def test_queuing_the_same_event_again_makes_no_second_row(monkeypatch, migrated_db):
    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        context = _run_with_failed_checks(instance)
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)  # a tick evaluated twice
        run_id = context.dagster_run.run_id
        assert [r["idempotency_key"] for r in outbox_rows(migrated_db)] == [
            f"check-failure:{run_id}:widgets:looks_right:",
            f"check-failure:{run_id}:widgets:soft:",
        ]
        deliver(warehouse)
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)  # and once more after they were sent
        deliver(warehouse)
        assert len(receiver.bodies) == 2


def test_each_alert_carries_its_idempotency_key_as_a_header_and_a_body_field(monkeypatch, migrated_db):
    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        context = _run_with_failed_checks(instance)
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)
        deliver(warehouse)
    keys = sorted(r["idempotency_key"] for r in outbox_rows(migrated_db))
    assert sorted(b["idempotency_key"] for b in receiver.bodies) == keys
    assert sorted(h["Idempotency-Key"] for h in receiver.headers) == keys
    assert all(
        h["Idempotency-Key"] == b["idempotency_key"] for h, b in zip(receiver.headers, receiver.bodies, strict=False)
    )


def test_a_webhook_that_trickles_its_answer_does_not_hold_the_tick(monkeypatch, migrated_db):
    """httpx's timeout is per read: one byte every 0.3 s held the old sensor for the whole answer."""
    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver(trickle=0.3) as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        alerts.taptouch_check_failure_alert(_run_with_failed_checks(instance), warehouse=warehouse)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="did not answer within"):
            deliver(warehouse)
        took = time.monotonic() - started
        assert took < alert_outbox.POST_DEADLINE + 2, took
        rows = outbox_rows(migrated_db)
        assert [r["attempts"] for r in rows] == [1, 0]  # the tick stopped at the first failure
        assert len(receiver.bodies) == 1


def test_a_partitioned_check_alert_shows_its_partition_and_run_id(monkeypatch, migrated_db):
    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        context = _run_with_failed_checks(instance, partition="2026-01-02")
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)
        deliver(warehouse)
    run_id = context.dagster_run.run_id
    assert len(receiver.bodies) == 2
    for body in receiver.bodies:
        assert "partition: 2026-01-02" in body["text"] and f"run: {run_id}" in body["text"], body["text"]
        assert body["idempotency_key"].endswith(":2026-01-02")


def test_without_the_outbox_alerts_are_sent_directly_and_that_is_logged(monkeypatch, database_url, capsys):
    """A warehouse without the outbox (not migrated; the same path as an unreachable one)."""
    warehouse = PostgresResource(database_url=database_url)
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        context = _run_with_failed_checks(instance)
        capsys.readouterr()
        alerts.taptouch_check_failure_alert(context, warehouse=warehouse)
        assert len(receiver.delivered()) == 2
        assert all(h["Idempotency-Key"] for h in receiver.headers)
        logged = capsys.readouterr().err
        assert "UndefinedTable" in logged and "sending 2 alert(s) directly" in logged

    unreachable = PostgresResource(database_url="postgresql://tap:hunter2#x@127.0.0.1:1/warehouse")
    with Receiver(status=500) as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        context = _run_with_failed_checks(instance)
        with pytest.raises(RuntimeError, match="2 alert.s. lost") as err:
            alerts.taptouch_check_failure_alert(context, warehouse=unreachable)
        assert "hunter2" not in str(err.value) and "XXXXsecretpath" not in str(err.value)


def test_min_severity_is_validated(monkeypatch):
    monkeypatch.setenv(alerts.MIN_SEVERITY_ENV, "loud")
    with pytest.raises(ValueError, match="WARN or ERROR"):
        alerts.min_severity(settings.alert_settings())


# ------------------------------------------------------------------------------ end to end


def _wait(predicate, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


@pytest.mark.slow
def test_daemon_delivers_exactly_one_alert_per_failed_run_even_when_the_first_post_fails(tmp_path, migrated_db):
    """The webhook answers the first POST with 500: the old sensor's cursor had moved on and the
    alert was lost; now the outbox sends it again after its backoff, once."""
    from taptouch_sandbox import Sandbox, SandboxConfig

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_monitoring:\n  enabled: true\n  poll_interval_seconds: 5\n"
        "sensors:\n  use_threads: true\n  num_workers: 2\n"
        "auto_materialize:\n  enabled: false\n"
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        f"load_from:\n  - python_module:\n      module_name: pipelines.definitions\n      working_directory: {ROOT}\n"
    )
    sb = Sandbox(SandboxConfig(seed=2, stores=1, days=1, orders_per_day=5))
    with Receiver(fail_first=1) as receiver, sb.serve() as api_url:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TAPTOUCH_", "DAGSTER_"))},
            "DAGSTER_HOME": str(home),
            "TAPTOUCH_DATABASE_URL": migrated_db,
            "TAPTOUCH_ALERT_WEBHOOK_URL": receiver.url,
            "TAPTOUCH_ALERT_SENSOR_INTERVAL": "2",
            "TAPTOUCH_UI_URL": "http://dagster.internal:3000",
            "TAPTOUCH_BASE_URL": api_url,
            "TAPTOUCH_CLIENT_ID": sb.config.client_id,
            "TAPTOUCH_CLIENT_SECRET": "wrong-secret-7f3a9c",
        }
        daemon_log = tmp_path / "daemon.log"
        with open(daemon_log, "wb") as out:
            daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            # the run-failure sensor only reports runs that fail after its first tick
            _wait(
                lambda: "taptouch_run_failure_alert" in daemon_log.read_text(errors="replace"),
                60,
                "the sensor's first tick",
                daemon,
                daemon_log,
            )
            partition = datetime.now(UTC).date().isoformat()
            run = subprocess.run(
                [
                    str(BIN / "dagster"),
                    "asset",
                    "materialize",
                    "-m",
                    "pipelines.definitions",
                    "--select",
                    "orders",
                    "--partition",
                    partition,
                ],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode != 0, run.stdout[-2000:]
            _wait(lambda: receiver.delivered(), 40 + alert_outbox.BACKOFF_BASE, "the alert", daemon, daemon_log)
            time.sleep(5)  # two more ticks at least: still exactly one
            assert receiver.answers == [500, 200], receiver.answers
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()

    body = receiver.delivered()[0]
    text = body["text"]
    assert receiver.bodies[0] == body and receiver.headers[1]["Idempotency-Key"] == body["idempotency_key"]
    instance = dg.DagsterInstance.from_config(str(home))
    failed = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert len(failed) == 1
    run_id = failed[0].dagster_run.run_id
    assert "run failed" in text and "orders" in text and f"partition: {partition}" in text and f"run: {run_id}" in text
    assert body["idempotency_key"] == f"run-failure:{run_id}"
    assert f"http://dagster.internal:3000/runs/{run_id}" in text
    assert "invalid_client" in text  # the error summary
    assert "wrong-secret-7f3a9c" not in json.dumps(body) and "XXXXsecretpath" not in json.dumps(body)
    assert body["blocks"]


def test_a_failed_run_alerts_its_failed_non_blocking_checks_too(monkeypatch, migrated_db):
    """A WARN check failed, then a later step of the run failed: the run's alert and the check's
    both go out (the check sensor watches successful runs only); a blocking check that failed the
    run is in the run's alert, not a second message."""
    from dagster._core.events import DagsterEventType

    @dg.asset(
        check_specs=[
            dg.AssetCheckSpec("soft", asset="gadgets"),
            dg.AssetCheckSpec("hard", asset="gadgets", blocking=True),
        ]
    )
    def gadgets():
        return dg.MaterializeResult(
            check_results=[
                dg.AssetCheckResult(check_name="soft", passed=False, severity=dg.AssetCheckSeverity.WARN),
                dg.AssetCheckResult(check_name="hard", passed=False, severity=dg.AssetCheckSeverity.ERROR),
            ]
        )

    @dg.asset(deps=[gadgets])
    def later():
        raise RuntimeError("the next step broke")

    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        result = dg.materialize([gadgets, later], instance=instance, raise_on_error=False)
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        event = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_FAILURE).records[0]
        context = dg.build_run_status_sensor_context(
            sensor_name="taptouch_run_failure_alert",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=event.event_log_entry.dagster_event,
        ).for_run_failure()
        alerts.taptouch_run_failure_alert(context, warehouse=warehouse)
        deliver(warehouse, instance)
        kinds = sorted(r["idempotency_key"].split(":")[0] for r in outbox_rows(migrated_db))
        assert kinds == ["check-failure", "run-failure"]
        texts = [b["text"] for b in receiver.bodies]
        assert any("check soft" in t for t in texts) and not any("check hard" in t for t in texts)


def test_a_bad_min_severity_fails_the_ticks_after_queuing_every_alert(monkeypatch, migrated_db):
    """TAPTOUCH_ALERT_MIN_SEVERITY=WARNING (a typo of WARN): both alert sensors still queue their
    run's alerts, every failed check included (as WARN), then fail the tick naming the setting.
    Raising first lost them for good: a run-status sensor's cursor moves past the run even when
    its tick fails (before, a failed run's own alert was never queued)."""
    from dagster._core.events import DagsterEventType

    @dg.asset(check_specs=[dg.AssetCheckSpec("soft", asset="parts")])
    def parts():
        return dg.MaterializeResult(
            check_results=[dg.AssetCheckResult(check_name="soft", passed=False, severity=dg.AssetCheckSeverity.WARN)]
        )

    @dg.asset(deps=[parts])
    def broken():
        raise RuntimeError("the step broke")

    warehouse = PostgresResource(database_url=migrated_db)
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        monkeypatch.setenv(alerts.MIN_SEVERITY_ENV, "WARNING")
        result = dg.materialize([parts, broken], instance=instance, raise_on_error=False)
        run = instance.get_run_by_id(result.run_id)
        event = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_FAILURE).records[0]
        failed = dg.build_run_status_sensor_context(
            sensor_name="taptouch_run_failure_alert",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=event.event_log_entry.dagster_event,
        ).for_run_failure()
        with pytest.raises(settings.SettingError, match="TAPTOUCH_ALERT_MIN_SEVERITY must be WARN or ERROR"):
            alerts.taptouch_run_failure_alert(failed, warehouse=warehouse)
        keys = [r["idempotency_key"] for r in outbox_rows(migrated_db)]
        assert keys == [f"check-failure:{run.run_id}:parts:soft:", f"run-failure:{run.run_id}"]

        succeeded = _run_with_failed_checks(instance)
        with pytest.raises(settings.SettingError, match="got 'WARNING'"):
            alerts.taptouch_check_failure_alert(succeeded, warehouse=warehouse)
        checks = [
            r["idempotency_key"]
            for r in outbox_rows(migrated_db)
            if succeeded.dagster_run.run_id in r["idempotency_key"]
        ]
        assert len(checks) == 2 and {k.split(":")[3] for k in checks} == {"looks_right", "soft"}


def test_a_credential_in_json_form_is_redacted_like_key_equals_value():
    """An HTTP error body echoed into an exception: `"password": "..."` (the key's closing quote
    between key and colon) is hidden like `password=...` and `password: ...`."""
    text = alerts.redact('HTTP 400 from the upstream: {"password": "hunter2", "refresh_token": "rt_9f8e7d6c5b4a"}')
    assert "hunter2" not in text and "rt_9f8e7d6c5b4a" not in text
    assert "HTTP 400 from the upstream" in text
    assert alerts.redact('{"password": "hun\\"ter2"}') == '{"password": ***}'  # an escaped quote inside
    assert alerts.redact('{\\"password\\": \\"hunter2x\\"}') == '{\\"password\\": ***}'  # JSON in a string
    assert alerts.redact("password: hunter2") == "password: ***"
    assert alerts.redact("token=abc123 and 'secret' : 'x y'") == "token=*** and 'secret' : ***"
