"""A merchant connects their stores: the OAuth 2.0 authorization-code flow with PKCE (RFC 6749 4.1,
RFC 7636, RFC 8252 for the loopback redirect).

:func:`run_authorize` sends the merchant to Taptouch's authorize URL, takes the redirect (a loopback
callback, or the URL pasted from a deployed one), checks ``state``, exchanges the code and stores
the grant in the :class:`TokenStore`; anything else raises :class:`AuthorizationFailed` and stores
nothing. :func:`keep_merchants_alive` refreshes stored grants well inside their refresh tokens'
4-day validity. The flow as a user runs it: docs/authorization.md.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import logging
import queue
import secrets
import threading
import time
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import psycopg

from taptouch_resource import api
from taptouch_resource.auth import MerchantAuth, ReauthorizationRequired, reauthorize_command
from taptouch_resource.client import TaptouchClient, is_loopback
from taptouch_resource.errors import TaptouchAuthError, TaptouchConfigError, TaptouchError
from taptouch_resource.tokens import GRANT_AUTHORIZATION_CODE, GrantKey, TokenResponse

from .warehouse.token_store import KEEPALIVE_MIN_REMAINING, TokenStore

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
CALLBACK_PATH = "/callback"
DEFAULT_TIMEOUT = 300.0


class AuthorizationFailed(TaptouchAuthError):
    """The authorization did not complete (denied, state mismatch, refused code, timeout); nothing stored."""


# -------------------------------------------------------------------------------------------- PKCE
def pkce_pair() -> tuple[str, str]:
    """(code_verifier, code_challenge) for ``code_challenge_method=S256`` (RFC 7636 4.1, 4.2)."""
    verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]
    return verifier, s256(verifier)


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


def authorize_url(
    base_url: str, *, client_id: str, scopes: Sequence[str], state: str, redirect_uri: str, code_challenge: str
) -> str:
    query = urlencode(
        {
            "response_type": "code",
            "client_id": client_id,
            "scope": " ".join(scopes),
            "state": state,
            "redirect_uri": redirect_uri,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
    )
    return f"{base_url.rstrip('/')}{api.AUTHORIZE_PATH}?{query}"


# -------------------------------------------------------------------------------------------- callback
_PAGE = (
    "<!doctype html><html><head><meta charset='utf-8'><title>taptouch-sync</title></head>"
    "<body style='font-family:sans-serif;margin:3em'><h1>{title}</h1><p>{text}</p></body></html>"
)


class _CallbackHandler(BaseHTTPRequestHandler):
    """Answers a request to the callback server; a redirect with the right state is handed over."""

    server: _CallbackHTTPServer

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        owner = self.server.owner
        split = urlsplit(self.path)
        if split.path != owner.callback_path:
            self._page(404, "Not found", "This is the taptouch-sync authorization callback.")
            return
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        expected = owner.state
        if expected is not None and not hmac.compare_digest((params.get("state") or "").encode(), expected.encode()):
            owner.ignored += 1
            self._page(
                400,
                "Not this authorization",
                "This redirect does not belong to the authorization taptouch-sync is waiting "
                "for (its state does not match); it was ignored.",
            )
            return
        if "error" in params:
            self._page(
                200,
                "Authorization not completed",
                "Taptouch did not authorize taptouch-sync. Return to your terminal for details.",
            )
        else:
            self._page(200, "Authorization received", "You can close this tab and return to your terminal.")
        owner._answers.put(params)

    def _page(self, status: int, title: str, text: str) -> None:
        body = _PAGE.format(title=title, text=text).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the query holds the code: never log it
        pass


class _CallbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: CallbackServer):
        self.owner = owner
        super().__init__(address, _CallbackHandler)


class CallbackServer:
    """A one-shot HTTP server on a loopback address that catches the authorization redirect.

    With ``state`` set, a request whose ``state`` does not match is answered 400 and ignored: any
    local process or web page can reach a loopback port, so the first request must not decide the
    authorization. The server keeps waiting for the real redirect until the timeout."""

    def __init__(self, redirect_uri: str | None = None, *, port: int = DEFAULT_PORT, state: str | None = None):
        if redirect_uri is None:
            host, path = "127.0.0.1", CALLBACK_PATH
        else:
            parts = urlsplit(redirect_uri)
            if parts.scheme != "http" or not parts.hostname or not is_loopback(parts.hostname):
                raise TaptouchConfigError(f"{redirect_uri!r} is not a loopback http:// redirect URI.")
            host, port, path = parts.hostname, parts.port or 80, parts.path or "/"
        self._answers: queue.Queue[dict[str, str]] = queue.Queue()
        self.state = state
        self.ignored = 0
        self.callback_path = path
        try:
            self._server = _CallbackHTTPServer((host, port), self)
        except OSError as exc:
            raise TaptouchConfigError(
                f"Cannot listen on {host}:{port} for the authorization callback ({exc.strerror}). "
                f"Pass another --port (it must match a redirect URI registered with Taptouch)."
            ) from None
        bound_port = self._server.server_address[1]
        self.redirect_uri = redirect_uri or f"http://{host}:{bound_port}{path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="taptouch-authorize-callback",
            daemon=True,
        )

    def __enter__(self) -> CallbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def wait(self, timeout: float) -> dict[str, str]:
        """The query parameters of the first redirect; :class:`AuthorizationFailed` after ``timeout``."""
        try:
            return self._answers.get(timeout=timeout)
        except queue.Empty:
            ignored = (
                f" ({self.ignored} request(s) with another state were ignored: an old tab, or another "
                f"program trying to interfere)"
                if self.ignored
                else ""
            )
            raise AuthorizationFailed(
                f"No authorization arrived at {self.redirect_uri} within {timeout:.0f} s{ignored}. Open the URL "
                f"printed above in a browser on this machine and approve, or run the command again (--timeout "
                f"to wait longer).",
                error="timeout",
            ) from None


def _params_from_url(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url.strip()).query, keep_blank_values=True).items()}


def check_redirect(params: dict[str, str], *, state: str) -> str:
    """The authorization code from the redirect's parameters, after checking ``state`` and errors."""
    if "error" in params:
        error = params["error"]
        description = params.get("error_description", "")[:300]
        if error == "access_denied":
            raise AuthorizationFailed(
                f"The merchant denied access (access_denied{': ' + description if description else ''}). "
                f"Nothing was stored; run the command again to retry.",
                error=error,
            )
        raise AuthorizationFailed(
            f"Taptouch refused the authorization request: {error}"
            f"{': ' + description if description else ''}. Nothing was stored.",
            error=error,
        )
    received = params.get("state") or ""
    if not hmac.compare_digest(received.encode(), state.encode()):
        raise AuthorizationFailed(
            "The redirect's state does not match this authorization request (an old or forged redirect). "
            "Nothing was stored; run the command again.",
            error="state_mismatch",
        )
    code = params.get("code")
    if not code:
        raise AuthorizationFailed("The redirect carries no authorization code. Nothing was stored.", error="no_code")
    return code


