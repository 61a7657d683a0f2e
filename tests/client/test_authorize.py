"""The merchant authorization flow (authorization code + PKCE) against the sandbox over real HTTP,
with a test client playing the merchant's browser, and the sandbox's side of it."""

from __future__ import annotations

import re
from datetime import date
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import psycopg
import pytest

from pipelines import authorize as authorize_module
from pipelines.authorize import AuthorizationFailed, merchant_auth, pkce_pair, s256
from pipelines.warehouse.token_store import TokenStore
from taptouch_resource import TaptouchConfigError, TaptouchResource, api
from taptouch_resource.auth import ReauthorizationRequired
from taptouch_sandbox import Sandbox, SandboxConfig
from tests.support.oauth_helpers import CLIENT_ID, CLIENT_SECRET, Browser, authorize, make_store, run_authorize_command


@pytest.fixture
def sb():
    return Sandbox(SandboxConfig(seed=3, stores=2, days=2, end_date=date(2026, 11, 2), orders_per_day=5))


@pytest.fixture
def served(sb):
    with sb.serve() as base_url:
        yield base_url


def stored_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("select count(*) from taptouch_auth.tokens").fetchone()[0]


# ---------------------------------------------------------------------------------------- the flow
def test_whole_flow_stores_the_grant_and_the_stores_asset_client_uses_it(sb, served, migrated_db):
    store = make_store(migrated_db)
    result = authorize(served, store, merchant="cafe")

    assert result.merchant == "cafe" and result.scopes == (api.SCOPE_STORE,)
    assert list(result.store_ids) == sb.store_ids()
    assert sb.grant_requests["authorization_code"] == 1
    [grant] = store.grants()
    assert (grant.grant_type, grant.label, grant.has_refresh_token) == ("authorization_code", "cafe", True)
    assert list(grant.store_ids) == sb.store_ids() and grant.rotations == 0
    assert 4 * 86400 - 60 < (grant.refresh_expires_at - grant.authorized_at).total_seconds() <= 4 * 86400

    # the stores asset's client, configured for the merchant grant, reads the stores with it
    res = TaptouchResource(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        base_url=served,
        grant="authorization_code",
        merchant="cafe",
        requests_per_second=0,
    )
    client = res.get_store_client(token_store=TokenStore.for_resource(res, migrated_db))
    assert [s["id"] for s in client.list_stores()] == sb.store_ids()
    assert sb.grant_requests["client_credentials"] == 0 and sb.grant_requests["refresh_token"] == 0
    assert sb.token_is_valid(client.auth.get_token())


@pytest.mark.slow
def test_authorize_command_end_to_end(sb, served, migrated_db, capsys, monkeypatch):
    """``taptouch-sync authorize`` in its own process: it prints the URL, the browser follows it, the
    command catches the redirect, exchanges the code and stores the grant; ``tokens`` lists it."""
    done, browser = run_authorize_command(
        ["--merchant", "bakery", "--database-url", migrated_db],
        {"TAPTOUCH_CLIENT_ID": CLIENT_ID, "TAPTOUCH_CLIENT_SECRET": CLIENT_SECRET, "TAPTOUCH_BASE_URL": served},
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert "Authorized merchant 'bakery'" in out and "7101" in out
    assert browser.pages[-1].status_code == 200 and "Authorization received" in browser.pages[-1].text

    for k, v in {
        "TAPTOUCH_CLIENT_ID": CLIENT_ID,
        "TAPTOUCH_CLIENT_SECRET": CLIENT_SECRET,
        "TAPTOUCH_BASE_URL": served,
    }.items():
        monkeypatch.setenv(k, v)
    from pipelines.cli import main

    assert main(["tokens", "--database-url", migrated_db]) == 0
    listing = capsys.readouterr().out
    assert "merchant bakery" in listing and "integration.store" in listing
    assert not any(t in listing for t in sb._tokens) and not any(t in listing for t in sb._refresh_tokens)


# ---------------------------------------------------------------------------------------- failures
def test_forged_state_is_ignored_and_the_flow_waits_until_its_timeout(sb, served, migrated_db):
    """Any local process or web page can reach the loopback callback: a request with another state
    (here: the only one that arrives) must not decide the authorization, not even fail it."""

    def forge(location: str) -> str:
        return re.sub(r"state=[^&]+", "state=forged", location)

    browser = Browser(tamper=forge)
    with pytest.raises(
        AuthorizationFailed, match=r"within 2 s \(1 request\(s\) with another state were ignored"
    ) as exc:
        authorize(served, make_store(migrated_db), browser=browser, timeout=1.5)
    assert exc.value.error == "timeout"
    assert browser.pages[-1].status_code == 400 and "ignored" in browser.pages[-1].text
    assert sb.grant_requests["authorization_code"] == 0  # the code was never exchanged
    assert stored_rows(migrated_db) == 0


def test_forged_redirects_before_the_real_one_do_not_abort_it(sb, served, migrated_db):
    """A forged denial and a forged code reach the callback first; the real redirect still completes."""
    forged: list[httpx.Response] = []

    def forge_first(location: str) -> str:
        callback = location.split("?", 1)[0]
        with httpx.Client(timeout=5) as http:
            forged.append(http.get(callback + "?error=access_denied&state=forged"))
            forged.append(http.get(callback + "?code=attacker-code&state=" + "x" * 32))
            forged.append(http.get(callback + "?code=attacker-code"))  # no state at all
        return location

    result = authorize(served, make_store(migrated_db), browser=Browser(tamper=forge_first))
    assert [r.status_code for r in forged] == [400, 400, 400]
    assert result.merchant == "cafe" and stored_rows(migrated_db) == 1
    assert sb.grant_requests["authorization_code"] == 1  # only the real code was exchanged


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://sync.example.com/taptouch/callback",
        "http://evil.localhost:8765/callback",
        "http://127.0.0.1.nip.io:8765/callback",
    ],
)
def test_a_non_loopback_redirect_uri_must_be_https(sb, served, migrated_db, redirect_uri):
    with pytest.raises(TaptouchConfigError, match="https://"):
        authorize_module.run_authorize(
            base_url=served,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            store=make_store(migrated_db),
            merchant="cafe",
            redirect_uri=redirect_uri,
            announce=lambda text: None,
            read_redirect=lambda: "",
        )
    assert sb.grant_requests["authorization_code"] == 0 and stored_rows(migrated_db) == 0


