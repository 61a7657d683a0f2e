"""Configuration and security: missing secrets, plain http, TLS verification, and a secret scan of
everything a real Dagster run wrote (event log and storage, metadata, logs, exception texts)."""

import logging
import uuid
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import defs
from pipelines.warehouse.resource import PostgresResource
from taptouch_resource import TaptouchClient, TaptouchConfigError, TaptouchError, TaptouchResource
from taptouch_sandbox import Faults, Sandbox, SandboxConfig
from tests.support.reliability.dbfaults import END_DATE

pytestmark = pytest.mark.reliability

stores, orders, inventory = (defs.get_assets_def(key) for key in ("stores", "orders", "inventory"))


@pytest.mark.parametrize("secret", [None, "", "   "])
def test_missing_or_empty_secret_names_the_variable(monkeypatch, secret):
    monkeypatch.setenv("TAPTOUCH_CLIENT_ID", "some-client")
    if secret is None:
        monkeypatch.delenv("TAPTOUCH_CLIENT_SECRET", raising=False)
    else:
        monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", secret)
    with pytest.raises(TaptouchConfigError, match="TAPTOUCH_CLIENT_SECRET"):
        TaptouchResource().get_client()
    with pytest.raises(TaptouchError, match="TAPTOUCH_CLIENT_SECRET"):
        TaptouchClient(client_id="some-client", client_secret=secret or "")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.taptouch.net",
        "http://10.0.0.5:8080",
        "http://example.com/",
        "http://[2001:db8::1]/",
        "ftp://api.taptouch.net",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(url):
    with pytest.raises(TaptouchConfigError, match="https"):
        TaptouchClient(client_id="c", client_secret="s", base_url=url)
    with pytest.raises(TaptouchConfigError):
        TaptouchResource(client_id="c", client_secret="s", base_url=url).get_client()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:2"])
def test_plain_http_to_loopback_is_allowed(url):
    TaptouchClient(client_id="c", client_secret="s", base_url=url).close()


@pytest.mark.parametrize(
    "url",
    [
        "http://evil.localhost:8765",
        "http://localhost.evil.com",
        "http://127.0.0.1.nip.io",
        "http://0x7f000001.example",
        "http://[::ffff:10.0.0.1]/",
    ],
)
def test_loopback_is_literal(url):
    """Only literal loopback addresses and ``localhost`` itself skip https: any other name is
    resolved through DNS and may point anywhere."""
    with pytest.raises(TaptouchConfigError, match="Refusing plain http"):
        TaptouchClient(client_id="c", client_secret="s", base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:Hunter2#x@127.0.0.1:1",
        "https://u:Hunter2@api.taptouch.net",
        "ftp://u:Hunter2?x@api.taptouch.net",
        "Hunter2",
    ],
)
def test_a_bad_base_url_is_never_echoed(url):
    with pytest.raises(TaptouchConfigError) as raised:
        TaptouchClient(client_id="c", client_secret="s", base_url=url)
    assert "Hunter2" not in str(raised.value) and "TAPTOUCH_BASE_URL" in str(raised.value)


def test_tls_verification_cannot_be_switched_off():
    with pytest.raises(TaptouchConfigError, match="TLS verification"):
        TaptouchClient(client_id="c", client_secret="s", verify=False)


def _run_text(instance: dg.DagsterInstance, run_id: str) -> str:
    from dagster._serdes import serialize_value

    parts = []
    for entry in instance.all_logs(run_id):
        parts.append(serialize_value(entry))
        parts.append(str(entry.user_message))
    record = instance.get_run_by_id(run_id)
    parts.append(serialize_value(record))
    return "\n".join(parts)


def _files_text(root: Path) -> tuple[int, bytes]:
    blobs = [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    return len(blobs), b"\n".join(blobs)


@pytest.mark.slow
def test_no_secret_or_token_in_anything_a_run_wrote(migrated_db, tmp_path, caplog, monkeypatch):
    secret = f"TTSECRET-{uuid.uuid4().hex}"
    wrong = f"TTWRONG-{uuid.uuid4().hex}"
    sb = Sandbox(
        SandboxConfig(seed=21, stores=2, days=3, end_date=END_DATE, orders_per_day=20, client_secret=secret),
        faults=Faults(revoke_tokens_every=7, token_lifetime=3600),
    )
    issued: list[str] = []
    real_issue = sb.issue_token

    def issue(*a, **kw):  # the sandbox's token store is a dict that revocation clears: keep a copy
        token = real_issue(*a, **kw)
        issued.append(token)
        return token

    sb.issue_token = issue
    caplog.set_level(logging.DEBUG)
    home = tmp_path / "dagster_home"
    home.mkdir()
    exceptions: list[str] = []
    with sb.serve() as url, dg.instance_for_test(temp_dir=str(home)) as instance:
        monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", secret)
        resources = {
            "taptouch": TaptouchResource(client_id="sandbox-client", base_url=url, requests_per_second=0, page_size=7),
            "warehouse": PostgresResource(database_url=migrated_db),
        }
        ok = dg.materialize(
            [stores, orders, inventory], resources=resources, partition_key="2026-11-26", instance=instance
        )
        assert ok.success
        # a failing run: a forbidden store (dg.Failure with text and metadata)
        sb.faults.forbidden_stores = {sb.store_ids()[0]}
        bad = dg.materialize(
            [stores, orders, inventory],
            resources=resources,
            partition_key="2026-11-25",
            instance=instance,
            raise_on_error=False,
        )
        assert not bad.success
        sb.faults.forbidden_stores = set()
        # a run with a wrong secret: the error must not echo it
        monkeypatch.setenv("TAPTOUCH_CLIENT_SECRET", wrong)
        denied = dg.materialize([stores], resources=resources, instance=instance, raise_on_error=False)
        assert not denied.success
        for result in (bad, denied):
            for ev in result.all_events:
                if ev.event_specific_data is not None and getattr(ev.event_specific_data, "error", None):
                    exceptions.append(ev.event_specific_data.error.to_string())
        run_ids = [r.run_id for r in (ok, bad, denied)]
        events = "\n".join(_run_text(instance, rid) for rid in run_ids)
        materializations = ok.asset_materializations_for_node("orders")
        assert materializations and materializations[0].metadata["dagster/row_count"].value > 0
        n_files, on_disk = _files_text(home)
    assert sb.stats.token_requests >= 3 and len(issued) >= 3, "revocations should have forced new tokens"
    assert exceptions and any("TAPTOUCH_CLIENT_SECRET" in e or "client credentials" in e for e in exceptions)
    haystacks = {
        "event log": events,
        "python logging": caplog.text,
        "exception texts": "\n".join(exceptions),
        "dagster storage on disk": on_disk.decode("utf-8", "replace"),
    }
    assert n_files > 0 and len(events) > 10_000
    # the scan looks at real text: the client id (not secret) is there, in errors and on disk
    assert "sandbox-client" in haystacks["exception texts"] and "sandbox-client" in haystacks["dagster storage on disk"]
    for needle in [secret, wrong, *issued]:
        for where, text in haystacks.items():
            assert needle not in text, f"a secret or access token appears in the {where}"
