"""The token store: encryption at rest, one refresh / one fetch across processes, the crash window,
keep-alive, and no token in logs. Real Postgres, the sandbox over HTTP."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from datetime import date

import dagster as dg
import psycopg
import pytest
from cryptography.fernet import Fernet

from pipelines.authorize import keep_merchants_alive, merchant_auth
from pipelines.tokens import merchant_tokens_keepalive_job
from pipelines.warehouse.resource import PostgresResource
from pipelines.warehouse.token_store import ENV_TOKEN_KEY, TokenCipher, TokenStore, TokenStoreError, derive_key
from taptouch_resource import TaptouchClient, TaptouchResource, api
from taptouch_resource.auth import ClientCredentialsAuth, ReauthorizationRequired
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.oauth_helpers import BROWSER_THREAD, CLIENT_ID, CLIENT_SECRET, authorize, make_store, sandbox_secrets

PROCESSES = 10
DAY = 86400.0


@pytest.fixture
def sb():
    return Sandbox(SandboxConfig(seed=5, stores=2, days=2, end_date=date(2026, 11, 2), orders_per_day=5))


@pytest.fixture
def served(sb):
    with sb.serve() as base_url:
        yield base_url


def raw_rows(url: str) -> str:
    """Every row of the table as text, as anyone with SQL access would see it."""
    with psycopg.connect(url) as conn:
        return "\n".join(r[0] for r in conn.execute("select t::text from taptouch_auth.tokens t"))


def make_stale(url: str, merchant: str = "cafe") -> None:
    """The stored access token enters its refresh margin (still valid at Taptouch)."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "update taptouch_auth.tokens set access_issued_at = now() - interval '2 days', "
            "access_expires_at = now() + interval '60 seconds' where label = %s",
            (merchant,),
        )


# ---------------------------------------------------------------------------------------- at rest
def test_tokens_are_encrypted_at_rest(sb, served, migrated_db, monkeypatch):
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    cc = ClientCredentialsAuth(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_url=served + api.TOKEN_PATH, store=store
    )
    cc_token = cc.get_token()
    secrets = sandbox_secrets(sb)
    assert cc_token in secrets and len(secrets) >= 3
    dump = raw_rows(migrated_db)
    assert "cafe" in dump and "integration.store" in dump  # the rows are there...
    assert not [s for s in secrets if s in dump]  # ...but no token, refresh token or code in plain text
    with psycopg.connect(migrated_db) as conn:  # not even hex- or base64-decodable from the bytea
        blobs = conn.execute("select access_token, refresh_token from taptouch_auth.tokens").fetchall()
    assert all(blob is None or not any(s.encode() in bytes(blob) for s in secrets) for row in blobs for blob in row)

    # another key cannot read them; the error says what to do
    other = TokenStore(migrated_db, cipher=TokenCipher.from_env(CLIENT_ID, "another-secret", env={}))
    auth = merchant_auth(other, base_url=served, client_id=CLIENT_ID, client_secret="another-secret", merchant="cafe")
    with pytest.raises(TokenStoreError, match=f"cannot be decrypted.*{ENV_TOKEN_KEY}"):
        auth.get_token()
    # an explicit key, rotated: the old key listed after the new one still decrypts
    old_key = TokenCipher.from_env(CLIENT_ID, CLIENT_SECRET, env={})
    new_key = Fernet.generate_key().decode()
    rotated = TokenCipher.from_env(
        CLIENT_ID, CLIENT_SECRET, env={ENV_TOKEN_KEY: f"{new_key},{derive_key(CLIENT_ID, CLIENT_SECRET).decode()}"}
    )
    assert rotated.decrypt(old_key.encrypt("x")) == "x" and rotated.source == ENV_TOKEN_KEY
    with pytest.raises(ValueError, match=ENV_TOKEN_KEY):
        TokenCipher.from_env(CLIENT_ID, CLIENT_SECRET, env={ENV_TOKEN_KEY: "not-a-key"})


