"""Hostile review of OAuth tokens across runs and processes: findings that failed on the code as
reviewed. Real PostgreSQL (tests/conftest.py), the sandbox's OAuth endpoints over its transport."""

from __future__ import annotations

import contextlib
import re
import time
from datetime import date

import httpx
import psycopg
import pytest

from pipelines.authorize import merchant_auth
from taptouch_resource import api
from taptouch_resource.auth import ClientCredentialsAuth
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.client.test_security_tokens import RewriteTokenAnswers
from tests.support.oauth_helpers import CLIENT_ID, CLIENT_SECRET, authorize, make_store, sandbox_secrets

DAY = 86400.0


@pytest.fixture
def sb():
    return Sandbox(SandboxConfig(seed=11, stores=2, days=2, end_date=date(2026, 11, 2), orders_per_day=5))


@pytest.fixture
def served(sb):
    with sb.serve() as base_url:
        yield base_url


# ------------------------------------------------------------------------------------ finding 1
@pytest.mark.parametrize("odd_scope", [r"odd\u0000scope", r"odd\ud800scope"], ids=["nul", "lone-surrogate"])
def test_a_rotation_answer_with_an_unstorable_scope_never_costs_the_grant(sb, served, migrated_db, odd_scope):
    """Taptouch rotates the refresh token and grants the scope asked for plus one the database cannot
    hold (a NUL, a lone surrogate: both valid JSON). The new refresh token must be kept: the next
    refresh must work, not present the spent token (which revokes the grant)."""
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")

    def odd(body: bytes) -> bytes:
        return re.sub(
            rb'("scope"\s*:\s*)"([^"]*)"',
            lambda m: m.group(1) + b'"' + m.group(2) + b" " + odd_scope.encode() + b'"',
            body,
        )

    transport = RewriteTokenAnswers(sb, odd)
    auth = merchant_auth(
        store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe", transport=transport
    )
    with contextlib.suppress(Exception):  # refusing the odd answer is fine; losing the rotated refresh token is not
        store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY)
    transport.active = False  # Taptouch answers properly again
    store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY)
    assert sb.token_is_valid(auth.get_token())
    assert [g.revoked for g in sb.merchant_grants()] == [False]  # no refresh token presented twice


# ------------------------------------------------------------------------------------ finding 2
SKEW = 120.0  # host A's clock runs two minutes ahead of host B's (NTP off, a VM resumed)


def _cc_auth(store, wall_clock, transport):
    return ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_url="http://sandbox" + api.TOKEN_PATH,
        transport=transport,
        store=store,
        wall_clock=wall_clock,
    )


def test_a_token_refused_with_401_is_not_reused_by_a_host_whose_clock_is_behind(sb, migrated_db):
    """Host A (clock ahead) fetches the shared client-credentials token; Taptouch revokes it; host B
    gets 401, marks it refused in the store and asks for a token: it must get a new one, not the
    refused one again (the store marks a refused token by setting its expiry to its issue time, which
    on A's clock lies in B's future)."""
    ahead = lambda: time.time() + SKEW  # noqa: E731
    store_a, store_b = make_store(migrated_db, clock=ahead), make_store(migrated_db)
    transport = sb.transport()
    first = _cc_auth(store_a, ahead, transport).get_token()
    sb.revoke_all_tokens()  # the tokens stop working (revocation, or Taptouch's own rotation)

    with httpx.Client(auth=_cc_auth(store_b, time.time, transport), transport=transport) as http:
        answer = http.get("http://sandbox/integration/v1/stores")
    assert answer.status_code == 200, f"host B was refused twice: {answer.status_code}"
    assert sb.stats.token_requests == 2 and first  # B fetched one new token