# -------------------------------------------------------------------------------------------- the flow
@dataclass(frozen=True)
class AuthorizeResult:
    merchant: str
    scopes: tuple[str, ...]
    store_ids: tuple[int, ...]
    access_expires_in: float


def merchant_auth(
    store: TokenStore,
    *,
    base_url: str,
    client_id: str,
    client_secret: str,
    merchant: str,
    scopes: Sequence[str] = (api.SCOPE_STORE,),
    transport: httpx.BaseTransport | None = None,
    **kwargs: Any,
) -> MerchantAuth:
    return MerchantAuth(
        client_id=client_id,
        client_secret=client_secret,
        token_url=base_url.rstrip("/") + api.TOKEN_PATH,
        scopes=tuple(scopes),
        store=store,
        merchant=merchant,
        transport=transport,
        **kwargs,
    )


def run_authorize(
    *,
    base_url: str,
    client_id: str,
    client_secret: str,
    store: TokenStore,
    merchant: str,
    scopes: Sequence[str] = (api.SCOPE_STORE,),
    redirect_uri: str | None = None,
    port: int = DEFAULT_PORT,
    timeout: float = DEFAULT_TIMEOUT,
    open_browser: bool = False,
    announce: Callable[[str], None] = print,
    read_redirect: Callable[[], str] | None = None,
    transport: httpx.BaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> AuthorizeResult:
    """The whole flow; see the module docstring. ``read_redirect`` returns the URL the merchant was
    redirected to, for a redirect URI that is not a loopback address (default: ask on stdin)."""
    GrantKey.merchant(base_url, client_id, merchant)  # an empty label fails before the merchant's work
    auth = merchant_auth(
        store,
        base_url=base_url,
        client_id=client_id,
        client_secret=client_secret,
        merchant=merchant,
        scopes=scopes,
        transport=transport,
    )
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(24)
    loopback = redirect_uri is None or is_loopback(urlsplit(redirect_uri).hostname or "")
    if redirect_uri is not None and not loopback and urlsplit(redirect_uri).scheme != "https":
        raise TaptouchConfigError(
            f"The redirect URI {redirect_uri!r} is neither a loopback address (http://127.0.0.1:PORT/..., "
            f"http://localhost:PORT/...) nor https://: the authorization code would travel unencrypted. "
            f"Register and pass an https:// URI."
        )
    url_for = functools.partial(
        authorize_url, base_url, client_id=client_id, scopes=scopes, state=state, code_challenge=challenge
    )
    try:
        if redirect_uri is None or loopback:
            params, used_uri = _catch_redirect(url_for, redirect_uri, port, state, timeout, announce, open_browser)
        else:
            used_uri = redirect_uri
            _show(url_for(redirect_uri=used_uri), announce, open_browser)
            announce(f"After approving, paste the full URL you were redirected to ({used_uri}?code=...):")
            params = _params_from_url((read_redirect or input)())
        code = check_redirect(params, state=state)
        issued = clock()
        answer = exchange_code(auth, code=code, redirect_uri=used_uri, code_verifier=verifier)
        key = auth.store_key
        store.save_authorization(key, answer, issued=issued)
        store_ids = _list_store_ids(auth, base_url, client_id, client_secret, transport)
        store.set_store_ids(key, store_ids)
        return AuthorizeResult(merchant, answer.scopes, tuple(store_ids), answer.lifetime)
    finally:
        auth.close()


def _catch_redirect(
    url_for: Callable[..., str],
    redirect_uri: str | None,
    port: int,
    state: str,
    timeout: float,
    announce: Callable[[str], None],
    open_browser: bool,
) -> tuple[dict[str, str], str]:
    """Show the authorization URL and catch its redirect on a loopback callback server: the
    redirect's query parameters and the redirect URI the code was issued for."""
    with CallbackServer(redirect_uri, port=port, state=state) as server:
        _show(url_for(redirect_uri=server.redirect_uri), announce, open_browser)
        return server.wait(timeout), server.redirect_uri


def _show(url: str, announce: Callable[[str], None], open_browser: bool) -> None:
    announce(f"Ask the merchant to open this URL and approve access:\n\n  {url}\n")
    if open_browser:
        with contextlib.suppress(webbrowser.Error):
            webbrowser.open(url)


def exchange_code(auth: MerchantAuth, *, code: str, redirect_uri: str, code_verifier: str) -> TokenResponse:
    """The authorization_code grant; a refused code is :class:`AuthorizationFailed`."""
    try:
        return auth.exchange_code(code=code, redirect_uri=redirect_uri, code_verifier=code_verifier)
    except ReauthorizationRequired as exc:  # invalid_grant on a code: expired, reused, PKCE mismatch
        raise AuthorizationFailed(
            f"Taptouch refused the authorization code ({exc.description or exc.error}). Nothing was stored; run the "
            f"command again.",
            status=exc.status,
            error=exc.error,
        ) from None


def _list_store_ids(
    auth: MerchantAuth, base_url: str, client_id: str, client_secret: str, transport: httpx.BaseTransport | None
) -> list[int]:
    """The ids of the stores the new grant may read (best effort: a failure is logged, not fatal)."""
    try:
        with TaptouchClient(
            client_id=client_id,
            client_secret=client_secret,
            base_url=base_url,
            auth=auth,
            transport=transport,
            requests_per_second=None,
            max_retries=2,
        ) as client:
            return [int(s[api.STORE_ID_FIELD]) for s in client.list_stores()]
    except (TaptouchError, KeyError, TypeError, ValueError) as exc:
        log.warning("Stored the authorization, but could not list the merchant's stores: %s", exc)
        return []


# -------------------------------------------------------------------------------------------- keep-alive
@dataclass(frozen=True)
class KeepAliveResult:
    merchant: str
    rotated: bool
    error: str | None = None


def keep_merchants_alive(
    store: TokenStore,
    *,
    base_url: str,
    client_id: str,
    client_secret: str,
    min_remaining: float = KEEPALIVE_MIN_REMAINING,
    transport: httpx.BaseTransport | None = None,
) -> list[KeepAliveResult]:
    """Rotate every stored merchant grant of this client whose refresh token has less than
    ``min_remaining`` seconds left. A grant that fails (must be authorized again, cannot be decrypted,
    a bad answer) is reported in its result and logged, not raised: the others are still rotated."""
    base_url = base_url.rstrip("/")
    results = []
    for grant in store.grants(base_url=base_url, client_id=client_id):
        if grant.grant_type != GRANT_AUTHORIZATION_CODE:
            continue
        auth = merchant_auth(
            store,
            base_url=base_url,
            client_id=client_id,
            client_secret=client_secret,
            merchant=grant.label,
            scopes=grant.scopes,
            transport=transport,
        )
        try:
            rotated = store.keep_alive(auth.store_key, refresh=auth.refresh_with, min_remaining=min_remaining)
            results.append(KeepAliveResult(grant.label, rotated))
        except TaptouchError as exc:  # reauthorize, unreadable (another key), a bad answer: report, go on
            log.warning("merchant %s: %s", grant.label, exc)
            results.append(KeepAliveResult(grant.label, False, str(exc)))
        except psycopg.Error as exc:  # already redacted by the store
            log.warning("merchant %s: the token store failed: %s", grant.label, exc)
            results.append(KeepAliveResult(grant.label, False, f"the token store failed ({type(exc).__name__}: {exc})"))
        finally:
            auth.close()
    return results


__all__ = [
    "AuthorizationFailed",
    "AuthorizeResult",
    "CallbackServer",
    "KeepAliveResult",
    "authorize_url",
    "check_redirect",
    "exchange_code",
    "keep_merchants_alive",
    "merchant_auth",
    "pkce_pair",
    "reauthorize_command",
    "run_authorize",
    "s256",
]
