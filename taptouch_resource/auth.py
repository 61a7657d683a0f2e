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
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator

import httpx

from . import api, jsonutil
from .errors import TaptouchAPIError, TaptouchAuthError, TaptouchProtocolError
from .retry import RETRY_STATUSES, Backoff, ClientStats, parse_retry_after

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
                token = self._token = self._fetch()
            return token.access_token

    def invalidate(self, access_token: str) -> None:
        """Forget ``access_token`` (after a 401) unless another thread already replaced it."""
        with self._lock:
            if self._token is not None and self._token.access_token == access_token:
                self._token = None

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
    def _fetch(self) -> Token:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._secret,
            "scope": " ".join(self.scopes),
        }
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
                    return self._parse(response, started)
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

    def _parse(self, response: httpx.Response, started: float) -> Token:
        try:
            doc = jsonutil.loads(response.content)
            access = doc["access_token"]
            lifetime = float(doc.get("expires_in") or 3600)
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
        return Token(access, started + lifetime, lifetime, granted_scopes)

    def _raise(self, response: httpx.Response) -> None:
        error, description = describe_token_error(response.status_code, response.content)
        description = description.replace(self._secret, "***")[:300]  # a server could echo the form
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

    def close(self) -> None:
        self._http.close()
