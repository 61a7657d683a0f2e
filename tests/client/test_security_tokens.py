"""Token responses a careless or hostile token endpoint could send, end to end through the
Postgres token store; errors echoed from the endpoint; keep-alive with an unreadable grant.

The sandbox serves the OAuth endpoints; :class:`RewriteTokenAnswers` edits its 200 token answers
on the way to the client (a raw JSON literal such as ``1e400`` or ``NaN`` for ``expires_in``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

import httpx
import psycopg
import pytest
from cryptography.fernet import Fernet

from pipelines.authorize import keep_merchants_alive, merchant_auth
from pipelines.warehouse.token_store import TokenCipher, TokenStore
from taptouch_resource import api
from taptouch_resource.auth import (
    ACCESS_LIFETIME_RANGE,
    ClientCredentialsAuth,
    MerchantAuth,
    ReauthorizationRequired,
    parse_lifetime,
)
from taptouch_resource.errors import TaptouchAuthError, TaptouchError
from taptouch_resource.tokens import GrantKey, InMemoryTokens, TokenResponse
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.oauth_helpers import CLIENT_ID, CLIENT_SECRET, authorize, make_store

DAY = 86400.0
LOW, HIGH, DEFAULT = ACCESS_LIFETIME_RANGE  # (min, 7 days, 3600 s)


class RewriteTokenAnswers(httpx.BaseTransport):
    """The sandbox's transport, with every 200 answer of the token endpoint passed through ``edit``
    (bytes -> bytes) while ``active``."""

    def __init__(self, sb: Sandbox, edit: Callable[[bytes], bytes]):
        self.inner, self.edit, self.active = sb.transport(), edit, True

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if self.active and request.url.path == api.TOKEN_PATH and response.status_code == 200:
            body = self.edit(response.read())
            return httpx.Response(200, headers={"Content-Type": "application/json"}, content=body)
        return response


def expires_in(literal: str | None) -> Callable[[bytes], bytes]:
    """Replace ``expires_in``'s value by the raw JSON ``literal`` (None: drop the field)."""

    def edit(body: bytes) -> bytes:
        text = body.decode()
        if literal is None:
            return re.sub(r'"expires_in"\s*:\s*[^,}]+,?', "", text).replace(",}", "}").encode()
        return re.sub(r'("expires_in"\s*:\s*)[^,}]+', lambda m: m.group(1) + literal, text).encode()

    return edit


@pytest.fixture
def sb():
    return Sandbox(SandboxConfig(seed=7, stores=2, days=2, end_date=date(2026, 11, 2), orders_per_day=5))


@pytest.fixture
def served(sb):
    with sb.serve() as base_url:
        yield base_url


def stored_lifetimes(url: str, label: str) -> tuple[float, float | None]:
    with psycopg.connect(url) as conn:
        access, refresh = conn.execute(
            "select extract(epoch from access_expires_at - access_issued_at)::float8, "
            "extract(epoch from refresh_expires_at - access_issued_at)::float8 "
            "from taptouch_auth.tokens where label = %s",
            (label,),
        ).fetchone()
    return access, refresh


# value sent as expires_in -> the lifetime the store must hold (documented in docs/security.md)
ABSURD_LIFETIMES = [
    (None, DEFAULT),  # missing
    ('"soon"', DEFAULT),  # not a number
    ("NaN", DEFAULT),
    ("Infinity", DEFAULT),
    ("-Infinity", DEFAULT),
    ("1e400", DEFAULT),  # beyond a double: infinite once read
    ("-5", LOW),  # negative
    ("0", LOW),
    ("1e12", HIGH),  # ~31,700 years: `year 33715 is out of range` in the store before the clamp
    ("true", DEFAULT),
    ('"7200"', 7200.0),  # a numeric string is read
]


