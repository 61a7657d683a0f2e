"""TaptouchClient: envelope, ``index``/``count`` pagination, retries, rate limit, typed errors.

Records are yielded lazily, page by page, either as parsed JSON (``dict``, every non-integer number
as ``Decimal``) or, from the ``*_records`` / ``*_record_pages`` methods, as the exact bytes the API
sent for each record (the envelope is decoded by msgspec with ``data`` as a list of raw records, so
nothing about a record is re-spelled). Validation and the mapping to warehouse rows live in the
warehouse's record boundary (``pipelines.warehouse.records``), so a malformed record is quarantined
there, not lost here. A record that is not even JSON is yielded as its ``bytes`` by the dict methods.

A page is only ever yielded from a well-formed answer: a 200 whose envelope has no ``data``, a null
or non-list ``data``, or more records than ``count`` is a :class:`TaptouchProtocolError`, never an
empty page, so a caller never replaces a store's data from an incomplete listing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import httpx
import msgspec

from . import api, jsonutil
from .auth import ENV_HINT, ClientCredentialsAuth, redact_values
from .errors import (
    ack_status,
    parse_error_body,
    TaptouchAPIError,
    TaptouchAuthError,
    TaptouchConfigError,
    TaptouchProtocolError,
    TaptouchRateLimitError,
)
from .listing import OrderListing, Page
from .http import DEFAULT_DEADLINE, as_utf8, redirect_target, send_bounded, tls_verification_failed
from .retry import (MIN_429_WAIT, RETRY_STATUSES, Backoff, ClientStats, RateLimiter, RequestLimiter, Retryable,
                    parse_retry_after, with_retries)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_PAGES = 100_000
# A page of 500 orders is about 1 MB of JSON; no real page comes near this (decoded size).
DEFAULT_MAX_RESPONSE_BYTES = 64 * 2**20
NO_RETRY_HINTS = {
    400: "the request was malformed",
    403: "the token may not read this resource",
    404: "check the store id and TAPTOUCH_BASE_URL",
    422: "a parameter was refused",
}


def is_loopback(host: str) -> bool:
    """True for a literal loopback address (``127.0.0.0/8``, ``::1``) and the name ``localhost``
    itself. Any other name, ``evil.localhost`` included, is resolved through DNS and may point
    anywhere, so it does not count."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash; https unless the host is loopback (the sandbox).
    An error never echoes the URL (it could carry credentials): it names the scheme or host only."""
    if "@" in base_url:  # user info, however it is spelled (a '#' or '?' in a password fools urlsplit)
        raise TaptouchConfigError("TAPTOUCH_BASE_URL must not contain credentials; use TAPTOUCH_CLIENT_ID/SECRET.")
    try:
        parts = urlsplit(base_url.strip())
        hostname = parts.hostname
    except ValueError:
        parts, hostname = None, None
    if parts is None or parts.scheme not in ("http", "https") or not hostname:
        shown = f"a {parts.scheme}:// URL" if parts is not None and parts.scheme else "a value that is not a URL"
        raise TaptouchConfigError(
            f"TAPTOUCH_BASE_URL must be an https:// URL such as {api.DEFAULT_BASE_URL}, got {shown}."
        )
    if parts.scheme == "http" and not is_loopback(hostname):
        raise TaptouchConfigError(
            f"Refusing plain http to {hostname}: credentials and tokens would travel unencrypted. "
            f"Use https:// (plain http is allowed only for loopback hosts such as the sandbox)."
        )
    if parts.username or parts.password:
        raise TaptouchConfigError("TAPTOUCH_BASE_URL must not contain credentials; use TAPTOUCH_CLIENT_ID/SECRET.")
    return base_url.strip().rstrip("/")


def _iso(ts: datetime | str) -> str:
    """ISO 8601 with an explicit offset (``+00:00``). A naive datetime is taken as UTC; a string is
    passed through as given."""
    if isinstance(ts, str):
        return ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat()


class TaptouchClient:
    """A client for the Taptouch integration API.

    Keyword-only; every argument has a safe default except the credentials. ``transport`` lets
    tests and the in-process sandbox run without sockets. One client is safe to share between
    threads: the token cache, the rate limiter and the counters are shared.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        base_url: str = api.DEFAULT_BASE_URL,
        scopes: tuple[str, ...] | list[str] = api.ALL_SCOPES,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        page_size: int = api.DEFAULT_PAGE_SIZE,
        max_retries: int = 5,
        requests_per_second: float | None = 10.0,
        transport: httpx.BaseTransport | None = None,
        auth: ClientCredentialsAuth | None = None,
        max_pages: int = DEFAULT_MAX_PAGES,
        retry_budget: float = 600.0,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        verify: Any = True,
        max_connections: int = 16,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        limiter: RequestLimiter | None = None,
        deadline: float | None = DEFAULT_DEADLINE,
    ):
        if verify is False:
            raise TaptouchConfigError(
                "TLS verification cannot be switched off. To trust a private CA, pass verify= a CA "
                "bundle path or an ssl.SSLContext."
            )
        if not 1 <= page_size <= api.MAX_PAGE_SIZE:
            raise TaptouchConfigError(f"page_size must be between 1 and {api.MAX_PAGE_SIZE}, got {page_size}.")
        self.base_url = check_base_url(base_url)
        self.page_size = page_size
        self.max_pages = max_pages
        self.max_response_bytes = max_response_bytes
        self.deadline = deadline  # seconds for one whole answer, however slowly it trickles in
        self._sleep = sleep
        timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=min(10.0, timeout))
        self.stats = auth.stats if auth is not None else ClientStats()
        self._backoff = Backoff(max_retries=max_retries, cap=backoff_cap, budget=retry_budget)
        self.auth = auth or ClientCredentialsAuth(
            client_id=client_id,
            client_secret=client_secret,
            token_url=self.base_url + api.TOKEN_PATH,
            scopes=scopes,
            transport=transport,
            timeout=timeout,
            max_retries=max_retries,
            backoff=self._backoff,
            sleep=sleep,
            stats=self.stats,
            verify=verify,
            deadline=deadline,
        )
        # ``limiter``: e.g. the shared budget of pipelines.warehouse.budget; default: this client's own.
        self.limiter: RequestLimiter = limiter if limiter is not None else RateLimiter(requests_per_second, sleep=sleep)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(
            base_url=self.base_url, auth=self.auth, timeout=timeout, transport=transport, verify=verify,
            limits=limits, headers={"Accept": "application/json", "User-Agent": "taptouch-sync/0.1"},
        )

    def __repr__(self) -> str:
        return f"TaptouchClient(base_url={self.base_url!r}, client_id={self.auth.client_id!r})"

    def __enter__(self) -> "TaptouchClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- public API ----------------------------------------------------------------------------
    def list_stores(self) -> Iterator[dict]:
        """Every store the token may read (``integration.store``)."""
        return self._records(api.STORES_PATH, {}, "stores")

    def list_store_records(self) -> Iterator[bytes]:
        """Like :meth:`list_stores`, each record as the exact JSON bytes the API sent."""
        return self._raw_records(api.STORES_PATH, {}, "stores")

    def iter_orders(self, store_id: int, *, updated_from: datetime, updated_to: datetime,
                    status: str | None = None) -> Iterator[dict]:
        """Orders of one store with ``updated_at`` in ``[updated_from, updated_to)``, latest versions."""
        for page in self.iter_order_pages(store_id, updated_from=updated_from, updated_to=updated_to, status=status):
            yield from page

    def iter_order_pages(self, store_id: int, *, updated_from: datetime, updated_to: datetime,
                         status: str | None = None) -> Iterator[list[dict]]:
        """Like :meth:`iter_orders`, one list per API page."""
        for page in self.iter_order_record_pages(store_id, updated_from=updated_from, updated_to=updated_to,
                                                 status=status):
            yield _parse_page(page)

    def iter_order_record_pages(self, store_id: int, *, updated_from: datetime, updated_to: datetime,
                                status: str | None = None, confirm_end: bool = False) -> OrderListing:
        """Like :meth:`iter_order_pages`, each record as the exact JSON bytes the API sent (what the
        loader stages: no parsing into Python objects on the way).

        The pages come from an :class:`~taptouch_resource.listing.OrderListing` (keyset pages checked
        to be in order, else a verifying pass), which tells afterwards whether the listing is
        ``complete``, when it ``started_at`` on the API's clock, and the ``newest`` instant read.
        ``confirm_end``: the last page is asked for twice (see :class:`OrderListing`)."""
        params: dict[str, Any] = {api.PARAM_UPDATED_TO: _iso(updated_to)}
        if status:
            params[api.PARAM_STATUS] = status
        path = api.ORDERS_PATH.format(store_id=int(store_id))
        what = f"store {store_id} orders"
        return OrderListing(
            fetch=lambda p: self._listing_page(path, p, what),
            offset_pages=lambda p: self._paginate(path, p, what),
            params=params, updated_from=updated_from, updated_to=updated_to, page_size=self.page_size,
            max_pages=self.max_pages, what=what, confirm_end=confirm_end)

    def iter_inventory(self, store_id: int, *, updated_from: datetime | None = None) -> Iterator[dict]:
        """Current stock levels of one store (``integration.inventory``)."""
        params: dict[str, Any] = {}
        if updated_from is not None:
            params[api.PARAM_UPDATED_FROM] = _iso(updated_from)
        return self._records(api.INVENTORY_PATH.format(store_id=int(store_id)), params, f"store {store_id} inventory")

    def iter_inventory_records(self, store_id: int, *, updated_from: datetime | None = None) -> Iterator[bytes]:
        """Like :meth:`iter_inventory`, each record as the exact JSON bytes the API sent."""
        params: dict[str, Any] = {}
        if updated_from is not None:
            params[api.PARAM_UPDATED_FROM] = _iso(updated_from)
        return self._raw_records(api.INVENTORY_PATH.format(store_id=int(store_id)), params, f"store {store_id} inventory")

    def log_summary(self, logger: logging.Logger | None = None) -> dict[str, int]:
        s = self.stats.snapshot()
        (logger or log).info(
            "Taptouch API: %(requests)d requests, %(pages)d pages, %(records)d records, %(retries)d retries, "
            "%(rate_limited)d rate-limited (429), %(server_errors)d server errors, %(token_requests)d token requests", s,
        )
        return s

    # -- pagination ----------------------------------------------------------------------------
    def _records(self, path: str, params: dict, what: str) -> Iterator[Any]:
        for page in self._paginate(path, params, what):
            yield from _parse_page(page)

    def _raw_records(self, path: str, params: dict, what: str) -> Iterator[bytes]:
        for page in self._paginate(path, params, what):
            yield from page

    def _paginate(self, path: str, params: dict, what: str) -> Iterator[list[bytes]]:
        """Pages of ``path`` until a page shorter than ``count``; a repeated page, or a page longer
        than ``count``, is an error."""
        count = self.page_size
        previous: list | None = None
        seen_pages: dict[bytes, int] = {}  # digest of each full page -> its index
        records = 0
        index = 0
        while True:
            if index >= self.max_pages:
                raise TaptouchProtocolError(
                    f"{what}: more than {self.max_pages} pages; stopping (raise max_pages if this is real)."
                )
            page, hints = self._get(path, {**params, api.PARAM_INDEX: index, api.PARAM_COUNT: count})
            if len(page) > count:
                raise TaptouchProtocolError(
                    f"{what}: page {index} holds {len(page)} records, more than the {count} asked for; the "
                    f"listing cannot be trusted to be complete. Stopping without loading this store."
                )
            if previous is not None and len(page) == count and page == previous:
                raise TaptouchProtocolError(
                    f"{what}: page {index} is identical to page {index - 1}; the server seems to ignore "
                    f"the '{api.PARAM_INDEX}' parameter. Stopping instead of looping forever."
                )
            if len(page) == count:  # a cycle (0, 1, 0, 1, ...) is caught as well as a repeat
                hasher = hashlib.blake2b(digest_size=16)
                for record in page:
                    hasher.update(len(record).to_bytes(8, "big") + record)
                digest = hasher.digest()
                if digest in seen_pages:
                    raise TaptouchProtocolError(
                        f"{what}: page {index} is identical to page {seen_pages[digest]}; the server's pages "
                        f"go round in a cycle. Stopping instead of looping forever.")
                seen_pages[digest] = index
            if len(page) < count:
                _check_last_page(hints, what, index, records + len(page))
            records += len(page)
            self.stats.add(pages=1, records=len(page))
            log.debug("%s: page %d, %d records", what, index, len(page))
            yield page
            if len(page) < count:
                break
            previous = page
            index += 1
        log.debug("%s: %d pages, %d records", what, index + 1, records)

    def _listing_page(self, path: str, params: dict, what: str) -> Page:
        """One page of a keyset listing, with the paginator's page checks (not longer than asked for;
        a short page the server says is not the last is refused)."""
        page, hints = self._get(path, params)
        count, index = params[api.PARAM_COUNT], params[api.PARAM_INDEX]
        if len(page) > count:
            raise TaptouchProtocolError(
                f"{what}: a page holds {len(page)} records, more than the {count} asked for; the listing cannot "
                f"be trusted to be complete. Stopping without loading this store.")
        if len(page) < count:
            _check_last_page(hints, what, index, len(page))
        self.stats.add(pages=1, records=len(page))
        return Page(page, hints.get(_TIMESTAMP))

    # -- one request ---------------------------------------------------------------------------
    def _get(self, path: str, params: dict) -> tuple[list[bytes], dict[str, Any]]:
        """(``data`` of one page, the envelope's pagination hints), retried by the shared engine on
        429, 5xx, network errors and an envelope whose ``ack`` is one of those; an envelope acking 401
        gets one fresh token, like an HTTP 401."""
        state = {"ack_401": False}
        return with_retries(lambda: self._attempt(path, params, state), what=f"GET {path}", backoff=self._backoff,
                            stats=self.stats, sleep=self._sleep)

    def _attempt(self, path: str, params: dict, state: dict | None = None) -> tuple[list[bytes], dict[str, Any]]:
        state = {"ack_401": False} if state is None else state
        waited = self.limiter.acquire()
        self.stats.add(requests=1, waited_seconds=waited)
        try:
            response = send_bounded(self._http, "GET", path, params=params, limit=self.max_response_bytes,
                                    what=f"GET {path}", deadline=self.deadline)
        except httpx.TransportError as exc:
            self.stats.add(network_errors=1)
            if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
                raise TaptouchConfigError(f"Cannot reach the API at {self.base_url}: {type(exc).__name__}. "
                                          f"Check TAPTOUCH_BASE_URL.") from None
            if tls_verification_failed(exc):
                raise TaptouchConfigError(
                    f"The TLS certificate of {urlsplit(self.base_url).hostname} could not be verified (retrying "
                    f"cannot cure that). Check TAPTOUCH_BASE_URL; to trust a private CA pass verify= a CA bundle."
                ) from None
            raise Retryable(type(exc).__name__, TaptouchAPIError(
                status=0, path=path, message=f"network error {type(exc).__name__}, retries exhausted",
                hint=f"check that {self.base_url} is reachable")) from None
        status = response.status_code
        if status == 200:
            ack, data, hints = self._envelope(response, path)
            if ack == 200:
                return data, hints
            if ack == 401:
                return self._refused_token(response, path, state, ack=True)
            error = self._api_error(response, path, ack=ack)
            if ack in RETRY_STATUSES:  # HTTP 200 whose envelope acks a retryable failure
                raise Retryable(f"ack {ack} in an HTTP 200", error)
            raise error
        if status == 401:
            return self._refused_token(response, path, state, ack=False)
        if status not in RETRY_STATUSES:
            raise self._api_error(response, path)
        error = self._api_error(response, path)
        wait = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        if status == 429:
            self.stats.add(rate_limited=1)
            self.limiter.penalize(MIN_429_WAIT if wait is None else wait)  # everyone sharing the limiter slows down
            raise Retryable("HTTP 429", error, rate_limited=True, wait=wait)
        self.stats.add(server_errors=1)
        raise Retryable(f"HTTP {status}", error, wait=wait)

    def _refused_token(self, response: httpx.Response, path: str, state: dict, *, ack: bool) -> Any:
        """A 401 (HTTP, after the auth flow's one refresh; or an envelope ack, refreshed here once)."""
        sent = _bearer(response)
        error = TaptouchAuthError(
            f"Taptouch refused the access token {'(ack 401 in an HTTP 200)' if ack else '(HTTP 401)'} on {path}, "
            f"a fresh one too: the token was revoked or the client was disabled. {ENV_HINT}", status=401,
            error=self._redact(parse_error_body(response.content).code, response),
        )
        if ack and not state["ack_401"]:
            state["ack_401"] = True
            self.stats.add(unauthorized=1)
            if sent:
                self.auth.invalidate(sent)
            raise Retryable("ack 401: fetching a fresh token", error, wait=0.0)
        raise error

    def _envelope(self, response: httpx.Response, path: str) -> tuple[int, list[bytes] | None, dict[str, Any]]:
        """(``ack``, the records of a 200 envelope each as its exact bytes, pagination hints). A body
        that is not the envelope, an ``ack`` that is not a status code, or (with ack 200) missing,
        null or non-list ``data`` is a protocol error."""
        body = as_utf8(response.content, response.headers.get("content-type"))
        extras: dict[str, Any] = {}
        try:
            env = _ENVELOPE.decode(body)
            status, data = env.status, bytes(env.data)
            extras = {name: getattr(env, name) for name in _HINT_FIELDS if getattr(env, name) is not None}
            records = None if data in (b"", b"null") or data[:1] != b"[" else [bytes(r) for r in _RAW_LIST.decode(data)]
        except msgspec.ValidationError:  # JSON, but not an object
            raise TaptouchProtocolError(
                f"GET {path}: the response is not the Taptouch envelope (no 'status' object).") from None
        except (msgspec.DecodeError, RecursionError, ValueError):
            # Not strict JSON somewhere (NaN, a lone surrogate, invalid UTF-8 in one record): split the
            # page tolerantly so that the boundary can quarantine that one record.
            try:
                status, data, records, extras = _split_tolerant(body)
            except (ValueError, RecursionError):
                raise TaptouchProtocolError(
                    f"GET {path}: HTTP 200 but the body is not JSON ({_peek(response)}). Is TAPTOUCH_BASE_URL the API?"
                ) from None
        if not isinstance(status, dict):
            raise TaptouchProtocolError(f"GET {path}: the response is not the Taptouch envelope (no 'status' object).")
        if body.count(b'"' + api.ENVELOPE_DATA.encode() + b'"') > 1:  # rare: only then look closer
            _refuse_repeated_keys(body, path)
        ack = ack_status(status.get(api.ENVELOPE_ACK))
        if ack is None:
            raise TaptouchAPIError(
                status=200, ack=status.get(api.ENVELOPE_ACK), path=path,
                message=f"the envelope's status has no usable '{api.ENVELOPE_ACK}' (got "
                        f"{_kind_of(status.get(api.ENVELOPE_ACK))}); success cannot be told from failure, so nothing "
                        f"is loaded from it",
                hint="check that TAPTOUCH_BASE_URL is the Taptouch API")
        if ack != 200:
            return ack, None, {}
        if records is None:
            shown = "missing" if data == b"" else "null" if data == b"null" else f"not a list ({_kind(data)})"
            raise TaptouchProtocolError(
                f"GET {path}: HTTP 200 but the envelope's '{api.ENVELOPE_DATA}' is {shown}; expected a list of "
                f"records. Nothing is loaded from an incomplete listing (the store is reported as failed)."
            )
        return 200, records, {**_hints(status, extras), _TIMESTAMP: status.get(api.ENVELOPE_TIMESTAMP)}

    def _api_error(self, response: httpx.Response, path: str, *, ack: int | None = None) -> TaptouchAPIError:
        """The error an answer describes; ``ack``: the envelope's error ack inside an HTTP 200 (the
        failure is then classified by it). Text the server sent is shown with every secret this
        client holds (and the bearer token the request carried) masked: a server may echo them."""
        http_status = response.status_code
        status = http_status if ack is None else ack
        body = parse_error_body(as_utf8(response.content, response.headers.get("content-type")))
        message = body.message if body.is_json else f"non-JSON body ({_peek(response)})"
        hint = NO_RETRY_HINTS.get(status)
        if 300 <= http_status < 400:
            message = f"the API answered with a redirect{redirect_target(response)}"
            hint = ("redirects are not followed (the access token would travel with them); set "
                    "TAPTOUCH_BASE_URL to the API's own address")
        elif hint is None and status not in RETRY_STATUSES and not 400 <= status < 600:
            hint = "the API answers a listing with 200 and the envelope; check TAPTOUCH_BASE_URL"
        if body.code == api.ERROR_STORE_FORBIDDEN:
            hint = "the merchant has not granted this store to the integration"
        cls = TaptouchRateLimitError if status == 429 else TaptouchAPIError
        return cls(status=status, ack=body.ack, code=self._redact(body.code, response),
                   message=self._redact(message, response), path=path,
                   parameter=self._redact(body.parameter, response), hint=hint, http_status=http_status)

    def _redact(self, text: str | None, response: httpx.Response) -> str | None:
        if not text:
            return text
        secrets = [getattr(self.auth, "_secret", None), _bearer(response)]
        token = getattr(self.auth, "_token", None)
        if token is not None:
            secrets.append(token.access_token)
        return redact_values(text, secrets)