def test_the_loopback_callback_accepts_only_literal_loopback_hosts():
    for uri in ["http://evil.localhost:0/callback", "http://localhost.example.com:0/cb", "http://10.0.0.1:0/cb"]:
        with pytest.raises(TaptouchConfigError, match="not a loopback"):
            authorize_module.CallbackServer(uri)
    with authorize_module.CallbackServer("http://localhost:0/callback") as server:
        assert server.redirect_uri.startswith("http://localhost:")


def test_pasted_redirect_with_another_state_is_refused(sb, served, migrated_db):
    """A deployed (https) callback: the pasted URL is checked too; a mismatch stores nothing."""
    sb.registered_redirect_uris = ("https://sync.example.com/taptouch/callback",)
    with pytest.raises(AuthorizationFailed, match="state does not match") as exc:
        authorize_module.run_authorize(
            base_url=served,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            store=make_store(migrated_db),
            merchant="deployed",
            redirect_uri="https://sync.example.com/taptouch/callback",
            announce=lambda text: None,
            read_redirect=lambda: "https://sync.example.com/taptouch/callback?code=abc&state=forged",
        )
    assert exc.value.error == "state_mismatch" and stored_rows(migrated_db) == 0


def test_pkce_verifier_mismatch_is_rejected_and_nothing_stored(sb, served, migrated_db, monkeypatch):
    # the challenge sent to /authorize is not the one of the verifier sent to /token (an injected code)
    monkeypatch.setattr(authorize_module, "pkce_pair", lambda: (pkce_pair()[0], s256("another verifier" * 4)))
    with pytest.raises(AuthorizationFailed, match="PKCE verification failed"):
        authorize(served, make_store(migrated_db))
    assert sb.grant_requests["authorization_code"] == 1
    assert sb.merchant_grants() == [] and stored_rows(migrated_db) == 0


def test_merchant_denies_access(sb, served, migrated_db):
    sb.consent = "deny"
    browser = Browser()
    with pytest.raises(AuthorizationFailed, match="merchant denied access") as exc:
        authorize(served, make_store(migrated_db), browser=browser)
    assert exc.value.error == "access_denied"
    redirect = urlsplit(str(browser.pages[-1].request.url))
    assert parse_qs(redirect.query)["error"] == ["access_denied"] and "state" in parse_qs(redirect.query)
    assert "Authorization not completed" in browser.pages[-1].text
    assert sb.grant_requests["authorization_code"] == 0 and stored_rows(migrated_db) == 0