# ---------------------------------------------------------------------------------------- processes
def _merchant_worker(base_url: str, db_url: str, barrier, results) -> None:
    store = make_store(db_url)
    auth = merchant_auth(store, base_url=base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    barrier.wait(timeout=30)
    try:
        results.put(("ok", auth.get_token()))
    except Exception as exc:  # reported to the test
        results.put(("error", repr(exc)))


def _cc_worker(base_url: str, db_url: str, barrier, results) -> None:
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_url=base_url + api.TOKEN_PATH, store=make_store(db_url)
    )
    barrier.wait(timeout=30)
    try:
        results.put(("ok", auth.get_token()))
    except Exception as exc:
        results.put(("error", repr(exc)))


def _run_processes(target, base_url: str, db_url: str) -> list[tuple[str, str]]:
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=target, args=(base_url, db_url, barrier, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        out = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return out


def test_ten_processes_use_the_refresh_token_once(sb, served, migrated_db):
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    make_stale(migrated_db)
    out = _run_processes(_merchant_worker, served, migrated_db)
    assert [kind for kind, _ in out] == ["ok"] * PROCESSES, out
    tokens = {token for _, token in out}
    assert sb.grant_requests["refresh_token"] == 1  # exactly one use of the single-use refresh token
    assert len(tokens) == 1 and sb.token_is_valid(tokens.pop())
    [grant] = store.grants()
    assert grant.rotations == 1 and grant.has_refresh_token and grant.last_error is None


def test_ten_processes_fetch_one_client_credentials_token(sb, served, migrated_db):
    out = _run_processes(_cc_worker, served, migrated_db)
    assert [kind for kind, _ in out] == ["ok"] * PROCESSES, out
    assert sb.grant_requests["client_credentials"] == 1
    tokens = {token for _, token in out}
    assert len(tokens) == 1 and sb.token_is_valid(tokens.pop())
    # a later run (any process) reuses it: the in-memory cache is empty, the store is not
    res = TaptouchResource(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=served, requests_per_second=0)
    assert len(list(res.get_client(token_store=TokenStore.for_resource(res, migrated_db)).list_stores())) == 2
    assert sb.grant_requests["client_credentials"] == 1


# ---------------------------------------------------------------------------------------- the crash window
def _crash_after_answer(base_url: str, db_url: str) -> None:
    store = make_store(db_url, before_commit=lambda key: os._exit(9))  # killed: no commit, no cleanup
    merchant_auth(
        store, base_url=base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe"
    ).get_token()


def test_crash_between_answer_and_commit_loses_the_rotated_token(sb, served, migrated_db):
    """Documented outcome (docs/merchant-auth.md): the new pair dies with the process, the stored
    refresh token was consumed, the next refresh is refused and says how to recover."""
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    make_stale(migrated_db)
    before = raw_rows(migrated_db)
    proc = multiprocessing.get_context("fork").Process(target=_crash_after_answer, args=(served, migrated_db))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 9
    assert sb.grant_requests["refresh_token"] == 1  # Taptouch answered: the old refresh token is consumed
    assert raw_rows(migrated_db) == before  # the transaction was rolled back: the old pair is still stored

    auth = merchant_auth(store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    with pytest.raises(ReauthorizationRequired, match="already used.*taptouch-sync authorize --merchant cafe"):
        auth.get_token()
    assert sb.grant_requests["refresh_token"] == 2
    assert all(g.revoked for g in sb.merchant_grants())  # reuse detected: the lost tokens are dead too
    [grant] = store.grants()
    assert not grant.has_refresh_token and "authorize --merchant cafe" in grant.last_error

    authorize(served, store, merchant="cafe")  # recovery: the merchant authorizes again
    assert sb.token_is_valid(
        merchant_auth(
            store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe"
        ).get_token()
    )
    [grant] = store.grants()
    assert grant.has_refresh_token and grant.last_error is None and grant.rotations == 0


# ---------------------------------------------------------------------------------------- keep-alive
def test_keep_alive_outlives_the_four_days_and_lapses_without_it(migrated_db):
    now = [1_900_000_000.0]
    clock = lambda: now[0]  # noqa: E731 - one clock for the sandbox, the store and the client
    sb = Sandbox(SandboxConfig(stores=1, days=1, end_date=date(2026, 11, 2)), clock=clock)
    with sb.serve() as base:
        store = make_store(migrated_db, clock=clock)
        authorize(base, store, merchant="kept", clock=clock)
        authorize(base, store, merchant="lapsed", clock=clock)
        kept = merchant_auth(
            store, base_url=base, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="kept", wall_clock=clock
        )
        rotations = 0
        for _ in range(10):  # ten days of the daily schedule (each run a minute later than the last)
            now[0] += DAY + 60
            rotations += store.keep_alive(kept.store_key, refresh=kept.refresh_with)
        assert rotations == 10 and sb.token_is_valid(kept.get_token())
        now[0] += 0.5 * DAY
        assert not store.keep_alive(kept.store_key, refresh=kept.refresh_with)  # 3.5 days left: nothing to do

        lapsed = merchant_auth(
            store, base_url=base, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="lapsed", wall_clock=clock
        )
        with pytest.raises(ReauthorizationRequired, match="expired .*taptouch-sync authorize --merchant lapsed"):
            lapsed.get_token()


@pytest.mark.slow
def test_keepalive_job_and_refresh_command(sb, served, migrated_db, monkeypatch, capsys):
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    # the grant is fresh (4 days left): with the default 3-day threshold nothing rotates
    assert [
        r.rotated
        for r in keep_merchants_alive(store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    ] == [False]
    with psycopg.connect(migrated_db) as conn:  # a day and a half later
        conn.execute("update taptouch_auth.tokens set refresh_expires_at = now() + interval '2.5 days'")
    resources = {
        "taptouch": TaptouchResource(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=served),
        "warehouse": PostgresResource(database_url=migrated_db),
    }
    result = merchant_tokens_keepalive_job.execute_in_process(resources=resources)
    assert result.success and result.output_for_node("refresh_merchant_tokens") == 1
    assert sb.grant_requests["refresh_token"] == 1

    sb.revoke_grant()
    with psycopg.connect(migrated_db) as conn:
        conn.execute("update taptouch_auth.tokens set refresh_expires_at = now() + interval '1 day'")
    failed = merchant_tokens_keepalive_job.execute_in_process(resources=resources, raise_on_error=False)
    assert not failed.success
    failure = [e for e in failed.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE][0]
    assert "taptouch-sync authorize --merchant cafe" in failure.step_failure_data.error.message

    for k, v in {
        "TAPTOUCH_CLIENT_ID": CLIENT_ID,
        "TAPTOUCH_CLIENT_SECRET": CLIENT_SECRET,
        "TAPTOUCH_BASE_URL": served,
    }.items():
        monkeypatch.setenv(k, v)
    from pipelines.cli import main

    assert main(["refresh", "--database-url", migrated_db]) == 1
    assert "merchant cafe: FAILED" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- logs
def test_no_token_in_logs(sb, served, migrated_db, caplog):
    caplog.set_level(logging.DEBUG)
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    make_stale(migrated_db)
    auth = merchant_auth(store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    with TaptouchClient(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, base_url=served, auth=auth, requests_per_second=None
    ) as client:
        assert len(list(client.list_stores())) == 2  # after a refresh
    cc = ClientCredentialsAuth(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, token_url=served + api.TOKEN_PATH, store=store
    )
    cc.get_token()
    secrets = sandbox_secrets(sb)
    sb.revoke_grant()
    auth.invalidate(auth.get_token())
    with pytest.raises(ReauthorizationRequired) as exc:
        auth.get_token()
    ours = [r for r in caplog.records if r.threadName != BROWSER_THREAD]  # the test's browser logs its URLs
    text = "\n".join(r.getMessage() for r in ours) + str(exc.value) + repr(auth) + repr(store) + repr(store.grants())
    assert any("rotated the refresh token" in r.getMessage() for r in ours)  # the logs were captured
    assert len(secrets) >= 4 and not [s for s in secrets if s in text]
    assert CLIENT_SECRET not in text


# ---------------------------------------------------------------------------------------- wrong secret
def test_a_wrong_client_secret_says_so_without_blaming_the_token_key(sb, served, migrated_db, caplog):
    """A client-credentials token stored under the right secret, then a run with a wrong one: the
    stored token (sealed with the key the right secret derives) is simply replaced. No warning about
    TAPTOUCH_TOKEN_KEY or restoring an old key, and one line at most about the stored token; the
    error is the token endpoint's refusal of the client."""
    good = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_url=served + api.TOKEN_PATH,
        store=make_store(migrated_db),
    )
    good.get_token()
    wrong_store = TokenStore(migrated_db, cipher=TokenCipher.from_env(CLIENT_ID, "a-wrong-secret", env={}))
    wrong = ClientCredentialsAuth(
        client_id=CLIENT_ID, client_secret="a-wrong-secret", token_url=served + api.TOKEN_PATH, store=wrong_store
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Exception) as refused:
        wrong.get_token()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert ENV_TOKEN_KEY not in text and "Restore the old key" not in text, text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "stored" in r.getMessage()], text
    assert sum("another key" in r.getMessage() for r in caplog.records) == 1, text
    assert "client" in str(refused.value).lower() and ENV_TOKEN_KEY not in str(refused.value)
    # the right secret still finds a token it can read (the refused fetch stored nothing)
    assert good.get_token()


def test_a_grant_forgotten_while_waiting_for_the_refresh_lock_asks_to_authorize_again(sb, served, migrated_db):
    """Another connection holds the grant's row lock and deletes the grant meanwhile (as
    ``TokenStore.forget`` does); the refresh waiting for the lock then finds no row, and says to
    authorize again instead of failing on the missing row."""
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    make_stale(migrated_db)
    auth = merchant_auth(store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            auth.get_token()
        except BaseException as exc:  # the outcome is asserted below, in the test's thread
            outcome.append(exc)

    with psycopg.connect(migrated_db) as holder:
        holder.execute("select 1 from taptouch_auth.tokens where label = 'cafe' for update")
        thread = threading.Thread(target=waiter)
        thread.start()
        deadline = time.monotonic() + 10
        while (
            time.monotonic() < deadline
            and not holder.execute(
                "select 1 from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()"
            ).fetchone()
        ):
            time.sleep(0.02)
        holder.execute("delete from taptouch_auth.tokens where label = 'cafe'")
    thread.join(timeout=10)
    assert len(outcome) == 1 and isinstance(outcome[0], ReauthorizationRequired), outcome
    assert "No authorization of merchant 'cafe'" in str(outcome[0])
    assert sb.grant_requests["refresh_token"] == 0  # nothing was refreshed


def test_a_clock_that_jumps_ahead_does_not_destroy_a_grant_taptouch_still_honours(sb, served, migrated_db):
    """This machine's clock jumps 5 days ahead: the refresh token looks expired here, but only
    Taptouch's invalid_grant drops it. It is presented, Taptouch still honours it, and it is rotated
    (before, it was dropped without asking, and the merchant had to authorize again)."""
    authorize(served, make_store(migrated_db), merchant="cafe")
    ahead = make_store(migrated_db, clock=lambda: time.time() + 5 * DAY)
    auth = merchant_auth(ahead, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    assert ahead.keep_alive(auth.store_key, refresh=auth.refresh_with)  # rotated
    assert sb.grant_requests["refresh_token"] == 1
    fixed = make_store(migrated_db)  # the clock is right again
    auth = merchant_auth(fixed, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    [grant] = fixed.grants()
    assert grant.has_refresh_token, grant.last_error
    assert sb.token_is_valid(auth.get_token())
