"""OAuth 2.0 client-credentials tokens for Taptouch, as an ``httpx.Auth``.

* Tokens are fetched from ``/auth/v2/token`` (form-encoded ``client_credentials`` grant), cached
  on the instance, and refreshed early: ``min(300 s, 10 % of the lifetime)`` before expiry, so
  short lifetimes work too.
* One fetch at a time: threads that need a token while another thread fetches one wait for it
  and reuse it (no stampede).
* On a 401 from the API the flow refreshes once and resends; a second 401 is returned to the
  caller, which raises :class:`TaptouchAuthError`.
* The token endpoint itself is retried on 429 (honouring ``Retry-After``), 5xx and network errors.
* Errors in RFC 6749 §5.2 form (``{"error": ..., "error_description": ...}``) and in the envelope
  form (``{"status": {"ack": 401, "errors": ...}}``) are both understood.
* A granted ``scope`` narrower than the requested one is an error naming the missing scopes.
* The client secret and tokens never appear in ``repr()``, logs or exception text.
* With a :class:`~taptouch_resource.token_store.TokenStore` (``store=``), tokens are shared by
  every process of a deployment through Postgres; the in-memory cache stays in front of it.
  :class:`MerchantAuth` serves a merchant's authorization-code grant from the store, rotating its
  single-use refresh token under a row lock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator

import httpx

from . import api, jsonutil
from .errors import TaptouchAPIError, TaptouchAuthError, TaptouchProtocolError
from .retry import RETRY_STATUSES, Backoff, ClientStats, parse_retry_after

if TYPE_CHECKING:
    from .token_store import GrantKey, StoredAccess, TokenStore

log = logging.getLogger(__name__)

ENV_HINT = "Check TAPTOUCH_CLIENT_ID and TAPTOUCH_CLIENT_SECRET (and TAPTOUCH_BASE_URL)."


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_at: float  # on the auth object's clock
    lifetime: float
    scopes: tuple[str, ...]

    def __repr__(self) -> str:  # never show the token itself
        return f"Token(scopes={self.scopes!r}, lifetime={self.lifetime})"


@dataclass(frozen=True)
class TokenResponse:
    """A successful token-endpoint answer (any grant)."""

    access_token: str
    lifetime: float  # expires_in, seconds
    scopes: tuple[str, ...]
    refresh_token: str | None = None
    refresh_lifetime: float | None = None  # seconds, when the server says; else the documented 4 days

    def __repr__(self) -> str:  # never show the tokens
        return (f"TokenResponse(scopes={self.scopes!r}, lifetime={self.lifetime}, "
                f"refresh_token={'***' if self.refresh_token else None})")


class ReauthorizationRequired(TaptouchAuthError):
    """The merchant's grant cannot be used any more (revoked, expired, refresh token reused or lost):
    the merchant must go through ``taptouch-sync authorize`` again."""

    def __init__(self, message: str, *, description: str = "", **kwargs: Any):
        super().__init__(message, **kwargs)
        self.description = description


def reauthorize_command(merchant: str) -> str:
    return f"taptouch-sync authorize --merchant {merchant}"


def refresh_margin(lifetime: float) -> float:
    """How long before expiry a token is replaced: min(300 s, 10 % of its lifetime)."""
    return min(300.0, 0.1 * lifetime)


def describe_token_error(status: int, body: bytes) -> tuple[str | None, str]:
    """(error code, description) from a token-endpoint error in RFC 6749 or envelope form."""
    try:
        doc = jsonutil.loads(body)
    except ValueError:
        return None, f"HTTP {status} with a non-JSON body"
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"], str(doc.get("error_description") or "")
    if isinstance(doc, dict) and isinstance(doc.get(api.ENVELOPE_STATUS), dict):
        errors = doc[api.ENVELOPE_STATUS].get(api.ENVELOPE_ERRORS)
        if isinstance(errors, dict):
            return (str(errors.get("code") or errors.get("error") or "") or None,
                    str(errors.get("message") or errors.get("error_description") or ""))
        if errors:
            return None, str(errors)
    return None, f"HTTP {status}"


class ClientCredentialsAuth(httpx.Auth):
    """``httpx.Auth`` that attaches a cached client-credentials bearer token to each request."""

    requires_response_body = False

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        token_url: str,
        scopes: tuple[str, ...] | list[str] = api.ALL_SCOPES,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float = 30.0,
        max_retries: int = 5,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        stats: ClientStats | None = None,
        verify: Any = True,
        store: "TokenStore | None" = None,
        wall_clock: Callable[[], float] = time.time,
    ):
        if not client_id or not client_id.strip():
            raise TaptouchAuthError("The Taptouch client id is empty. Set TAPTOUCH_CLIENT_ID.")
        if not client_secret or not client_secret.strip():
            raise TaptouchAuthError("The Taptouch client secret is empty. Set TAPTOUCH_CLIENT_SECRET.")
        self.client_id = client_id
        self._secret = client_secret
        self.token_url = token_url
        self.scopes = tuple(scopes)
        self._clock = clock
        self._sleep = sleep
        self._backoff = backoff or Backoff(max_retries=max_retries)
        self.stats = stats or ClientStats()
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._http = httpx.Client(transport=transport, timeout=timeout, verify=verify)
        self._store = store
        self._wall = wall_clock

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(client_id={self.client_id!r}, scopes={self.scopes!r}, secret=***)"

    # -- the cache -------------------------------------------------------------------------------
    def _valid(self, token: Token | None) -> bool:
        return token is not None and self._clock() < token.expires_at - refresh_margin(token.lifetime)

    def get_token(self) -> str:
        """A valid access token, fetching one if the cached token is missing or near expiry."""
        token = self._token
        if self._valid(token):
            return token.access_token
        with self._lock:
            token = self._token
            if not self._valid(token):  # another thread may have refreshed while we waited
                token = self._token = self._obtain()
            return token.access_token

    def invalidate(self, access_token: str) -> None:
        """Forget ``access_token`` (after a 401) unless another thread already replaced it."""
        with self._lock:
            if self._token is not None and self._token.access_token == access_token:
                self._token = None
            if self._store is not None:  # other processes must not reuse it either
                self._store.invalidate_access(self.store_key, access_token)

    # -- the shared store ------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return self.token_url.rsplit(api.TOKEN_PATH, 1)[0]

    @property
    def store_key(self) -> "GrantKey":
        from .token_store import GrantKey

        return GrantKey.client_credentials(self.base_url, self.client_id, self.scopes)

    def _obtain(self) -> Token:
        """A fresh token: from the shared store when there is one (fetched under its lock if the
        stored one is stale), else straight from the token endpoint."""
        if self._store is None:
            return self._fetch()
        from .token_store import TokenStoreError

        try:
            stored = self._store.client_credentials(self.store_key, fetch=lambda: self._request(self._form())[0])
        except TokenStoreError as exc:  # sharing is an optimisation for client credentials: go on alone
            log.warning("%s Fetching a token for this process only.", exc)
            return self._fetch()
        return self._from_stored(stored)

    def _from_stored(self, stored: "StoredAccess") -> Token:
        """The stored token with its wall-clock expiry moved onto this object's clock."""
        return Token(stored.access_token, self._clock() + (stored.expires_at - self._wall()),
                     stored.lifetime, stored.scopes)

    # -- httpx.Auth ------------------------------------------------------------------------------
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.get_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            self.stats.add(unauthorized=1)
            log.info("Taptouch answered 401: refreshing the access token once and resending")
            self.invalidate(token)
            request.headers["Authorization"] = f"Bearer {self.get_token()}"
            yield request

    # -- the token endpoint ----------------------------------------------------------------------
    def _form(self) -> dict[str, str]:
        return {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret,
            "scope": " ".join(self.scopes),
        }

    def _fetch(self) -> Token:
        response, started = self._request(self._form())
        return Token(response.access_token, started + response.lifetime, response.lifetime, response.scopes)

    def _request(self, form: dict[str, str]) -> tuple[TokenResponse, float]:
        """POST ``form`` to the token endpoint with retries; (answer, this clock at the last send)."""
        attempt = 0
        waited = 0.0
        while True:
            self.stats.add(token_requests=1)
            wait: float | None = None
            try:
                started = self._clock()
                response = self._http.post(self.token_url, data=form, headers={"Accept": "application/json"})
            except httpx.TransportError as exc:
                response = None
                what = f"network error ({type(exc).__name__})"
            else:
                if response.status_code == 200:
                    return self._parse(response), started
                if response.status_code not in RETRY_STATUSES:
                    self._raise(response)
                what = f"HTTP {response.status_code}"
                if response.status_code == 429:
                    wait = parse_retry_after(response.headers.get("Retry-After"))
            attempt += 1
            if attempt > self._backoff.max_retries or waited >= self._backoff.budget:
                raise TaptouchAPIError(
                    status=response.status_code if response is not None else 0, path=api.TOKEN_PATH,
                    message=f"could not get an access token: {what} after {attempt} attempts",
                    hint=f"check that TAPTOUCH_BASE_URL ({self.token_url.rsplit(api.TOKEN_PATH, 1)[0]}) is "
                         f"the Taptouch API and reachable; if it is, the token endpoint is down: try again later",
                )
            wait = wait if wait is not None else self._backoff.delay(attempt)
            waited += wait
            self.stats.add(retries=1)
            log.warning("Token endpoint: %s; retrying in %.2fs (attempt %d)", what, wait, attempt)
            self._sleep(wait)

    def _parse(self, response: httpx.Response) -> TokenResponse:
        try:
            doc = jsonutil.loads(response.content)
            access = doc["access_token"]
            lifetime = float(doc.get("expires_in") or 3600)
            refresh = doc.get("refresh_token")
            refresh_lifetime = doc.get("refresh_token_expires_in")
            refresh_lifetime = float(refresh_lifetime) if refresh_lifetime is not None else None
        except (ValueError, KeyError, TypeError):
            raise TaptouchProtocolError(
                f"The token endpoint {self.token_url} answered 200 without a usable access_token/expires_in."
            ) from None
        if not isinstance(access, str) or not access:
            raise TaptouchProtocolError("The token endpoint answered 200 with an empty access_token.")
        granted = doc.get("scope")
        granted_scopes = tuple(granted.split()) if isinstance(granted, str) else self.scopes
        missing = tuple(s for s in self.scopes if s not in granted_scopes)
        if missing:
            raise TaptouchAuthError(
                f"Taptouch granted only scope(s) {' '.join(granted_scopes) or '(none)'}; missing "
                f"{' '.join(missing)}. Ask Taptouch to enable them for client {self.client_id!r}, or "
                f"request fewer scopes.",
                missing_scopes=missing,
                error="insufficient_scope",
            )
        log.debug("Got a Taptouch access token for client %s, valid %.0fs", self.client_id, lifetime)
        return TokenResponse(access, lifetime, granted_scopes,
                             refresh if isinstance(refresh, str) and refresh else None, refresh_lifetime)

    def _raise(self, response: httpx.Response) -> None:
        error, description = describe_token_error(response.status_code, response.content)
        description = description.replace(self._secret, "***")[:300]  # a server could echo the form
        self._raise_grant_error(response.status_code, error, description)
        if error == "invalid_scope":
            raise TaptouchAuthError(
                f"Taptouch refused the requested scope(s) {' '.join(self.scopes)}: {description}. "
                f"Request only the scopes enabled for client {self.client_id!r}.",
                status=response.status_code, error=error, missing_scopes=self.scopes,
            )
        label = f"{error}: {description}" if error else description
        raise TaptouchAuthError(
            f"Taptouch rejected the client credentials for client {self.client_id!r} "
            f"(HTTP {response.status_code}, {label}). {ENV_HINT}",
            status=response.status_code, error=error,
        )

    def _raise_grant_error(self, status: int, error: str | None, description: str) -> None:
        """Hook for grants with their own errors (``MerchantAuth``: ``invalid_grant``)."""

    def close(self) -> None:
        self._http.close()