@pytest.mark.parametrize(("literal", "expected"), ABSURD_LIFETIMES)
def test_client_credentials_lifetime_is_clamped_through_the_store(sb, migrated_db, literal, expected):
    store = make_store(migrated_db)
    transport = RewriteTokenAnswers(sb, expires_in(literal))

    def auth() -> ClientCredentialsAuth:
        return ClientCredentialsAuth(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            token_url="http://sandbox" + api.TOKEN_PATH,
            transport=transport,
            store=store,
        )

    first = auth().get_token()
    assert sb.token_is_valid(first)
    label = GrantKey.client_credentials("http://sandbox", CLIENT_ID, api.ALL_SCOPES).label
    access, _ = stored_lifetimes(migrated_db, label)
    assert access == pytest.approx(expected, abs=1)
    if expected >= 60:  # another process reuses it: an absurd lifetime never means a fetch per request
        assert auth().get_token() == first and auth().get_token() == first
        assert sb.stats.token_requests == 1


@pytest.mark.parametrize(
    ("literal", "expected"), [v for v in ABSURD_LIFETIMES if v[0] in ("1e12", "NaN", "-5", "1e400")]
)
def test_merchant_rotation_with_an_absurd_lifetime_keeps_the_grant(sb, served, migrated_db, literal, expected):
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    transport = RewriteTokenAnswers(sb, expires_in(literal))
    auth = merchant_auth(
        store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe", transport=transport
    )
    assert store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY) is True
    access, refresh = stored_lifetimes(migrated_db, "cafe")
    assert access == pytest.approx(expected, abs=1) and refresh == pytest.approx(4 * DAY, abs=1)
    # the rotated refresh token was stored: the grant keeps working
    transport.active = False
    assert store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY) is True
    assert sb.grant_requests["refresh_token"] == 2
    assert sb.token_is_valid(auth.get_token())
    [grant] = store.grants()
    assert grant.has_refresh_token and grant.rotations == 2 and grant.last_error is None


@pytest.mark.parametrize(
    "bad_answer",
    [
        lambda body: re.sub(rb'"access_token"\s*:\s*"[^"]*",?', b"", body),  # no access token
        lambda body: re.sub(rb'("access_token"\s*:\s*)"[^"]*"', rb'\1""', body),  # empty
        lambda body: re.sub(rb'("scope"\s*:\s*)"[^"]*"', rb'\1"integration.inventory"', body),  # another scope
    ],
    ids=["no-access-token", "empty-access-token", "narrower-scope"],
)
def test_an_unusable_rotation_answer_never_costs_the_grant(sb, served, migrated_db, bad_answer):
    """Taptouch rotated the refresh token (the old one is spent) but the rest of its answer is
    unusable: the error is raised, and the new refresh token is stored so the next refresh works."""
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    transport = RewriteTokenAnswers(sb, bad_answer)
    auth = merchant_auth(
        store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe", transport=transport
    )
    with pytest.raises(TaptouchError) as raised:
        store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY)
    assert not isinstance(raised.value, ReauthorizationRequired)
    [grant] = store.grants()
    assert grant.has_refresh_token and grant.last_error and grant.rotations == 1

    transport.active = False  # Taptouch answers properly again
    assert store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=5 * DAY) is True
    assert sb.token_is_valid(auth.get_token())
    assert [g.revoked for g in sb.merchant_grants()] == [False]  # no refresh token was ever presented twice
    [grant] = store.grants()
    assert grant.last_error is None and grant.rotations == 2


def test_the_store_itself_clamps_what_any_caller_hands_it(migrated_db):
    """A TokenPersistence caller other than the client (a test, a future grant) cannot break the
    table with a lifetime beyond any date PostgreSQL or Python can hold."""
    store = make_store(migrated_db)
    key = GrantKey.client_credentials("https://api.example", CLIENT_ID, ["integration.store"])
    for lifetime in (1e12, float("inf"), float("nan"), -1.0):
        store.forget(key)
        got = store.client_credentials(
            key, fetch=lambda lifetime=lifetime: TokenResponse("tok", lifetime, ("integration.store",))
        )
        assert LOW <= got.lifetime <= HIGH
        access, _ = stored_lifetimes(migrated_db, key.label)
        assert LOW <= access <= HIGH