def test_a_merchant_token_refused_with_401_is_refreshed_on_a_host_whose_clock_is_behind(sb, served, migrated_db):
    ahead = lambda: time.time() + SKEW  # noqa: E731
    store_a, store_b = make_store(migrated_db, clock=ahead), make_store(migrated_db)
    authorize(served, store_a, merchant="cafe")
    auth_a = merchant_auth(store_a, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    assert store_a.keep_alive(auth_a.store_key, refresh=auth_a.refresh_with, min_remaining=5 * DAY)  # A rotates
    sb.revoke_all_tokens()  # its access token stops working

    auth_b = merchant_auth(store_b, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    with httpx.Client(auth=auth_b) as http:
        answer = http.get(served + "/integration/v1/stores")
    assert answer.status_code == 200, f"host B was refused twice: {answer.status_code}"
    assert sb.grant_requests["refresh_token"] == 2  # A's rotation, then B's


# ------------------------------------------------------------------------------------ finding 3
class SlowRefresh(httpx.BaseTransport):
    """The sandbox, answering the refresh-token grant after ``delay`` seconds (a slow Taptouch, or
    the retry engine waiting out a 429's Retry-After)."""

    def __init__(self, sb: Sandbox, delay: float):
        self.inner, self.delay, self.active = sb.transport(), delay, True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.active and request.url.path == api.TOKEN_PATH and b"grant_type=refresh_token" in request.read():
            time.sleep(self.delay)
        return self.inner.handle_request(request)


def test_a_database_idle_in_transaction_timeout_does_not_cost_the_grant(sb, served, migrated_db):
    """Managed PostgreSQL often sets idle_in_transaction_session_timeout for every session. The store
    holds the grant's row lock in an open transaction while Taptouch answers the refresh (retries and
    Retry-After included, up to minutes): the server must not end that session under it, or the
    rotated refresh token is lost after Taptouch has spent the old one."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        name = conn.execute("select current_database()").fetchone()[0]
        conn.execute(f'alter database "{name}" set idle_in_transaction_session_timeout = 500')
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    transport = SlowRefresh(sb, delay=1.5)
    auth = merchant_auth(
        store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe", transport=transport
    )
    with contextlib.suppress(psycopg.Error):  # reported as a store failure; what matters is the grant below
        store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY)
    transport.active = False
    store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY)
    assert sb.token_is_valid(auth.get_token())
    assert [g.revoked for g in sb.merchant_grants()] == [False]  # the spent refresh token was never presented


# ------------------------------------------------------------------------------------ finding 4
def _echo_into(field: str) -> httpx.MockTransport:
    """A token endpoint answering 200 with the client secret it received echoed into ``field``."""

    def handler(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        answer = {"access_token": "at-" + "K" * 30, "expires_in": 3600, "token_type": "Bearer", "scope": "x"}
        answer[field] = form["client_secret"]
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("field", ["scope", "token_type"])
def test_a_secret_echoed_into_a_200_answer_is_not_in_the_error(field):
    secret = "s3cr3t-" + "Q" * 10  # 17 characters: token_type is shown up to 20
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=secret,
        token_url="https://api.example/auth/v2/token",
        transport=_echo_into(field),
    )
    with pytest.raises(Exception) as raised:
        auth.get_token()
    assert secret not in str(raised.value)


def test_a_rotated_refresh_token_echoed_into_the_scope_is_not_stored_in_clear(sb, served, migrated_db):
    """A refresh answer whose ``scope`` quotes its own new refresh token: the answer is refused (the
    scope asked for is missing) and the refresh token kept, encrypted; ``last_error``, which anyone
    with SQL access and ``taptouch-sync tokens`` show, must not hold it in clear."""
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")

    def echo(body: bytes) -> bytes:
        refresh = re.search(rb'"refresh_token"\s*:\s*"([^"]*)"', body).group(1)
        return re.sub(rb'("scope"\s*:\s*)"[^"]*"', lambda m: m.group(1) + b'"' + refresh + b'"', body)

    transport = RewriteTokenAnswers(sb, echo)
    auth = merchant_auth(
        store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe", transport=transport
    )
    with pytest.raises(Exception) as raised:
        store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY)
    live = sandbox_secrets(sb)  # every token, refresh token and code the sandbox issued
    with psycopg.connect(migrated_db) as conn:
        dump = "\n".join(r[0] for r in conn.execute("select t::text from taptouch_auth.tokens t"))
    leaked = [t for t in live if t and (t in dump or t in str(raised.value))]
    assert not leaked, "a refresh token is in clear in taptouch_auth.tokens or the error"


@pytest.mark.parametrize("field", ["expires_in", "refresh_token_expires_in"])
def test_a_secret_echoed_into_a_lifetime_is_not_logged(field, caplog):
    secret = "s3cr3t-" + "Q" * 10
    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=secret,
        token_url="https://api.example/auth/v2/token",
        transport=_echo_into(field),
        scopes=("x",),
    )
    with caplog.at_level("DEBUG"):
        auth.get_token()
    assert secret not in caplog.text


# ------------------------------------------------------------------------------------ finding 5
def test_a_named_accounts_revoked_grant_names_the_command_with_its_account(
    sb, served, migrated_db, monkeypatch, capsys
):
    """With TAPTOUCH_ACCOUNTS, a grant is authorized with `authorize --account NAME` (docs/authorization.md).
    When it must be authorized again, the command the error names must carry --account: without it
    the merchant's new grant lands under TAPTOUCH_CLIENT_ID (another account's client), or fails."""
    from pipelines.cli import main

    for k, v in {
        "TAPTOUCH_ACCOUNTS": "north",
        "TAPTOUCH_NORTH_CLIENT_ID": CLIENT_ID,
        "TAPTOUCH_NORTH_CLIENT_SECRET": CLIENT_SECRET,
        "TAPTOUCH_NORTH_BASE_URL": served,
    }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TAPTOUCH_TOKEN_KEY", raising=False)
    authorize(served, make_store(migrated_db), merchant="cafe")
    sb.revoke_grant()  # the merchant revokes access

    assert main(["refresh", "--account", "north", "--min-remaining-hours", "96", "--database-url", migrated_db]) == 1
    out = capsys.readouterr().out
    assert "merchant cafe: FAILED" in out
    assert "taptouch-sync authorize --account north --merchant cafe" in out, out
    # and again on the next try (the grant is now marked unusable in the store)
    assert main(["refresh", "--account", "north", "--min-remaining-hours", "96", "--database-url", migrated_db]) == 1
    out = capsys.readouterr().out
    assert "taptouch-sync authorize --account north --merchant cafe" in out, out