class MerchantAuth(ClientCredentialsAuth):
    """``httpx.Auth`` with a merchant's authorization-code grant, kept in a shared :class:`TokenStore`.

    The grant was stored by ``taptouch-sync authorize --merchant NAME``. Access tokens come from the
    store (in-memory cache in front); a stale one is replaced with the refresh-token grant under the
    row lock of the store, so concurrent processes never present the same single-use refresh token
    twice. A grant that can no longer be refreshed raises :class:`ReauthorizationRequired`, which
    names the command to run.
    """

    def __init__(self, *, merchant: str, store: "TokenStore", scopes: tuple[str, ...] | list[str] = (api.SCOPE_STORE,),
                 **kwargs: Any):
        if store is None:
            raise TaptouchAuthError("A merchant grant needs the token store (the warehouse database).")
        super().__init__(scopes=scopes, store=store, **kwargs)
        self.merchant = merchant

    def __repr__(self) -> str:
        return f"MerchantAuth(client_id={self.client_id!r}, merchant={self.merchant!r}, secret=***)"

    @property
    def store_key(self) -> "GrantKey":
        from .token_store import GrantKey

        return GrantKey.merchant(self.base_url, self.client_id, self.merchant)

    def _obtain(self) -> Token:
        return self._from_stored(self._store.merchant_access(self.store_key, refresh=self.refresh_with))

    def refresh_with(self, refresh_token: str) -> TokenResponse:
        """The refresh-token grant (one use of ``refresh_token``). Called by the store under its row lock."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                "client_id": self.client_id, "client_secret": self._secret}
        log.info("Refreshing the access token of merchant %s", self.merchant)
        return self._request(form)[0]

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> TokenResponse:
        """The authorization_code grant (``taptouch-sync authorize``); invalid_grant raises
        :class:`ReauthorizationRequired` with ``description`` set to Taptouch's reason."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": code_verifier, "client_id": self.client_id, "client_secret": self._secret}
        return self._request(form)[0]

    def _raise_grant_error(self, status: int, error: str | None, description: str) -> None:
        if error == "invalid_grant":
            raise ReauthorizationRequired(
                f"Taptouch refused the refresh token of merchant {self.merchant!r} ({description or error}): "
                f"the grant was revoked, expired (4 days without a refresh) or its refresh token was already "
                f"used. The merchant must authorize again: {reauthorize_command(self.merchant)}",
                status=status, error=error, description=description,
            )
