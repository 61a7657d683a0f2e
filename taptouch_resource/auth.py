"""OAuth 2.0 for Taptouch: :class:`TokenEndpoint` does the HTTP exchange of every grant (client
credentials, refresh token, authorization code); the ``httpx.Auth`` flows only attach its tokens and
refresh them: :class:`ClientCredentialsAuth`, and :class:`MerchantAuth` (a merchant's grant, kept in
the token store). Caching, retries, error forms and secrecy: docs/client.md, "Tokens".
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn, TypeGuard
from urllib.parse import urlsplit

import httpx

from . import api, jsonutil
from .errors import (
    TaptouchAPIError,
    TaptouchAuthError,
    TaptouchConfigError,
    TaptouchError,
    TaptouchProtocolError,
    ack_status,
    parse_error_body,
)
from .http import DEFAULT_DEADLINE, printable, redirect_target, send_bounded, tls_verification_failed
from .retry import RETRY_STATUSES, Backoff, ClientStats, Retryable, parse_retry_after, with_retries
from .tokens import (
    REFRESH_LIFETIME,
    GrantKey,
    StoredAccess,
    TokenPersistence,
    TokenResponse,
    TokenStoreError,
    refresh_margin,
)

log = logging.getLogger(__name__)

ENV_HINT = (
    "Check TAPTOUCH_CLIENT_ID and TAPTOUCH_CLIENT_SECRET (and TAPTOUCH_BASE_URL); for an account of "
    "TAPTOUCH_ACCOUNTS, its TAPTOUCH_<NAME>_CLIENT_ID, _CLIENT_SECRET (and _BASE_URL)."
)


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_at: float  # on the auth object's clock
    lifetime: float
    scopes: tuple[str, ...]

    def __repr__(self) -> str:  # never show the token itself
        return f"Token(scopes={self.scopes!r}, lifetime={self.lifetime})"


class ReauthorizationRequired(TaptouchAuthError):
    """The merchant's grant cannot be used any more (revoked, expired, refresh token reused or lost):
    the merchant must go through ``taptouch-sync authorize`` again."""

    def __init__(self, message: str, *, description: str = "", **kwargs: Any):
        super().__init__(message, **kwargs)
        self.description = description


def reauthorize_command(merchant: str, account: str | None = None) -> str:
    """The command that authorizes ``merchant`` again (``account``: a name of TAPTOUCH_ACCOUNTS)."""
    return f"taptouch-sync authorize{f' --account {account}' if account else ''} --merchant {merchant}"


def describe_token_error(status: int, body: bytes) -> tuple[str | None, str]:
    """(error code, description) from a token-endpoint error in RFC 6749 or envelope form."""
    parsed = parse_error_body(body)
    if not parsed.is_json:
        return None, f"HTTP {status} with a non-JSON body"
    return parsed.code, parsed.message or ("" if parsed.code else f"HTTP {status}")


_TOKEN_CHARS = r"A-Za-z0-9_\-"
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def redact_values(text: str, values: Iterable[str | None]) -> str:
    """``text`` with every occurrence of each of ``values`` as a whole value (not next to a
    letter, digit, ``_`` or ``-``) replaced by ``***``, longest first: a short secret such as
    ``abc`` masks ``secret abc.`` but not ``abcdef``."""
    for value in sorted({v for v in values if v}, key=len, reverse=True):
        text = re.sub(rf"(?<![{_TOKEN_CHARS}]){re.escape(value)}(?![{_TOKEN_CHARS}])", "***", text)
    return text


# What a token endpoint may say about lifetimes, in seconds. Anything outside is clamped into the
# range (a missing, non-numeric, NaN or infinite value takes the default), so a careless server can
# neither make every request fetch a token nor park a token past any date a store can hold.
ACCESS_LIFETIME_RANGE = (1.0, 7 * 86_400.0, 3600.0)  # (min, max, default): Taptouch documents 3600 s
REFRESH_LIFETIME_RANGE = (60.0, REFRESH_LIFETIME, REFRESH_LIFETIME)  # refresh tokens: 4 days [doc]


def parse_lifetime(value: Any, bounds: tuple[float, float, float], name: str, secrets: Iterable[str] = ()) -> float:
    """``expires_in``-style seconds clamped to ``bounds`` = (min, max, default); a value logged has
    ``secrets`` masked (the endpoint may echo the form)."""
    lo, hi, default = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        seconds = None
    else:
        try:
            seconds = float(value)
        except (ValueError, OverflowError):
            seconds = None
    if seconds is None or not math.isfinite(seconds):
        if value is not None:
            log.warning(
                "The token endpoint sent %s=%.40s; using %.0f s", name, redact_values(repr(value), secrets), default
            )
        return default
    clamped = min(max(seconds, lo), hi)
    if clamped != seconds:
        log.warning(
            "The token endpoint sent %s=%s; clamped to %.0f s (allowed %.0f..%.0f)", name, seconds, clamped, lo, hi
        )
    return clamped


MAX_TOKEN_ANSWER_BYTES = 1 * 2**20


class TokenEndpoint:
    """The OAuth token endpoint of one client: POSTs a grant's form, retried by the shared engine
    (429 honouring ``Retry-After``, 5xx, network errors), and reads the answer into a
    :class:`~taptouch_resource.tokens.TokenResponse` or a typed error whose text masks every secret.

    ``merchant``: the label of the merchant grant this endpoint serves, if any; Taptouch's
    ``invalid_grant`` then raises :class:`ReauthorizationRequired` naming the command to run.
    ``held_token``: the access token its auth flow holds now (masked in error text too).
    """

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scopes: tuple[str, ...],
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | float = 30.0,
        verify: Any = True,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        stats: ClientStats | None = None,
        deadline: float | None = DEFAULT_DEADLINE,
        merchant: str | None = None,
        held_token: Callable[[], str | None] = lambda: None,
    ):
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scopes = scopes
        self.merchant = merchant
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep
        self.stats = stats or ClientStats()
        self._deadline = deadline
        self._http = httpx.Client(
            transport=transport,
            timeout=timeout,
            verify=verify,
            # plain http is allowed to loopback only: never through a proxy the environment names
            trust_env=urlsplit(token_url).scheme.lower() != "http",
        )
        self._held_token = held_token

    def __repr__(self) -> str:
        return f"TokenEndpoint(token_url={self.token_url!r}, client_id={self.client_id!r}, secret=***)"

    @property
    def base_url(self) -> str:
        return self.token_url.rsplit(api.TOKEN_PATH, 1)[0]

    def secrets(self) -> list[str]:
        """What no text of this package may show: the client secret and the token the auth holds."""
        return [v for v in (self._secret, self._held_token()) if v]

    # -- the grants ------------------------------------------------------------------------------
    def client_credentials(self) -> tuple[TokenResponse, float]:
        """The client-credentials grant: (answer, this endpoint's clock at the send that succeeded)."""
        return self.request(
            {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self._secret,
                "scope": " ".join(self.scopes),
            }
        )

    def refresh(self, refresh_token: str) -> TokenResponse:
        """The refresh-token grant (one use of ``refresh_token``)."""
        return self.request(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": self.client_id,
                "client_secret": self._secret,
            }
        )[0]

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> TokenResponse:
        """The authorization_code grant (PKCE)."""
        return self.request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
                "client_id": self.client_id,
                "client_secret": self._secret,
            }
        )[0]

    def request(self, form: dict[str, str]) -> tuple[TokenResponse, float]:
        """POST ``form`` with the shared retry engine; (answer, this clock at the send that succeeded)."""
        return with_retries(
            lambda: self._attempt(form),
            what="token endpoint",
            backoff=self._backoff,
            stats=self.stats,
            sleep=self._sleep,
        )

    def close(self) -> None:
        self._http.close()

    # -- one exchange ----------------------------------------------------------------------------
    def _attempt(self, form: dict[str, str]) -> tuple[TokenResponse, float]:
        self.stats.add(token_requests=1)
        started = self._clock()
        response = self._post(form)
        if response.status_code == 200:
            response = _error_inside_200(response)
        if response.status_code == 200:
            return self._parse(response, form), started
        if 300 <= response.status_code < 400:
            raise TaptouchAPIError(
                status=response.status_code,
                path=api.TOKEN_PATH,
                message=f"the token endpoint answered with a redirect{redirect_target(response)}; not followed "
                f"(the client secret would travel with it)",
                hint="set TAPTOUCH_BASE_URL to the API's own address",
            )
        if response.status_code not in RETRY_STATUSES:
            self._raise(response, form)
        status = response.status_code
        wait = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        raise Retryable(
            f"HTTP {status}", self._unavailable(status, f"HTTP {status}"), wait=wait, rate_limited=status == 429
        )

    def _post(self, form: dict[str, str]) -> httpx.Response:
        try:
            return send_bounded(
                self._http,
                "POST",
                self.token_url,
                data=form,
                limit=MAX_TOKEN_ANSWER_BYTES,
                what=f"The token endpoint {self.token_url}",
                headers={"Accept": "application/json"},
                deadline=self._deadline,
            )
        except httpx.TransportError as exc:
            if tls_verification_failed(exc):
                raise TaptouchConfigError(
                    f"The TLS certificate of the token endpoint {self.token_url} could not be verified (retrying "
                    f"cannot cure that). Check TAPTOUCH_BASE_URL; to trust a private CA pass verify= a CA bundle."
                ) from None
            raise Retryable(f"network error ({type(exc).__name__})", self._unavailable(0, type(exc).__name__)) from None

    def _unavailable(self, status: int, what: str) -> TaptouchAPIError:
        return TaptouchAPIError(
            status=status,
            path=api.TOKEN_PATH,
            message=f"could not get an access token: {what}, retries exhausted",
            hint=f"check that TAPTOUCH_BASE_URL ({self.base_url}) is the Taptouch API and reachable; if it is, "
            f"the token endpoint is down: try again later",
        )

    def _parse(self, response: httpx.Response, form: dict[str, str] | None = None) -> TokenResponse:
        try:
            return self._parse_answer(response, form)
        except TaptouchError as exc:
            # The endpoint answered 200 but the answer is unusable. If it rotated the refresh token,
            # the old one is spent: hand the new one to the caller (the token store persists it),
            # so a bad answer never costs the merchant their grant.
            try:
                doc = jsonutil.loads(response.content)
                refresh = doc.get("refresh_token") if isinstance(doc, dict) else None
            except ValueError:
                refresh = None
            if isinstance(refresh, str) and refresh:
                exc.rotated_refresh_token = refresh  # type: ignore[attr-defined]
                exc.rotated_refresh_lifetime = parse_lifetime(  # type: ignore[attr-defined]
                    doc.get("refresh_token_expires_in"),
                    REFRESH_LIFETIME_RANGE,
                    "refresh_token_expires_in",
                    [*self._secrets(form), refresh],
                )
            raise

    def _parse_answer(self, response: httpx.Response, form: dict[str, str] | None = None) -> TokenResponse:
        try:
            doc = jsonutil.loads(response.content)
            access = doc["access_token"]
        except (ValueError, KeyError, TypeError):
            raise TaptouchProtocolError(
                f"The token endpoint {self.token_url} answered 200 without a usable access_token."
            ) from None
        # what an error about this answer must not quote: the form's secrets, and the answer's own tokens
        secrets = self._secrets(form) + [v for v in (access, doc.get("refresh_token")) if isinstance(v, str) and v]
        lifetime = parse_lifetime(doc.get("expires_in"), ACCESS_LIFETIME_RANGE, "expires_in", secrets)
        refresh = doc.get("refresh_token")
        refresh_lifetime = doc.get("refresh_token_expires_in")
        if refresh_lifetime is not None:
            refresh_lifetime = parse_lifetime(
                refresh_lifetime, REFRESH_LIFETIME_RANGE, "refresh_token_expires_in", secrets
            )
        _check_access_token(access, doc.get("token_type"), secrets)
        granted_scopes = self._granted_scopes(doc.get("scope"), secrets)
        log.debug("Got a Taptouch access token for client %s, valid %.0fs", self.client_id, lifetime)
        return TokenResponse(
            access,
            lifetime,
            granted_scopes,
            refresh if isinstance(refresh, str) and refresh else None,
            refresh_lifetime,
        )

    def _granted_scopes(self, granted: Any, secrets: Iterable[str] = ()) -> tuple[str, ...]:
        """The scopes an answer grants (all asked for when it does not say); fewer is an error."""
        if isinstance(granted, list) and all(isinstance(g, str) for g in granted):
            granted = " ".join(granted)
        granted_scopes = tuple(granted.split()) if isinstance(granted, str) else self.scopes
        # RFC 6749 3.3: a scope-token is printable ASCII without '"' or '\'. Anything else (a NUL, a
        # lone surrogate: valid JSON) is no scope this client asked for, and the token store could not
        # hold it: the write would fail after Taptouch rotated the refresh token, losing the grant.
        valid = tuple(s for s in granted_scopes if _SCOPE_TOKEN.fullmatch(s))
        if len(valid) != len(granted_scopes):
            log.warning(
                "The token endpoint granted %d scope(s) that are not RFC 6749 scope tokens; ignored",
                len(granted_scopes) - len(valid),
            )
            granted_scopes = valid
        missing = tuple(s for s in self.scopes if s not in granted_scopes)
        if missing:
            shown = redact_values(" ".join(granted_scopes), secrets)  # an echoing endpoint: no secret shown
            raise TaptouchAuthError(
                f"Taptouch granted only scope(s) {shown or '(none)'}; missing "
                f"{' '.join(missing)}. Ask Taptouch to enable them for client {self.client_id!r}, or "
                f"request fewer scopes.",
                missing_scopes=missing,
                error="insufficient_scope",
            )
        return granted_scopes

    def _secrets(self, form: dict[str, str] | None) -> list[str]:
        """Every secret value a token-endpoint answer could echo: the client secret, the form's
        refresh token, code and code verifier, and the access token the auth holds."""
        values = [*self.secrets()]
        values += [(form or {}).get(k, "") for k in ("refresh_token", "code", "code_verifier", "client_secret")]
        return [v for v in values if v]

    def _raise(self, response: httpx.Response, form: dict[str, str] | None = None) -> NoReturn:
        error, description = describe_token_error(response.status_code, response.content)
        secrets = self._secrets(form)  # a server could echo the form: whole values only are masked
        description = redact_values(description, secrets)[:300]
        error = redact_values(error, secrets) if error else error
        if error == "invalid_grant" and self.merchant is not None:
            raise ReauthorizationRequired(
                f"Taptouch refused the refresh token of merchant {self.merchant!r} ({description or error}): "
                f"the grant was revoked, expired (4 days without a refresh) or its refresh token was already "
                f"used. The merchant must authorize again: {reauthorize_command(self.merchant)}",
                status=response.status_code,
                error=error,
                description=description,
            )
        if error == "invalid_scope":
            raise TaptouchAuthError(
                f"Taptouch refused the requested scope(s) {' '.join(self.scopes)}: {description}. "
                f"Request only the scopes enabled for client {self.client_id!r}.",
                status=response.status_code,
                error=error,
                missing_scopes=self.scopes,
            )
        label = f"{error}: {description}" if error else description
        raise TaptouchAuthError(
            f"Taptouch rejected the client credentials for client {self.client_id!r} "
            f"(HTTP {response.status_code}, {label}). {ENV_HINT}",
            status=response.status_code,
            error=error,
        )


def _check_access_token(access: Any, token_type: Any, secrets: Iterable[str] = ()) -> None:
    """An access token usable as a Bearer header value, of type Bearer (or no type said)."""
    if not isinstance(access, str) or not access:
        raise TaptouchProtocolError("The token endpoint answered 200 with an empty access_token.")
    if not all("!" <= c <= "~" for c in access):  # it goes into an HTTP header: no spaces, CR/LF, non-ASCII
        raise TaptouchProtocolError(
            "The token endpoint answered 200 with an access_token that cannot be sent in an Authorization header "
            "(it holds spaces, control or non-ASCII characters); it is not used and not stored."
        )
    if token_type is not None and (not isinstance(token_type, str) or token_type.strip().lower() != "bearer"):
        shown = printable(redact_values(str(token_type), secrets), 20)
        raise TaptouchProtocolError(
            f"The token endpoint answered with token_type {shown!r}; this client speaks only Bearer tokens "
            f"(RFC 6750), and a token of another type must not be used as one (RFC 6749 §7.1)."
        )


class ClientCredentialsAuth(httpx.Auth):
    """``httpx.Auth`` that attaches a cached client-credentials bearer token to each request of an
    ``httpx.Client``, and on a 401 refreshes it once and resends. Tokens come from its
    :class:`TokenEndpoint` (``endpoint``), or through a shared
    :class:`~taptouch_resource.tokens.TokenPersistence` (``store=``). Fetching a token blocks (it
    has its own synchronous HTTP client, and may wait on a lock): with ``httpx.AsyncClient`` it
    refuses to run, rather than send requests without a token; there, call :meth:`get_token` (in a
    worker thread) and set the ``Authorization: Bearer`` header."""

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
        store: TokenPersistence | None = None,
        wall_clock: Callable[[], float] = time.time,
        deadline: float | None = DEFAULT_DEADLINE,
    ):
        if not client_id or not client_id.strip():
            raise TaptouchAuthError("The Taptouch client id is empty. Set TAPTOUCH_CLIENT_ID.")
        if not client_secret or not client_secret.strip():
            raise TaptouchAuthError("The Taptouch client secret is empty. Set TAPTOUCH_CLIENT_SECRET.")
        self.client_id = client_id
        self.token_url = token_url
        self.scopes = tuple(scopes)
        self.stats = stats or ClientStats()
        self.endpoint = TokenEndpoint(
            token_url=token_url,
            client_id=client_id,
            client_secret=client_secret,
            scopes=self.scopes,
            transport=transport,
            timeout=timeout,
            verify=verify,
            backoff=backoff or Backoff(max_retries=max_retries),
            clock=clock,
            sleep=sleep,
            stats=self.stats,
            deadline=deadline,
            held_token=self._held_access,
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._token: Token | None = None
        self._store = store
        self._wall = wall_clock

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(client_id={self.client_id!r}, scopes={self.scopes!r}, secret=***)"

    def _held_access(self) -> str | None:
        token = self._token
        return token.access_token if token is not None else None

    def held_secrets(self) -> list[str]:
        """The client secret and the access token held now: what no error text may show."""
        return self.endpoint.secrets()

    # -- the cache -------------------------------------------------------------------------------
    def _valid(self, token: Token | None) -> TypeGuard[Token]:
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
        return self.endpoint.base_url

    @property
    def store_key(self) -> GrantKey:
        return GrantKey.client_credentials(self.base_url, self.client_id, self.scopes)

    def _obtain(self) -> Token:
        """A fresh token: from the shared store when there is one (fetched under its lock if the
        stored one is stale), else straight from the token endpoint."""
        if self._store is None:
            return self._fetch()
        try:
            stored = self._store.client_credentials(self.store_key, fetch=lambda: self.endpoint.client_credentials()[0])
        except TokenStoreError as exc:  # sharing is an optimisation for client credentials: go on alone
            log.warning("%s Fetching a token for this process only.", exc)
            return self._fetch()
        return self._from_stored(stored)

    def _fetch(self) -> Token:
        response, started = self.endpoint.client_credentials()
        return Token(response.access_token, started + response.lifetime, response.lifetime, response.scopes)

    def _from_stored(self, stored: StoredAccess) -> Token:
        """The stored token with its wall-clock expiry moved onto this object's clock."""
        return Token(
            stored.access_token, self._clock() + (stored.expires_at - self._wall()), stored.lifetime, stored.scopes
        )

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

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise TaptouchConfigError(
            f"{type(self).__name__} works with httpx.Client: its token fetch blocks. With httpx.AsyncClient, "
            "call get_token() in a worker thread and set the 'Authorization: Bearer <token>' header yourself."
        )
        yield request  # pragma: no cover  (makes this an async generator, as httpx expects)

    def close(self) -> None:
        self.endpoint.close()


def _error_inside_200(response: httpx.Response) -> httpx.Response:
    """A token answer of HTTP 200 that is an error in envelope form (``status.ack`` not 200) or in
    RFC 6749 form (``error``, no ``access_token``), as the response its status means (the error
    form is then read as usual); any other answer unchanged."""
    try:
        doc = jsonutil.loads(response.content)
    except (ValueError, RecursionError):
        return response
    if not isinstance(doc, dict) or "access_token" in doc or "refresh_token" in doc:
        return response  # an answer (maybe unusable, then _parse keeps a rotated refresh token)
    status = None
    envelope = doc.get(api.ENVELOPE_STATUS)
    if isinstance(envelope, dict):
        ack = ack_status(envelope.get(api.ENVELOPE_ACK))
        if ack is not None and ack >= 400:
            status = ack
    if status is None and isinstance(doc.get("error"), str):
        status = 400
    if status is None:
        return response
    return httpx.Response(status, headers=response.headers, content=response.content, request=response.request)


class MerchantAuth(ClientCredentialsAuth):
    """``httpx.Auth`` with a merchant's authorization-code grant, kept in a shared :class:`TokenStore`.

    The grant was stored by ``taptouch-sync authorize --merchant NAME``. Access tokens come from the
    store (in-memory cache in front); a stale one is replaced with the refresh-token grant under the
    row lock of the store, so concurrent processes never present the same single-use refresh token
    twice. A grant that can no longer be refreshed raises :class:`ReauthorizationRequired`, which
    names the command to run.
    """

    def __init__(
        self,
        *,
        merchant: str,
        store: TokenPersistence,
        scopes: tuple[str, ...] | list[str] = (api.SCOPE_STORE,),
        **kwargs: Any,
    ):
        if store is None:
            raise TaptouchAuthError("A merchant grant needs the token store (the warehouse database).")
        super().__init__(scopes=scopes, store=store, **kwargs)
        self.merchant = merchant
        self.endpoint.merchant = merchant
        self._grants = store

    def __repr__(self) -> str:
        return f"MerchantAuth(client_id={self.client_id!r}, merchant={self.merchant!r}, secret=***)"

    @property
    def store_key(self) -> GrantKey:
        return GrantKey.merchant(self.base_url, self.client_id, self.merchant)

    def _obtain(self) -> Token:
        return self._from_stored(self._grants.merchant_access(self.store_key, refresh=self.refresh_with))

    def refresh_with(self, refresh_token: str) -> TokenResponse:
        """The refresh-token grant (one use of ``refresh_token``). Called by the store under its row lock."""
        log.info("Refreshing the access token of merchant %s", self.merchant)
        return self.endpoint.refresh(refresh_token)

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> TokenResponse:
        """The authorization_code grant (``taptouch-sync authorize``); invalid_grant raises
        :class:`ReauthorizationRequired` with ``description`` set to Taptouch's reason."""
        return self.endpoint.exchange_code(code=code, redirect_uri=redirect_uri, code_verifier=code_verifier)