def test_no_redirect_times_out_clearly(served, migrated_db):
    with pytest.raises(AuthorizationFailed, match=r"No authorization arrived .* within 1 s") as exc:
        authorize_module.run_authorize(  # nobody opens the URL
            base_url=served,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            store=make_store(migrated_db),
            merchant="cafe",
            port=0,
            timeout=0.6,
            announce=lambda text: None,
        )
    assert exc.value.error == "timeout" and stored_rows(migrated_db) == 0


def test_deployed_callback_reads_the_pasted_redirect(sb, served, migrated_db):
    """A non-loopback redirect URI: the command prints the URL and reads the URL the merchant landed on."""
    sb.registered_redirect_uris = ("https://sync.example.com/taptouch/callback",)
    shown: list[str] = []

    def pasted() -> str:
        url = re.search(r"https?://\S+/auth/v2/authorize\?\S+", shown[0]).group(0)
        return httpx.get(url).headers["location"]  # https://sync.example.com/taptouch/callback?code=..&state=..

    result = authorize_module.run_authorize(
        base_url=served,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        store=make_store(migrated_db),
        merchant="deployed",
        redirect_uri="https://sync.example.com/taptouch/callback",
        announce=shown.append,
        read_redirect=pasted,
    )
    assert result.merchant == "deployed" and stored_rows(migrated_db) == 1


# ---------------------------------------------------------------------------------------- the sandbox
def _code(c: httpx.Client, verifier: str, *, redirect: str = "http://127.0.0.1:9/callback", **extra) -> httpx.Response:
    query = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "scope": "integration.store",
        "state": "s1",
        "redirect_uri": redirect,
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        **extra,
    }
    return c.get("/auth/v2/authorize?" + urlencode(query))