_TIMESTAMP = "status.timestamp"  # the envelope's clock, carried with a page's hints

# Top-level envelope keys that may say more records follow (not in the contract; a server that
# sends them and contradicts a short last page is not trusted: see _check_last_page).
_HINT_FIELDS = (*api.PAGINATION_MORE_FIELDS, *api.PAGINATION_CONTAINERS)

_Envelope = msgspec.defstruct("_Envelope", [
    ("status", Any, None),
    ("data", msgspec.Raw, msgspec.Raw(b"")),  # empty: the key is missing
    *[(name, Any, None) for name in _HINT_FIELDS],
])
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])


def _refuse_repeated_keys(body: bytes, path: str) -> None:
    """A top-level key given twice (``"data": [...], "data": []``) leaves the listing ambiguous: a
    parser keeps one of them, and a replace from it could delete what the other listed."""
    keys: list[str] = []

    def hook(pairs: list[tuple[str, Any]]) -> None:
        keys[:] = [k for k, _ in pairs]  # the last call is the top-level object

    try:
        json.loads(body.decode("utf-8", "surrogateescape"), object_pairs_hook=hook)
    except (ValueError, RecursionError):
        return  # not JSON as a whole: the tolerant split decides
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise TaptouchProtocolError(
            f"GET {path}: HTTP 200 but the envelope gives {', '.join(repr(k) for k in repeated)} more than once; "
            f"the listing is ambiguous. Nothing is loaded from it (the store is reported as failed).")


