"""The Sandbox: a fake Taptouch server (OAuth token endpoint + Integration API) with faults.

One request handler (``Sandbox.handle``) serves both an in-process ``httpx.MockTransport`` and a
real HTTP server on a background thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import random
import re
import secrets
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import httpx

from ._json import dumps, loads
from .config import ALL_SCOPES, Faults, SandboxConfig, Stats
from .data import STATUS_CODE, OrderData, Store
from .pagecache import PageCache

MAX_COUNT = 500
DEFAULT_COUNT = 100
_TOKEN_PATH = re.compile(r"/auth/v2/token/?$")
_AUTHORIZE_PATH = re.compile(r"/auth/v2/authorize/?$")
# Scopes a merchant may grant through the authorization-code flow [doc: the scope table].
MERCHANT_SCOPES = ("integration.store",)
REFRESH_TOKEN_LIFETIME = 4 * 86400  # a refresh token is usable within 4 days [doc]
CODE_LIFETIME = 600
_API_PATH = re.compile(r"/integration/v1/stores(?:/([^/]+)/(orders|inventory))?/?$")
_SCOPE_FOR = {None: "integration.store", "orders": "integration.order", "inventory": "integration.inventory"}
_HTML_ERRORS = [(500, "Internal Server Error"), (502, "Bad Gateway"), (503, "Service Unavailable")]
MALFORMED_KINDS = (
    "missing_total",
    "total_not_a_number",
    "created_at_without_offset",
    "items_not_a_list",
    "nul_in_number",
    "subtotal_three_decimals",
)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    stall: bool = False  # the timeout fault fired: HTTP sleeps, the mock transport raises ReadTimeout
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OrdersPage:
    """One orders page as it reached the client (what :attr:`Sandbox.on_page` receives).

    ``ids`` are the order ids served, in served order, after any fault shaped the page;
    ``fault`` names that fault ("empty", "partial" or "unsorted"), None for a faithful page (and for
    a page of a listing sorted by id: its order is the whole listing's, not a page's fault).
    ``updated_from``/``updated_to`` are the request's bounds in epoch seconds (None if absent);
    ``timestamp`` is the envelope's ``status.timestamp`` (the API's clock, skew included)."""

    store_id: int
    index: int
    count: int
    updated_from: int | None
    updated_to: int | None
    ids: tuple[int, ...]
    timestamp: int
    fault: str | None = None


class _ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **more: Any):
        super().__init__(message)
        self.status, self.errors = status, {"code": code, "message": message, **more}


def malformed_kind(order_id: int, every: int) -> str | None:
    """The malformed-record kind of an order under ``malformed_every = every``, or None if served clean."""
    if every <= 0:
        return None
    h = zlib.crc32(order_id.to_bytes(8, "little"))
    if h % every:
        return None
    return MALFORMED_KINDS[(h // every) % len(MALFORMED_KINDS)]


def _corrupt(record: dict, kind: str) -> dict:
    if kind == "missing_total":
        del record["total"]
    elif kind == "total_not_a_number":
        record["total"] = "abc"
    elif kind == "created_at_without_offset":
        record["created_at"] = datetime.fromisoformat(record["created_at"]).replace(tzinfo=None).isoformat()
    elif kind == "items_not_a_list":
        record["items"] = {str(i["id"]): i for i in record["items"]}
    elif kind == "nul_in_number":
        record["number"] = record["number"] + "\x00"
    elif kind == "subtotal_three_decimals":
        from decimal import Decimal

        record["subtotal"] = record["subtotal"] + Decimal("0.005")
    return record


def _add_extra_fields(record: dict, kind: str) -> dict:
    record["x_loyalty_tier"] = "gold"
    record["x_meta"] = {
        "schema": 3,
        "source": f"sandbox-{kind}",
        "tags": ["☕", "beta"],
        "weight": 0.5,
        "nested": {"flag": True, "list": [1, None]},
    }
    if kind == "order":
        items = record.get("items")
        for item in items if isinstance(items, list) else []:  # a malformed record may hold a dict
            item["x_kitchen_station"] = "bar" if item.get("category") == "Coffee" else "kitchen"
    return record


@dataclass
class MerchantGrant:
    """One merchant's authorization of the client (what an authorize + code exchange created)."""

    grant_id: int
    scopes: frozenset[str]
    store_ids: tuple[int, ...]
    revoked: bool = False
    access_tokens: set[str] = field(default_factory=set)