def _token(c: httpx.Client, **form) -> httpx.Response:
    return c.post("/auth/v2/token", data={"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **form})


def test_sandbox_authorization_code_and_refresh_grants():
    now = [1_800_000_000.0]
    sb = Sandbox(SandboxConfig(stores=1, days=1, end_date=date(2026, 11, 2)), clock=lambda: now[0])
    with httpx.Client(transport=sb.transport(), base_url="http://sandbox") as c:
        verifier = "v" * 50
        r = _code(c, verifier)
        assert r.status_code == 302
        back = parse_qs(urlsplit(r.headers["location"]).query)
        assert back["state"] == ["s1"] and r.headers["location"].startswith("http://127.0.0.1:9/callback?")
        code = back["code"][0]
        assert (
            _token(
                c,
                grant_type="authorization_code",
                code=code,
                redirect_uri="http://127.0.0.1:9/other",
                code_verifier=verifier,
            ).json()["error"]
            == "invalid_grant"
        )
        pair = _token(
            c,
            grant_type="authorization_code",
            code=code,
            redirect_uri="http://127.0.0.1:9/callback",
            code_verifier=verifier,
        ).json()
        assert pair["scope"] == "integration.store" and pair["expires_in"] == 172800 and pair["refresh_token"]
        again = _token(
            c,
            grant_type="authorization_code",
            code=code,
            redirect_uri="http://127.0.0.1:9/callback",
            code_verifier=verifier,
        )
        assert again.json()["error"] == "invalid_grant" and "already used" in again.json()["error_description"]
        assert not sb.token_is_valid(pair["access_token"])  # a replayed code revokes what it gave

        # a fresh grant: single-use refresh tokens, 4 days on the sandbox clock
        code = parse_qs(urlsplit(_code(c, verifier).headers["location"]).query)["code"][0]
        first = _token(
            c,
            grant_type="authorization_code",
            code=code,
            redirect_uri="http://127.0.0.1:9/callback",
            code_verifier=verifier,
        ).json()
        now[0] += 4 * 86400 - 10
        second = _token(c, grant_type="refresh_token", refresh_token=first["refresh_token"]).json()
        assert second["refresh_token"] != first["refresh_token"] and sb.token_is_valid(second["access_token"])
        now[0] += 4 * 86400
        expired = _token(c, grant_type="refresh_token", refresh_token=second["refresh_token"]).json()
        assert expired["error"] == "invalid_grant" and "expired" in expired["error_description"]

        # reuse of a rotated refresh token revokes the grant (its newest tokens too)
        code = parse_qs(urlsplit(_code(c, verifier).headers["location"]).query)["code"][0]
        a = _token(
            c,
            grant_type="authorization_code",
            code=code,
            redirect_uri="http://127.0.0.1:9/callback",
            code_verifier=verifier,
        ).json()
        b = _token(c, grant_type="refresh_token", refresh_token=a["refresh_token"]).json()
        assert (
            _token(c, grant_type="refresh_token", refresh_token=a["refresh_token"]).json()["error"] == "invalid_grant"
        )
        assert not sb.token_is_valid(b["access_token"])
        assert (
            _token(c, grant_type="refresh_token", refresh_token=b["refresh_token"]).json()["error"] == "invalid_grant"
        )
        assert sb.grant_requests["refresh_token"] == 5


def test_sandbox_authorize_refusals():
    sb = Sandbox(SandboxConfig(stores=1, days=1, end_date=date(2026, 11, 2)))
    with httpx.Client(transport=sb.transport(), base_url="http://sandbox") as c:
        assert _code(c, "v" * 50, redirect="https://evil.example.com/cb").status_code == 400  # never redirected
        assert _code(c, "v" * 50, client_id="someone-else").status_code == 400
        for extra, error in [
            ({"scope": "integration.order"}, "invalid_scope"),
            ({"response_type": "token"}, "unsupported_response_type"),
            ({"code_challenge_method": "plain"}, "invalid_request"),
        ]:
            r = _code(c, "v" * 50, **extra)
            assert r.status_code == 302 and parse_qs(urlsplit(r.headers["location"]).query)["error"] == [error]


def test_revoked_grant_asks_to_authorize_again(sb, served, migrated_db):
    store = make_store(migrated_db)
    authorize(served, store, merchant="cafe")
    auth = merchant_auth(store, base_url=served, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, merchant="cafe")
    res = TaptouchResource(
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        base_url=served,
        grant="authorization_code",
        merchant="cafe",
        requests_per_second=0,
    )
    client = res.get_store_client(token_store=TokenStore.for_resource(res, migrated_db))
    assert len(list(client.list_stores())) == 2
    sb.revoke_grant()
    with pytest.raises(ReauthorizationRequired, match="taptouch-sync authorize --merchant cafe"):
        list(client.list_stores())  # 401 -> refresh once -> invalid_grant
    with pytest.raises(ReauthorizationRequired, match="authorize --merchant cafe"):
        auth.get_token()  # every process: the row says so, without asking Taptouch again
    assert sb.grant_requests["refresh_token"] == 1
    [grant] = store.grants()
    assert not grant.has_refresh_token and "revoked" in grant.last_error


# ----------------------------------------------------------------------------- the CLI's own faces
def _cli_env(monkeypatch, served=None):
    for k, v in {"TAPTOUCH_CLIENT_ID": CLIENT_ID, "TAPTOUCH_CLIENT_SECRET": CLIENT_SECRET}.items():
        monkeypatch.setenv(k, v)
    if served:
        monkeypatch.setenv("TAPTOUCH_BASE_URL", served)


@pytest.mark.parametrize("stop", [EOFError, KeyboardInterrupt])
def test_authorize_cancelled_at_the_prompt_says_so_without_a_traceback(served, migrated_db, monkeypatch, capsys, stop):
    """Input closed (`< /dev/null`) or Ctrl-C while the command waits for the pasted redirect."""
    from pipelines import authorize
    from pipelines.cli import main

    _cli_env(monkeypatch, served)

    def cancelled(*args, **kwargs):
        raise stop

    monkeypatch.setattr(authorize, "run_authorize", cancelled)
    code = main(
        ["authorize", "--merchant", "x", "--redirect-uri", "https://example.com/cb", "--database-url", migrated_db]
    )
    err = capsys.readouterr().err
    assert code == 1 and "the authorization was cancelled" in err and "nothing stored" in err
    assert "Traceback" not in err


def test_the_token_commands_exit_2_without_credentials(migrated_db, monkeypatch, capsys):
    """The documented contract: 2 is a configuration error (refresh and authorize said 1)."""
    from pipelines.cli import main

    for k in ("TAPTOUCH_CLIENT_ID", "TAPTOUCH_CLIENT_SECRET"):
        monkeypatch.delenv(k, raising=False)
    for command in (["tokens"], ["refresh"], ["authorize", "--merchant", "x"]):
        assert main([*command, "--database-url", migrated_db]) == 2, command
        assert "TAPTOUCH_CLIENT_ID is not set" in capsys.readouterr().err


def test_listing_tokens_never_migrates_a_database(database_url, monkeypatch, capsys):
    """`tokens` only reads: on an unmigrated database it says to migrate, and creates nothing."""
    from pipelines.cli import main

    _cli_env(monkeypatch)
    assert main(["tokens", "--database-url", database_url]) == 2
    assert "run taptouch-sync migrate first" in capsys.readouterr().err
    with psycopg.connect(database_url) as conn:
        schemas = conn.execute("select count(*) from pg_namespace where nspname like 'taptouch%'").fetchone()[0]
    assert schemas == 0
