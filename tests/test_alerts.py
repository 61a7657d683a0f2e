"""Alerts: a failed run or a failed check posts exactly one Slack-compatible message, without secrets.

The end-to-end test runs a real ``dagster-daemon`` on its own DAGSTER_HOME, fails an ``orders`` run
(wrong credentials against the sandbox) with ``dagster asset materialize`` and counts what a local
HTTP receiver gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from pipelines import alerts

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Receiver:
    """A local webhook: records every POSTed JSON body."""

    def __init__(self, status: int = 200):
        self.bodies: list[dict] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(outer.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/XXXXsecretpath"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_redaction_removes_credentials_but_keeps_the_story(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", "s3cr3t-value-xyz")
    text = alerts.redact(
        "invalid_client for s3cr3t-value-xyz at https://user:pw@api.example.com/auth/v2/token?client_secret=abc "
        "postgresql://tap:hunter2@db:5432/warehouse password=hunter2 Authorization: Bearer abcdefghijklmnop "
        "token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl and 0123456789abcdef0123456789abcdef01 store 7101")
    for secret in ("s3cr3t-value-xyz", "pw@", "hunter2", "client_secret=abc", "abcdefghijklmnop", "eyJhbGci",
                   "0123456789abcdef0123456789abcdef01"):
        assert secret not in text, secret
    assert "invalid_client" in text and "api.example.com/auth/v2/token" in text and "store 7101" in text


def test_message_shape_is_slack_compatible(monkeypatch):
    monkeypatch.setenv("TAPTOUCH_UI_URL", "https://dagster.example.com/")
    msg = alerts.build_message(title="t", fields={"asset": "orders", "partition": "2026-11-02", "run": "abc"},
                               error="boom", link="https://dagster.example.com/runs/abc")
    assert isinstance(msg["text"], str) and "orders" in msg["text"] and "2026-11-02" in msg["text"]
    assert {b["type"] for b in msg["blocks"]} <= {"section", "context"}
    json.dumps(msg)


def _run_with_failed_checks(instance) -> dg.RunStatusSensorContext:
    """A successful run with an ERROR and a WARN check failing, and the sensor context for it."""
    from dagster._core.events import DagsterEventType

    @dg.asset(check_specs=[dg.AssetCheckSpec("looks_right", asset="widgets"),
                           dg.AssetCheckSpec("soft", asset="widgets")])
    def widgets():
        yield dg.MaterializeResult(check_results=[
            dg.AssetCheckResult(check_name="looks_right", passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"bad_rows": 3}, description="3 rows look wrong"),
            dg.AssetCheckResult(check_name="soft", passed=False, severity=dg.AssetCheckSeverity.WARN),
        ])

    result = dg.materialize([widgets], instance=instance)
    assert result.success
    run = instance.get_run_by_id(result.run_id)
    event = instance.get_records_for_run(result.run_id, of_type=DagsterEventType.RUN_SUCCESS).records[0]
    return dg.build_run_status_sensor_context(sensor_name="taptouch_check_failure_alert", dagster_instance=instance,
                                              dagster_run=run, dagster_event=event.event_log_entry.dagster_event)


def test_failed_checks_are_posted_once_each_at_or_above_the_severity(monkeypatch):
    with Receiver() as receiver, dg.instance_for_test() as instance:
        monkeypatch.delenv(alerts.WEBHOOK_ENV, raising=False)
        context = _run_with_failed_checks(instance)
        alerts.taptouch_check_failure_alert(context)
        assert receiver.bodies == []  # off when unset

        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        monkeypatch.setenv(alerts.MIN_SEVERITY_ENV, "ERROR")
        alerts.taptouch_check_failure_alert(context)
        assert len(receiver.bodies) == 1
        text = receiver.bodies[0]["text"]
        assert "looks_right" in text and "widgets" in text and "3 rows look wrong" in text
        assert f"/runs/{context.dagster_run.run_id}" in text
        assert "XXXXsecretpath" not in json.dumps(receiver.bodies)

        monkeypatch.setenv(alerts.MIN_SEVERITY_ENV, "WARN")
        receiver.bodies.clear()
        alerts.taptouch_check_failure_alert(context)
        assert sorted(b["text"].split("check ")[1].split(" ")[0] for b in receiver.bodies) == ["looks_right", "soft"]


def test_an_unreachable_webhook_fails_the_tick_without_naming_it(monkeypatch):
    with Receiver(status=500) as receiver, dg.instance_for_test() as instance:
        context = _run_with_failed_checks(instance)
        monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
        with pytest.raises(RuntimeError, match="HTTP 500") as err:
            alerts.taptouch_check_failure_alert(context)
        assert "XXXXsecretpath" not in str(err.value)


def test_min_severity_is_validated(monkeypatch):
    monkeypatch.setenv(alerts.MIN_SEVERITY_ENV, "loud")
    with pytest.raises(ValueError, match="WARN or ERROR"):
        alerts.min_severity()


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
def test_daemon_posts_exactly_one_alert_per_failed_run(tmp_path, migrated_db):
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
        f"load_from:\n  - python_module:\n      module_name: pipelines.definitions\n"
        f"      working_directory: {ROOT}\n")
    sb = Sandbox(SandboxConfig(seed=2, stores=1, days=1, orders_per_day=5))
    with Receiver() as receiver, sb.serve() as api_url:
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
            daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], cwd=ROOT, env=env,
                                      stdout=out, stderr=subprocess.STDOUT)
        try:
            # the run-failure sensor only reports runs that fail after its first tick
            _wait(lambda: "taptouch_run_failure_alert" in daemon_log.read_text(errors="replace"), 60,
                  "the sensor's first tick", daemon, daemon_log)
            partition = datetime.now(timezone.utc).date().isoformat()
            run = subprocess.run(
                [str(BIN / "dagster"), "asset", "materialize", "-m", "pipelines.definitions", "--select", "orders",
                 "--partition", partition],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert run.returncode != 0, run.stdout[-2000:]
            _wait(lambda: receiver.bodies, 40, "the alert", daemon, daemon_log)
            time.sleep(5)  # two more ticks at least: still exactly one
            assert len(receiver.bodies) == 1, receiver.bodies
        finally:
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()

    body = receiver.bodies[0]
    text = body["text"]
    instance = dg.DagsterInstance.from_config(str(home))
    failed = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert len(failed) == 1
    run_id = failed[0].dagster_run.run_id
    assert "run failed" in text and "orders" in text and partition in text and run_id in text
    assert f"http://dagster.internal:3000/runs/{run_id}" in text
    assert "invalid_client" in text  # the error summary
    assert "wrong-secret-7f3a9c" not in json.dumps(body) and "XXXXsecretpath" not in json.dumps(body)
    assert body["blocks"]
