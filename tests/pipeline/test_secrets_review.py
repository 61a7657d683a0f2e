"""A hostile review of where secrets go (2026-12-06): the alert webhook's URL, the warehouse
password. Each test fails on the code it was written against (docs/security.md, docs/alerts.md)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import alert_outbox as outbox
from tests.support.webhook import Receiver

ROOT = Path(__file__).resolve().parents[2]


def test_the_alert_webhooks_secret_path_is_never_logged(caplog) -> None:
    """docs/alerts.md: TAPTOUCH_ALERT_WEBHOOK_URL is "a secret, never shown in an alert, a log line
    or an error". httpx logs every request at INFO ("HTTP Request: POST <the whole URL>"), so with
    Python logging at INFO (a deployment's ``logging.basicConfig(level=INFO)``, pytest's caplog, a
    log shipper on the root logger) each alert POST writes the webhook's secret path to the logs."""
    caplog.set_level(logging.DEBUG)
    with Receiver() as webhook:
        outbox.post({"text": "run failed"}, "run-failure:r1", webhook.url)
        assert len(webhook.bodies) == 1
    assert "XXXXsecretpath" not in caplog.text, caplog.text
    assert "/hooks/T000" not in caplog.text, caplog.text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# libpq quotes what it cannot parse ("invalid percent-encoded token: ...") and resolves the part of
# the user info after an unencoded @ as a host name: both put the password in its error.
UNREADABLE_PASSWORDS = ["50%off-Zq9SECRET", "p@ssWord7SECRET"]


@pytest.mark.parametrize("password", UNREADABLE_PASSWORDS)
@pytest.mark.parametrize("command", [["demo", "--days", "1"], ["ui", "--sandbox"]])
def test_the_demo_and_the_sandbox_ui_never_print_the_warehouse_password(tmp_path, command, password) -> None:
    """docs/security.md: "The CLI catches every database error and prints it redacted", and every
    connection is made through ``db.connect_url``. ``demo`` and ``ui --sandbox`` first check that
    the warehouse holds no real merchant's stores (``demo.refuse_a_real_warehouse``) on a
    connection of their own, ``psycopg.connect`` directly: libpq's error reaches the CLI with the
    password in it, and the CLI's redaction, knowing no password, prints it to the terminal."""
    if command[0] == "ui":
        command = [*command, "--port", str(_free_port()), "--env-file", str(tmp_path / "ui.env")]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TAPTOUCH_", "DAGSTER_"))},
        "PYTHONPATH": str(ROOT),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        # port 1: nothing is ever reached, whatever runs on this machine
        "TAPTOUCH_DATABASE_URL": f"postgresql://postgres:{password}@127.0.0.1:1/db",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *command],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-2000:]
    assert "error:" in done.stderr, out[-2000:]
    pieces = [password, *(p for p in password.split("@") if len(p) >= 5)]
    assert not [p for p in pieces if p in out], out[-2000:]