def test_parse_lifetime_range_is_the_documented_one():
    """docs/security.md states the range the code clamps to."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    assert f"`expires_in` is clamped to {LOW:g} s .. {HIGH:g} s (7 days)" in doc
    assert f"default {DEFAULT:g} s" in doc
    assert parse_lifetime(3600, ACCESS_LIFETIME_RANGE, "expires_in") == 3600.0
    assert parse_lifetime(10**30, ACCESS_LIFETIME_RANGE, "expires_in") == HIGH


# ---------------------------------------------------------------------------------------- echoed errors
def _echo(status: int, error: str, description: Callable[[dict], str]) -> httpx.MockTransport:
    """A token endpoint that answers every request with an error quoting the form it received."""

    def handler(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        return httpx.Response(status, json={"error": error, "error_description": description(form)})

    return httpx.MockTransport(handler)


def test_echoed_refresh_token_and_secret_are_redacted_whole_values_only():
    secret = "abc"  # short on purpose: must not mask "abcdef" or "fabc"
    transport = _echo(
        400,
        "invalid_grant",
        lambda f: f"refresh_token {f['refresh_token']} of client secret {f['client_secret']}. See abcdef and fabc.",
    )
    auth = MerchantAuth(
        client_id=CLIENT_ID,
        client_secret=secret,
        token_url="https://api.example/auth/v2/token",
        merchant="cafe",
        store=InMemoryTokens(),
        transport=transport,
    )
    refresh = "rt-" + "Z" * 40
    with pytest.raises(ReauthorizationRequired) as raised:
        auth.refresh_with(refresh)
    text = str(raised.value) + raised.value.description
    assert refresh not in text and " abc." not in text
    assert "refresh_token *** of client secret ***." in text
    assert "abcdef" in text and "fabc" in text


def test_echoed_code_and_verifier_are_redacted():
    transport = _echo(400, "invalid_request", lambda f: f"code={f['code']} verifier={f['code_verifier']}")
    auth = MerchantAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        merchant="cafe",
        store=InMemoryTokens(),
        token_url="https://api.example/auth/v2/token",
        transport=transport,
    )
    code, verifier = "code-" + "q" * 30, "v" * 60
    with pytest.raises(TaptouchAuthError) as raised:
        auth.exchange_code(code=code, redirect_uri="http://127.0.0.1:1/callback", code_verifier=verifier)
    assert code not in str(raised.value) and verifier not in str(raised.value)
    assert "code=*** verifier=***" in str(raised.value)


def test_echoed_access_token_is_redacted():
    """The endpoint quotes the access token this client still holds when it asks for a new one."""
    now = [0.0]
    issued: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if not issued:
            issued.append("at-" + "K" * 40)
            return httpx.Response(
                200, json={"access_token": issued[0], "expires_in": 3600, "scope": " ".join(api.ALL_SCOPES)}
            )
        return httpx.Response(
            400, json={"error": "invalid_request", "error_description": f"token {issued[0]} is still valid"}
        )

    auth = ClientCredentialsAuth(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        clock=lambda: now[0],
        token_url="https://api.example/auth/v2/token",
        transport=httpx.MockTransport(handler),
    )
    auth.get_token()
    now[0] = 3590.0  # inside the refresh margin: a new token is asked for
    with pytest.raises(TaptouchAuthError) as raised:
        auth.get_token()
    assert issued[0] not in str(raised.value) and "token *** is still valid" in str(raised.value)


# ---------------------------------------------------------------------------------------- keep-alive
def test_keepalive_reports_an_unreadable_grant_and_rotates_the_others(sb, served, migrated_db):
    """Grant "a-cafe" was stored under a key the store no longer has; "b-bakery" under the current
    one. The keep-alive reports the first and still rotates the second."""
    current = Fernet.generate_key()
    old_store = make_store(migrated_db)  # key derived from the client secret
    new_store = TokenStore(migrated_db, cipher=TokenCipher([current], source="TAPTOUCH_TOKEN_KEY"))
    authorize(served, old_store, merchant="a-cafe")
    authorize(served, new_store, merchant="b-bakery")

    results = keep_merchants_alive(
        new_store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, min_remaining=5 * DAY
    )
    by_merchant = {r.merchant: r for r in results}
    assert set(by_merchant) == {"a-cafe", "b-bakery"}
    assert by_merchant["a-cafe"].error and "cannot be decrypted" in by_merchant["a-cafe"].error
    assert by_merchant["b-bakery"].rotated and by_merchant["b-bakery"].error is None
    assert sb.grant_requests["refresh_token"] == 1