def _kind_of(value: Any) -> str:
    if value is None:
        return "none"
    return f"{type(value).__name__} {str(value)[:20]!r}"


def _hints(status: Any, extras: dict[str, Any]) -> dict[str, Any]:
    """Pagination hints from the envelope's top level, its status, or a ``pagination``/``meta`` object."""
    found: dict[str, Any] = {}
    places = [extras, status if isinstance(status, dict) else {}]
    places += [extras.get(c) for c in api.PAGINATION_CONTAINERS if isinstance(extras.get(c), dict)]
    for place in places:
        for name in api.PAGINATION_MORE_FIELDS:
            if name in place and place[name] is not None:
                found.setdefault(name, place[name])
    return found


def _check_last_page(hints: dict[str, Any], what: str, index: int, records: int) -> None:
    """A short page ends the listing (the contract's rule), unless the server itself says that more
    records follow: then the listing is truncated, and nothing may be replaced from it. A ``total``
    is not checked: it is not in the contract, and while data changes under the paginator a count
    taken at one page's time differs from what the pages hold without anything being wrong."""
    for name in api.PAGINATION_MORE_FIELDS:
        if hints.get(name) is True:
            raise TaptouchProtocolError(
                f"{what}: page {index} is the last by the contract's rule (fewer records than asked for) but the "
                f"server says {name}=true; the listing may be truncated. Stopping without loading this store.")


def _bearer(response: httpx.Response) -> str | None:
    """The access token the request of ``response`` carried."""
    sent = response.request.headers.get("Authorization", "") if response.request is not None else ""
    scheme, _, token = sent.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _kind(data: bytes) -> str:
    return {b"{": "an object", b'"': "a string", b"t": "a boolean", b"f": "a boolean"}.get(data[:1], "a number")


def _split_tolerant(body: bytes) -> tuple[Any, bytes, list[bytes] | None, dict[str, Any]]:
    """(status, data token, records as exact bytes, pagination hints) of an envelope that strict
    JSON refuses.

    Python's JSON scanner (which reads NaN, lone surrogates, and, through surrogateescape, bytes
    that are not UTF-8) walks the top-level object; each element of ``data`` is cut out by its own
    span, so every record keeps its exact bytes. Raises ValueError when the body is not JSON at all."""
    text = body.decode("utf-8", "surrogateescape")
    dec = json.JSONDecoder(parse_float=Decimal, parse_constant=Decimal)
    n = len(text)

    def ws(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    i = ws(0)
    if i >= n or text[i] != "{":
        raise ValueError("not an object")
    status: Any = None
    data_token = b""
    records: list[bytes] | None = None
    extras: dict[str, Any] = {}
    i = ws(i + 1)
    if i < n and text[i] == "}":
        return status, data_token, records, extras
    while True:
        if i >= n or text[i] != '"':
            raise ValueError("expected a key")
        key, i = json.decoder.scanstring(text, i + 1)
        i = ws(i)
        if i >= n or text[i] != ":":
            raise ValueError("expected ':'")
        i = ws(i + 1)
        if key == api.ENVELOPE_DATA and i < n and text[i] == "[":
            records = []
            i = ws(i + 1)
            if i < n and text[i] == "]":
                i += 1
            else:
                while True:
                    j = _value_end(dec, text, i)
                    records.append(text[i:j].encode("utf-8", "surrogateescape"))
                    i = ws(j)
                    if i < n and text[i] == ",":
                        i = ws(i + 1)
                        continue
                    if i < n and text[i] == "]":
                        i += 1
                        break
                    raise ValueError("expected ',' or ']'")
            data_token = b"["
        else:
            value, j = dec.raw_decode(text, i)
            if key == api.ENVELOPE_STATUS:
                status = value
            elif key in _HINT_FIELDS and value is not None:
                extras[key] = value
            elif key == api.ENVELOPE_DATA:
                data_token = text[i:j].encode("utf-8", "surrogateescape")
                records = None
            i = j
        i = ws(i)
        if i < n and text[i] == ",":
            i = ws(i + 1)
            continue
        if i < n and text[i] == "}":
            break
        raise ValueError("expected ',' or '}'")
    if ws(i + 1) != n:
        raise ValueError("trailing data")
    return status, data_token, records, extras


def _value_end(dec: json.JSONDecoder, text: str, i: int) -> int:
    """Where the JSON value starting at ``i`` ends. A value nested deeper than the parsers recurse
    is skipped by matching brackets (outside strings), so that one record's depth costs only that
    record (the boundary quarantines it), not the page."""
    try:
        return dec.raw_decode(text, i)[1]
    except RecursionError:
        pass
    depth, n, in_str = 0, len(text), False
    while i < n:
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unterminated value")


def _parse(raw: bytes) -> Any:
    """A record as parsed JSON (``Decimal`` numbers); a record that is not JSON stays its bytes."""
    try:
        return jsonutil.loads(raw)
    except (ValueError, RecursionError):
        return raw


def _parse_page(page: list[bytes]) -> list[Any]:
    """Every record of a page as parsed JSON: one parse of the whole page when it is all JSON (the
    common case), else record by record."""
    try:
        return jsonutil.loads(b"[" + b",".join(page) + b"]")
    except (ValueError, RecursionError):
        return [_parse(r) for r in page]


def _peek(response: httpx.Response) -> str:
    ctype = response.headers.get("content-type", "?")
    return f"content-type {ctype}, {len(response.content)} bytes"