@dataclass
class _Code:
    grant_scopes: frozenset[str]
    redirect_uri: str
    challenge: str | None
    expires: float
    used: bool = False
    grant_id: int | None = None


@dataclass
class _RefreshToken:
    grant_id: int
    expires: float
    used: bool = False


class _FaultCounter:
    """'Every N' counting that restarts whenever the knob's value changes."""

    __slots__ = ("every", "count", "left")

    def __init__(self) -> None:
        self.every, self.count, self.left = 0, 0, 0

    def fires(self, every: int, burst: int = 1) -> bool:
        if every != self.every:
            self.every, self.count, self.left = every, 0, 0
        if every <= 0:
            return False
        self.count += 1
        if self.left > 0:
            self.left -= 1
            return True
        if self.count % every == 0:
            self.left = max(0, burst - 1)
            return True
        return False


class _Serving:
    """What serves a sandbox's API in process (:meth:`transport`) and over HTTP (:meth:`serve`):
    anything with ``handle()`` and ``faults`` (a :class:`Sandbox`, a ``SandboxGroup``)."""

    faults: Faults

    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        raise NotImplementedError

    # ================================================================ transports
    def transport(self) -> httpx.MockTransport:
        """In-process transport (no sockets) serving the API at any base URL."""

        def handler(request: httpx.Request) -> httpx.Response:
            resp = self.handle(
                request.method, request.url.path, request.url.query.decode("ascii"), request.headers, request.content
            )
            if resp.stall:
                raise httpx.ReadTimeout("sandbox: timeout fault (the server stalled)", request=request)
            return httpx.Response(resp.status, headers=resp.headers, content=resp.body)

        return httpx.MockTransport(handler)

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve over real HTTP on a background thread; yields the base URL."""
        server = self.make_server(host, port)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="taptouch-sandbox", daemon=True
        )
        thread.start()
        try:
            yield server_url(server)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def make_server(self, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
        sandbox = self

        class Handler(_HTTPHandler):
            pass

        Handler.sandbox = sandbox
        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        return server


class Sandbox(_Serving):
    """A deterministic fake Taptouch merchant. See the package docstring for the surface."""

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config or SandboxConfig()
        self.end_date: date = self.config.end_date or datetime.now(UTC).date()
        self.faults = faults if faults is not None else Faults()
        self.stats = Stats()
        self.clock = clock
        self._data = OrderData(self.config, self.end_date)
        # SandboxConfig.page_cache_mb > 0: orders pages served from memory once generated (None: off)
        mb = self.config.page_cache_mb
        self.page_cache: PageCache | None = PageCache(mb * 2**20) if mb > 0 else None
        self._tokens: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.RLock()
        self._counters: dict[str, _FaultCounter] = {}
        self._html_turn = 0
        self._token_turn = 0
        # Authorization-code flow. ``consent`` is the merchant's answer on the authorize page:
        # "approve" (auto-approve, the default) or "deny" (redirect with error=access_denied).
        self.consent = "approve"
        self.refresh_token_lifetime = REFRESH_TOKEN_LIFETIME
        self.registered_redirect_uris: tuple[str, ...] = ()  # https callbacks accepted besides loopback http
        self.grant_requests: Counter[str] = Counter()  # token requests per grant_type (authenticated ones)
        self._codes: dict[str, _Code] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._grants: dict[int, MerchantGrant] = {}
        # Called with an :class:`OrdersPage` after each orders page has been served with HTTP 200 (not
        # for a page a timeout or ack fault replaced), under the sandbox's lock, on the serving thread:
        # a test may edit, delete or restore orders there, "while the listing runs". What it raises
        # reaches the client as a transport error would (in-process: out of the httpx call).
        self.on_page: Callable[[OrdersPage], None] | None = None

    def __repr__(self) -> str:  # no secret in repr
        c = self.config
        return f"Sandbox(seed={c.seed}, stores={c.stores}, days={c.days}, end_date={self.end_date})"

    # ================================================================ helpers for tests
    def store_ids(self) -> list[int]:
        return self._data.store_ids()

    def stores(self) -> list[dict]:
        """Store records exactly as /stores serves them (clean: no extra-field fault applied)."""
        return [loads(s.text) for s in self._data.stores]

    def orders(self, store_id: int) -> Iterator[dict]:
        """Every order of the store in its latest state, as served (clean), by created_at."""
        for oid in self._data.all_order_ids(store_id):
            yield loads(self._data.order_text(oid))

    def order(self, order_id: int) -> dict:
        """One order in its latest state (clean)."""
        return self._data.order(order_id)

    def orders_in_window(self, store_id: int, updated_from: datetime | None, updated_to: datetime | None) -> list[dict]:
        """The orders /orders serves for [updated_from, updated_to), in served order (clean)."""
        ids = self._data.window_ids(store_id, _epoch(updated_from), _epoch(updated_to))
        return [loads(self._data.order_text(oid)) for oid in ids]

    def inventory(self, store_id: int) -> list[dict]:
        """Stock levels as /inventory serves them (clean), by product_id."""
        return [loads(text) for _, _, text in self._data.inventory_rows(store_id)]

    def malformed_order_ids(self) -> set[int]:
        """Ids the malformed-record fault serves broken under the current ``faults.malformed_every``."""
        every = self.faults.malformed_every
        if every <= 0:
            return set()
        return {oid for sid in self.store_ids() for oid in self._data.all_order_ids(sid) if malformed_kind(oid, every)}

    def malformed_kind(self, order_id: int) -> str | None:
        return malformed_kind(order_id, self.faults.malformed_every)

    def edit_order(self, order_id: int, **changes: Any) -> dict:
        """Publish a new version of an order (late edit): returns it. updated_at defaults to +1 h."""
        return self._data.edit_order(order_id, changes)

    def delete_order(self, order_id: int) -> None:
        """Delete an order at the source: /orders stops listing it (no tombstone) [model]; the
        helpers (``orders``, ``orders_in_window``) leave it out too. ``restore_order`` undoes it."""
        self._data.delete_order(order_id)

    def restore_order(self, order_id: int) -> None:
        self._data.restore_order(order_id)

    def api_time(self) -> int:
        """The API's clock, whole seconds (``status.timestamp``): ``clock()`` plus ``faults.clock_skew``."""
        return math.floor(self.clock() + self.faults.clock_skew)

    def issue_token(self, scopes: Iterable[str] | None = None, lifetime: int | None = None) -> str:
        granted = frozenset(self.config.granted_scopes if scopes is None else scopes)
        token = secrets.token_urlsafe(32)
        with self._lock:
            life = self.faults.token_lifetime if lifetime is None else lifetime
            self._tokens[token] = (self.clock() + life, granted)
        return token

    def revoke_all_tokens(self) -> None:
        with self._lock:
            self._tokens.clear()

    def merchant_grants(self) -> list[MerchantGrant]:
        """Every authorization a merchant gave (revoked ones included)."""
        with self._lock:
            return list(self._grants.values())

    def revoke_grant(self, grant_id: int | None = None) -> None:
        """The merchant revokes access (one grant, or all): its access and refresh tokens stop working."""
        with self._lock:
            for grant in self._grants.values():
                if grant_id is None or grant.grant_id == grant_id:
                    self._revoke(grant)

    def token_is_valid(self, access_token: str) -> bool:
        with self._lock:
            entry = self._tokens.get(access_token)
            return entry is not None and self.clock() < entry[0]

    def _revoke(self, grant: MerchantGrant) -> None:
        grant.revoked = True
        for token in grant.access_tokens:
            self._tokens.pop(token, None)

    # ================================================================ the server
    def handle(self, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes) -> Response:
        if _TOKEN_PATH.search(path):
            resp = self._token_endpoint(method, headers, body)
        elif _AUTHORIZE_PATH.search(path):
            resp = self._authorize_endpoint(method, query)
        else:
            resp = self._api(method, path, query, headers)
        with self._lock:
            by = self.stats.responses_by_status
            by[resp.status] = by.get(resp.status, 0) + 1
        return resp

    def _fires(self, name: str, every: int, burst: int = 1) -> bool:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = _FaultCounter()
        return counter.fires(every, burst)

    # ---------------------------------------------------------------- OAuth
    def _token_endpoint(self, method: str, headers: Mapping[str, str], body: bytes) -> Response:
        with self._lock:
            self.stats.token_requests += 1
            fault = self._token_fault()
        if fault is not None:
            return fault
        if method != "POST":
            return _oauth_error(405, "invalid_request", "Use POST for the token endpoint.")
        try:
            form = _parse_form(headers.get("content-type", ""), body)
        except ValueError as exc:
            return _oauth_error(400, "invalid_request", str(exc))
        failed = self._client_authentication(form, headers.get("authorization", ""))
        if failed is not None:
            return failed
        grant = form.get("grant_type")
        if not grant:
            return _oauth_error(400, "invalid_request", "grant_type is required.")
        with self._lock:
            self.grant_requests[grant] += 1
        if grant == "authorization_code":
            return self._code_grant(form)
        if grant == "refresh_token":
            return self._refresh_grant(form)
        if grant != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported.")
        return self._client_credentials_grant(form)

    def _token_fault(self) -> Response | None:
        """Every ``token_errors_every``-th token request fails: a 503 HTML page or a 429, in turn."""
        if not self._fires("token_errors", self.faults.token_errors_every):
            return None
        self._token_turn += 1
        if self._token_turn % 2:
            return _html(503, "Service Unavailable")
        return _oauth_error(
            429,
            "temporarily_unavailable",
            "Too many token requests; retry later.",
            [("Retry-After", self._retry_after())],
        )

    def _client_authentication(self, form: dict[str, str], auth: str) -> Response | None:
        """None if the client's id and secret (form fields or HTTP Basic) are right, else a 401."""
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        if auth[:6].lower() == "basic ":
            try:
                cid, _, csec = base64.b64decode(auth[6:].strip()).decode().partition(":")
                client_id, client_secret = unquote(cid), unquote(csec)
            except ValueError:
                return _oauth_error(401, "invalid_client", "Malformed Basic credentials.")
        cfg = self.config
        if not (
            client_id
            and client_secret
            and hmac.compare_digest(client_id.encode(), cfg.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), cfg.client_secret.encode())
        ):
            return _oauth_error(
                401, "invalid_client", "Client authentication failed: check client_id and client_secret."
            )
        return None

    def _client_credentials_grant(self, form: dict[str, str]) -> Response:
        """A token for the requested scopes (all by default) that this client is granted."""
        requested = form.get("scope")
        wanted = requested.split() if requested is not None else list(ALL_SCOPES)
        unknown = [s for s in wanted if s not in ALL_SCOPES]
        if unknown or not wanted:
            return _oauth_error(400, "invalid_scope", f"Unknown scope(s): {' '.join(unknown) or '(empty)'}.")
        granted = [s for s in wanted if s in self.config.granted_scopes]
        if not granted:
            return _oauth_error(400, "invalid_scope", "None of the requested scopes is granted to this client.")
        token = self.issue_token(granted)
        payload = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.faults.token_lifetime,
            "scope": " ".join(granted),
        }
        return Response(
            200, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], dumps(payload).encode()
        )

    # ---------------------------------------------------------------- authorization-code flow
    def _authorize_endpoint(self, method: str, query: str) -> Response:
        """``GET /auth/v2/authorize``: the merchant approves (or denies) at once; redirect back."""
        if method != "GET":
            return _html(405, "Method Not Allowed")
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        client_id, redirect_uri = params.get("client_id", ""), params.get("redirect_uri", "")
        # RFC 6749 4.1.2.1: with a bad client or redirect URI, tell the user instead of redirecting.
        if not hmac.compare_digest(client_id.encode(), self.config.client_id.encode()):
            return _html(400, "Unknown client_id")
        if not self._redirect_allowed(redirect_uri):
            return _html(400, "redirect_uri is not registered for this client")
        state = params.get("state")

        def back(**answer: str) -> Response:
            if state is not None:
                answer["state"] = state
            sep = "&" if urlsplit(redirect_uri).query else "?"
            return Response(
                302, [("Location", redirect_uri + sep + urlencode(answer)), ("Cache-Control", "no-store")], b""
            )

        if params.get("response_type") != "code":
            return back(error="unsupported_response_type", error_description="response_type must be code.")
        wanted = params.get("scope", " ".join(MERCHANT_SCOPES)).split()
        if not wanted or any(s not in MERCHANT_SCOPES for s in wanted):
            return back(
                error="invalid_scope", error_description=f"A merchant can grant only {' '.join(MERCHANT_SCOPES)}."
            )
        challenge, method_ = params.get("code_challenge"), params.get("code_challenge_method", "plain")
        if challenge is not None and (method_ != "S256" or not re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge)):
            return back(
                error="invalid_request",
                error_description="Use code_challenge_method=S256 with a 43-character code_challenge.",
            )
        if self.consent != "approve":
            return back(error="access_denied", error_description="The merchant denied access.")
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Code(frozenset(wanted), redirect_uri, challenge, self.clock() + CODE_LIFETIME)
        return back(code=code)

    def _redirect_allowed(self, uri: str) -> bool:
        parts = urlsplit(uri)
        if parts.fragment or not parts.hostname:
            return False
        if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
            return True  # loopback redirect, any port (RFC 8252 7.3)
        return parts.scheme == "https" and uri.split("?")[0] in self.registered_redirect_uris

    def _issue_merchant_tokens(self, grant: MerchantGrant) -> Response:
        access = self.issue_token(grant.scopes)
        refresh = secrets.token_urlsafe(32)
        grant.access_tokens.add(access)
        self._refresh_tokens[refresh] = _RefreshToken(grant.grant_id, self.clock() + self.refresh_token_lifetime)
        payload = {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.faults.token_lifetime,
            "scope": " ".join(sorted(grant.scopes)),
        }
        return Response(
            200, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], dumps(payload).encode()
        )

    def _code_grant(self, form: dict[str, str]) -> Response:
        with self._lock:
            code = self._codes.get(form.get("code") or "")
            if code is None or self.clock() >= code.expires:
                return _oauth_error(400, "invalid_grant", "The authorization code is invalid or expired.")
            if code.used:  # RFC 6749 4.1.2: a code used twice revokes what it gave
                if code.grant_id is not None:
                    self._revoke(self._grants[code.grant_id])
                return _oauth_error(400, "invalid_grant", "The authorization code was already used.")
            if form.get("redirect_uri") != code.redirect_uri:
                return _oauth_error(400, "invalid_grant", "redirect_uri differs from the authorize request's.")
            if code.challenge is not None:
                verifier = form.get("code_verifier") or ""
                digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
                if not hmac.compare_digest(digest, code.challenge.encode()):
                    return _oauth_error(
                        400, "invalid_grant", "PKCE verification failed: code_verifier does not match code_challenge."
                    )
            code.used = True
            grant = MerchantGrant(len(self._grants) + 1, code.grant_scopes, tuple(self.store_ids()))
            code.grant_id = grant.grant_id
            self._grants[grant.grant_id] = grant
            return self._issue_merchant_tokens(grant)

    def _refresh_grant(self, form: dict[str, str]) -> Response:
        with self._lock:
            entry = self._refresh_tokens.get(form.get("refresh_token") or "")
            if entry is None:
                return _oauth_error(400, "invalid_grant", "The refresh token is invalid.")
            grant = self._grants[entry.grant_id]
            if entry.used:  # reuse of a rotated refresh token: revoke the whole grant (OAuth 2.0 BCP)
                self._revoke(grant)
                return _oauth_error(
                    400, "invalid_grant", "The refresh token was already used; the authorization is revoked."
                )
            if grant.revoked:
                return _oauth_error(400, "invalid_grant", "The merchant revoked this authorization.")
            if self.clock() >= entry.expires:
                return _oauth_error(400, "invalid_grant", "The refresh token has expired (valid 4 days).")
            wanted = form.get("scope")
            if wanted and not set(wanted.split()) <= grant.scopes:
                return _oauth_error(400, "invalid_scope", "A refresh cannot widen the granted scope.")
            entry.used = True
            return self._issue_merchant_tokens(grant)

    def _retry_after(self) -> str:
        ra = self.faults.retry_after
        if ra == "date":
            return formatdate(math.ceil(self.clock()) + 2, usegmt=True)
        return ra

    # ---------------------------------------------------------------- Integration API
    def _api(self, method: str, path: str, query: str, headers: Mapping[str, str]) -> Response:
        f = self.faults
        with self._lock:
            self.stats.api_requests += 1
            self.stats.api_request_times.append(time.time())
            self.stats.api_requests_by_path[path] += 1
            stall = self._fires("timeout", f.timeout_every)
            server_error = self._fires("server_error", f.server_error_every, f.server_error_burst)
            rate_limited = self._fires("rate_limit", f.rate_limit_every, f.rate_limit_burst)
            ack_mismatch = self._fires("ack_mismatch", f.ack_mismatch_every)
            revoke_after = self._fires("revoke", f.revoke_tokens_every)
            if server_error:
                status, reason = _HTML_ERRORS[self._html_turn % len(_HTML_ERRORS)]
                self._html_turn += 1
                resp = _html(status, reason)
            elif rate_limited:
                resp = self._envelope_error(
                    429,
                    {"code": "rate_limited", "message": "Too many requests; slow down."},
                    [("Retry-After", self._retry_after())],
                )
            else:
                try:
                    resp = self._route(method, path, query, headers)
                    if ack_mismatch and resp.status == 200:
                        resp = Response(
                            200,
                            [("Content-Type", "application/json")],
                            dumps(
                                {
                                    "status": {
                                        "timestamp": self.api_time(),
                                        "ack": 500,
                                        "errors": "Internal error while reading records; retry later.",
                                    },
                                    "data": None,
                                }
                            ).encode(),
                        )
                except _ApiError as exc:
                    extra = [("WWW-Authenticate", f'Bearer error="{exc.errors["code"]}"')] if exc.status == 401 else []
                    resp = self._envelope_error(exc.status, exc.errors, extra)
            if revoke_after:
                self._tokens.clear()
            resp.stall = stall
            page = resp.extra.get("orders_page")
            if page is not None and not stall and not ack_mismatch:
                self._served(page)
            return resp

    def _served(self, page: OrdersPage) -> None:
        """After an orders page reached the client: the edit-during-listing fault, then ``on_page``."""
        f = self.faults
        if f.edits_during_listing > 0 and page.ids and len(page.ids) == page.count:
            f.edits_during_listing -= 1
            oid = page.ids[0]
            previous = int(datetime.fromisoformat(self._data.order(oid)["updated_at"]).timestamp())
            at = max(int(self.clock()), previous + 1)
            self._data.edit_order(oid, {"updated_at": datetime.fromtimestamp(at, UTC)})
        if self.on_page is not None:
            self.on_page(page)

    def _envelope_error(self, status: int, errors: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
        body = dumps({"status": {"timestamp": self.api_time(), "ack": status, "errors": errors}, "data": None})
        return Response(status, [("Content-Type", "application/json"), *headers], body.encode())

    def _route(self, method: str, path: str, query: str, headers: Mapping[str, str]) -> Response:
        m = _API_PATH.search(path)
        if not m:
            raise _ApiError(404, "not_found", f"No such endpoint: {path}")
        if method != "GET":
            raise _ApiError(405, "method_not_allowed", f"{method} is not allowed here; use GET.")
        store_part, kind = m.group(1), m.group(2)
        self._authorize(headers, _SCOPE_FOR[kind])
        params = parse_qs(query, keep_blank_values=True)
        index = _int_param(params, "index", 0, 0, None)
        count = _int_param(params, "count", DEFAULT_COUNT, 1, MAX_COUNT)
        if kind is None:
            texts = [s.text for s in self._data.stores]
            return self._page(texts, index, count, "store")
        store = self._readable_store(store_part)
        if kind == "inventory":
            since = _time_param(params, "updated_from")
            rows = self._data.inventory_rows(store.id)
            texts = [text for at, _, text in rows if since is None or at >= since]
            return self._page(texts, index, count, "inventory")
        return self._orders_page(store, params, index, count)

    def _readable_store(self, store_part: str) -> Store:
        """The store of the path, if it exists and the token may read it (404, 403 otherwise)."""
        try:
            store_id = int(store_part)
            store = self._data.by_id[store_id]
        except (ValueError, KeyError):
            raise _ApiError(404, "store_not_found", f"Store {store_part} does not exist.") from None
        if store_id in self.faults.forbidden_stores:
            raise _ApiError(
                403,
                "store_forbidden",
                f"This token may not read store {store_id}; ask the merchant to grant access again.",
            )
        return store

    def _orders_page(self, store: Store, params: dict[str, list[str]], index: int, count: int) -> Response:
        """A page of the store's orders window, with the listing faults that are switched on; from
        the page cache when there is one and no fault shapes pages (byte for byte the same page)."""
        f, t = _time_param(params, "updated_from"), _time_param(params, "updated_to")
        statuses = _status_filter(params)
        cache = self.page_cache if self.page_cache is not None and not self._pages_shaped() else None
        key, generation = (store.id, f, t, statuses, index, count), self._data.generation
        entry = cache.get(key, generation) if cache is not None else None
        if entry is not None:
            page_ids, fault = self._listing_faults(store, index, list(entry[0]))  # counts as a request would
            data = entry[1]
        else:
            window = self._data.window_ids(store.id, f, t, statuses)
            ids = sorted(window) if self.faults.sorted_by_id else window
            start, stop = self._slice(index, count)
            page_ids, fault = self._listing_faults(store, index, list(ids[start:stop]))
            texts = self._order_texts(page_ids)
            if self.faults.extra_fields:
                texts = [dumps(_add_extra_fields(loads(text), "order")) for text in texts]
            data = ",".join(texts).encode()
            if cache is not None:
                cache.put(key, generation, tuple(page_ids), data)
        self.stats.orders_served += len(page_ids)
        timestamp = self.api_time()
        resp = self._envelope_of(data, timestamp)
        resp.extra["orders_page"] = OrdersPage(store.id, index, count, f, t, tuple(page_ids), timestamp, fault)
        return resp

    def _pages_shaped(self) -> bool:
        """Whether a fault shapes what an orders page holds (then no page is served from the cache)."""
        f = self.faults
        return bool(
            f.ignore_index
            or f.duplicate_page_boundary
            or f.unsorted_pages
            or f.sorted_by_id
            or f.extra_fields
            or f.empty_orders_every > 0
            or f.partial_orders_every > 0
            or f.malformed_every > 0
        )

    def _order_texts(self, page_ids: list[int]) -> list[str]:
        """The served text of each order, broken as the malformed-record fault breaks it."""
        texts = [self._data.order_text(oid) for oid in page_ids]
        every = self.faults.malformed_every
        if every > 0:
            for i, oid in enumerate(page_ids):
                bad = malformed_kind(oid, every)
                if bad:
                    texts[i] = dumps(_corrupt(loads(texts[i]), bad))
        return texts

    def _listing_faults(self, store: Store, index: int, page_ids: list[int]) -> tuple[list[int], str | None]:
        """The page's ids as an eventually consistent listing serves them: emptied, cut or shuffled."""
        fault = None
        faults = self.faults
        if self._fires("empty_orders", faults.empty_orders_every):
            page_ids, fault = [], "empty"
        elif self._fires("partial_orders", faults.partial_orders_every) and page_ids:
            page_ids, fault = page_ids[: len(page_ids) // 2], "partial"
        if faults.unsorted_pages and len(page_ids) > 1:
            shuffled = page_ids[:]
            random.Random(zlib.crc32(repr((store.id, index, page_ids)).encode())).shuffle(shuffled)
            if shuffled == page_ids:
                shuffled.reverse()
            page_ids, fault = shuffled, fault or "unsorted"
        return page_ids, fault

    def _authorize(self, headers: Mapping[str, str], scope: str) -> None:
        auth = headers.get("authorization") or ""
        scheme, _, token = auth.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _ApiError(401, "invalid_token", "Missing bearer token: send 'Authorization: bearer <access_token>'.")
        entry = self._tokens.get(token.strip())
        if entry is None:
            raise _ApiError(401, "invalid_token", "The access token is invalid or was revoked; get a new one.")
        expires, scopes = entry
        if self.clock() >= expires:
            raise _ApiError(401, "invalid_token", "The access token has expired; get a new one.")
        if scope not in scopes:
            raise _ApiError(403, "insufficient_scope", f"This endpoint needs scope {scope}.", scope=scope)

    def _slice(self, index: int, count: int) -> tuple[int, int]:
        if self.faults.ignore_index:
            index = 0
        start = index * (count - 1) if self.faults.duplicate_page_boundary else index * count
        return start, start + count

    def _page(self, texts: list[str], index: int, count: int, kind: str) -> Response:
        start, stop = self._slice(index, count)
        return self._envelope(texts[start:stop], kind)

    def _envelope(self, texts: list[str], kind: str, timestamp: int | None = None) -> Response:
        if self.faults.extra_fields:
            texts = [dumps(_add_extra_fields(loads(t), kind)) for t in texts]
        return self._envelope_of(",".join(texts).encode(), timestamp)

    def _envelope_of(self, data: bytes, timestamp: int | None = None) -> Response:
        """An HTTP 200 envelope around the ``data`` array's content (its records' JSON, comma-separated)."""
        stamp = self.api_time() if timestamp is None else timestamp
        head = b'{"status":{"timestamp":' + str(int(stamp)).encode() + b',"ack":200,"errors":null},"data":['
        body = b"".join((head, data, b"]}"))
        return Response(200, [("Content-Type", "application/json; charset=utf-8")], body)


# ==================================================================== helpers
def _epoch(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("datetimes must carry a UTC offset")
    return math.ceil(value.timestamp())


def _status_filter(params: dict[str, list[str]]) -> frozenset[int] | None:
    """The status codes of ``?status=a,b`` (repeatable), or None for every status."""
    if not params.get("status"):
        return None
    names = [s for v in params["status"] for s in v.split(",") if s]
    if any(s not in STATUS_CODE for s in names):
        raise _ApiError(422, "invalid_parameter", f"status must be one of {', '.join(STATUS_CODE)}", parameter="status")
    return frozenset(STATUS_CODE[s] for s in names)


def _int_param(params: dict[str, list[str]], name: str, default: int, lo: int, hi: int | None) -> int:
    values = params.get(name)
    if not values:
        return default
    raw = values[-1].strip()
    try:
        value = int(raw)
    except ValueError:
        value = None
    bounds = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
    if value is None or value < lo or (hi is not None and value > hi):
        raise _ApiError(422, "invalid_parameter", f"{name} must be an integer {bounds}, got {raw!r}", parameter=name)
    return value


def _time_param(params: dict[str, list[str]], name: str) -> int | None:
    values = params.get(name)
    if not values:
        return None
    raw = values[-1].strip()
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise _ApiError(
            422,
            "invalid_parameter",
            f"{name} must be ISO 8601 with a UTC offset, e.g. 2026-11-27T00:00:00+11:00 "
            f"(URL-encode '+' as %2B), got {raw!r}",
            parameter=name,
        )
    return math.ceil(value.timestamp())


def _parse_form(content_type: str, body: bytes) -> dict[str, str]:
    ctype = content_type.split(";")[0].strip().lower()
    if ctype in ("application/x-www-form-urlencoded", ""):
        return {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    if ctype == "multipart/form-data":
        m = re.search(r'boundary="?([^";]+)"?', content_type)
        if not m:
            raise ValueError("multipart body without a boundary")
        out = {}
        for part in body.split(b"--" + m.group(1).encode()):
            head, sep, value = part.partition(b"\r\n\r\n")
            if not sep:
                continue
            name = re.search(rb'name="([^"]*)"', head)
            if name:
                out[name.group(1).decode()] = value.removesuffix(b"\r\n").decode("utf-8")
        return out
    raise ValueError(f"Unsupported content type {ctype!r}: send application/x-www-form-urlencoded.")


def _oauth_error(status: int, error: str, description: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    body = dumps({"error": error, "error_description": description}).encode()
    return Response(status, [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *headers], body)


def _html(status: int, reason: str) -> Response:
    body = f"<html><body><h1>{status} {reason}</h1></body></html>".encode()
    return Response(status, [("Content-Type", "text/html")], body)


def server_url(server: ThreadingHTTPServer) -> str:
    """The base URL of a server listening on ``server.server_address`` (an IPv6 host in brackets)."""
    host, port = server.server_address[:2]
    if isinstance(host, bytes):  # typeshed allows it; a TCP server's host is a str
        host = host.decode()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class _HTTPHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 120  # idle keep-alive connections give up their thread after this
    sandbox: _Serving

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        sb = self.sandbox
        headers = {name.lower(): value for name, value in self.headers.items()}  # looked up in lower case
        resp = sb.handle(self.command, unquote(split.path), split.query, headers, body)
        delay = sb.faults.latency + (sb.faults.timeout_sleep if resp.stall else 0.0)
        if delay > 0:
            time.sleep(delay)
        try:
            self.send_response(resp.status)
            for k, v in resp.headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(resp.body)))
            self.end_headers()
            self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass
