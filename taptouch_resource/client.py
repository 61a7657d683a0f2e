"""TaptouchClient: the listing methods, each request (rate limit, retries, typed errors) and the
envelope, read with msgspec so that every record keeps the exact bytes the API sent; a body strict
JSON refuses is split tolerantly, so one bad record is quarantined by the record boundary
(``pipelines.warehouse.records``), not lost with its page. The page rules are :mod:`.listing`'s.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from itertools import chain
from typing import Any, NoReturn
from urllib.parse import urlsplit

import httpx
import msgspec

from . import api, jsonutil
from .auth import ENV_HINT, ClientCredentialsAuth, redact_values
from .errors import (
    TaptouchAPIError,
    TaptouchAuthError,
    TaptouchConfigError,
    TaptouchProtocolError,
    TaptouchRateLimitError,
    ack_status,
    parse_error_body,
)
from .http import DEFAULT_DEADLINE, as_utf8, redirect_target, send_bounded, tls_verification_failed
from .listing import OrderListing, Page, Paginator, Params, iso
from .retry import (
    MIN_429_WAIT,
    RETRY_STATUSES,
    Backoff,
    ClientStats,
    RateLimiter,
    RequestLimiter,
    Retryable,
    parse_retry_after,
    with_retries,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds per read; connect: at most 10 s
DEFAULT_REQUESTS_PER_SECOND = 10.0  # the client's own rate limit (TAPTOUCH_REQUESTS_PER_SECOND's default)
DEFAULT_MAX_PAGES = 100_000
# A page of 500 orders is about 1 MB of JSON; no real page comes near this (decoded size).
DEFAULT_MAX_RESPONSE_BYTES = 64 * 2**20
NO_RETRY_HINTS = {
    400: "the request was malformed",
    403: "the token may not read this resource",
    404: "check the store id and TAPTOUCH_BASE_URL",
    422: "a parameter was refused",
}
_OUTAGE = (
    "Taptouch kept failing until the retries ran out (an outage or overload on its side): the step's retry policy "
    "runs it again; if it persists, re-run the partition later (nothing of this listing was loaded)"
)
EXHAUSTED_HINTS = {
    429: "Taptouch answered 429 (too many requests) until the retries or their time budget ran out: lower "
    "TAPTOUCH_REQUESTS_PER_SECOND (an account's TAPTOUCH_<NAME>_REQUESTS_PER_SECOND; one budget for every run of "
    "this client id) or run fewer runs at once; the step's retry policy runs it again",
    **{status: _OUTAGE for status in RETRY_STATUSES - {429}},
}
"""Hints of the statuses that are retried, for the error raised once the retries are spent."""


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
        if parts is not None and parts.scheme in ("http", "https"):
            shown = f"a {parts.scheme}:// URL without a host"
        else:
            shown = f"a {parts.scheme}:// URL" if parts is not None and parts.scheme else "a value that is not a URL"
        raise TaptouchConfigError(
            f"TAPTOUCH_BASE_URL must be an https:// URL such as {api.DEFAULT_BASE_URL}, got {shown}."
        )
    try:
        port_ok = parts.port != 0  # reading it checks it (0 is no port a server listens on)
    except ValueError:
        port_ok = False
    if not port_ok:
        raise TaptouchConfigError(
            "TAPTOUCH_BASE_URL has an invalid port: use https://HOST or https://HOST:PORT with PORT from 1 to 65535."
        )
    if parts.scheme == "http" and not is_loopback(hostname):
        raise TaptouchConfigError(
            f"Refusing plain http to {hostname}: credentials and tokens would travel unencrypted. "
            f"Use https:// (plain http is allowed only for loopback hosts such as the sandbox)."
        )
    if parts.username or parts.password:
        raise TaptouchConfigError("TAPTOUCH_BASE_URL must not contain credentials; use TAPTOUCH_CLIENT_ID/SECRET.")
    return base_url.strip().rstrip("/")


@dataclass(frozen=True)
class ClientOptions:
    """The client's tunables, each with a safe default.

    ``timeout``: seconds per read (connect: at most 10 s), or an ``httpx.Timeout``. ``page_size``:
    records per page, 1..500. ``max_pages``: pages of one listing before it is refused.
    ``max_retries``, ``retry_budget`` (seconds of waiting for one request, all retries together) and
    ``backoff_cap`` (the longest back-off step): the retry engine. ``requests_per_second``: the
    client's own rate limit when no ``limiter`` is given (None or 0: none). ``max_connections``: the
    connection pool. ``max_response_bytes``: the largest decoded answer read. ``deadline``: seconds
    for one whole answer, however slowly it trickles in.
    """

    timeout: float | httpx.Timeout = DEFAULT_TIMEOUT
    page_size: int = api.DEFAULT_PAGE_SIZE
    max_pages: int = DEFAULT_MAX_PAGES
    max_retries: int = 5
    retry_budget: float = 600.0
    backoff_cap: float = 30.0
    requests_per_second: float | None = DEFAULT_REQUESTS_PER_SECOND
    max_connections: int = 16
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    deadline: float | None = DEFAULT_DEADLINE

    def __post_init__(self) -> None:
        def whole(name: str, low: int, high: float = math.inf) -> None:
            value = getattr(self, name)
            if value.__class__ is not int or not low <= value <= high:
                span = f"from {low} to {high}" if high != math.inf else f"{low} or more"
                raise TaptouchConfigError(f"{name} must be a whole number {span}, got {value!r}.")

        def seconds(name: str, *, optional: bool = False, zero: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
                or (value == 0 and not zero)
            ):
                allowed = "0 or more" if zero else "more than 0"
                raise TaptouchConfigError(f"{name} must be a number of seconds, {allowed}, got {value!r}.")

        whole("page_size", 1, api.MAX_PAGE_SIZE)
        whole("max_pages", 1)
        whole("max_retries", 0)
        whole("max_connections", 1)
        whole("max_response_bytes", 1)
        if isinstance(self.timeout, httpx.Timeout):  # (the Dagster resource passes one)
            for part in ("connect", "read", "write", "pool"):
                value = getattr(self.timeout, part)
                if value is not None and (not math.isfinite(value) or value <= 0):
                    raise TaptouchConfigError(
                        f"timeout ({part}) must be a number of seconds, more than 0, got {value!r}."
                    )
        else:
            seconds("timeout")
        seconds("retry_budget", zero=True)
        seconds("backoff_cap", zero=True)
        seconds("deadline", optional=True)
        rate = self.requests_per_second
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0
        ):
            raise TaptouchConfigError(f"requests_per_second must be None or 0 (no limit) or positive, got {rate!r}.")

    def http_timeout(self) -> httpx.Timeout:
        timeout = self.timeout
        return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=min(10.0, timeout))

    def with_overrides(self, overrides: dict[str, Any]) -> ClientOptions:
        """These options with some fields replaced; an unknown name is a TypeError naming it."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"TaptouchClient() got unexpected keyword argument(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **overrides) if overrides else self


class TaptouchClient:
    """A client for the Taptouch integration API.

    Keyword-only; every argument has a safe default except the credentials. The tunables come in
    ``options`` (:class:`ClientOptions`); each may also be given as a keyword of its own
    (``page_size=500``), which overrides ``options``. ``transport`` lets tests and the in-process
    sandbox run without sockets; ``auth``: a token manager to share (its ``stats`` are used);
    ``limiter``: e.g. the shared budget of ``pipelines.warehouse.budget`` (default: the client's own
    :class:`~taptouch_resource.retry.RateLimiter`); ``sleep`` and ``clock`` (Unix seconds): a test's
    clock. One client is safe to
    share between threads: the token cache, the rate limiter and the counters are shared.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        base_url: str = api.DEFAULT_BASE_URL,
        scopes: tuple[str, ...] | list[str] = api.ALL_SCOPES,
        options: ClientOptions | None = None,
        transport: httpx.BaseTransport | None = None,
        auth: ClientCredentialsAuth | None = None,
        limiter: RequestLimiter | None = None,
        verify: Any = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        **tunables: Any,
    ):
        if verify is False:
            raise TaptouchConfigError(
                "TLS verification cannot be switched off. To trust a private CA, pass verify= a CA "
                "bundle path or an ssl.SSLContext."
            )
        self.options = opts = (options or ClientOptions()).with_overrides(tunables)
        self.base_url = check_base_url(base_url)
        self._sleep = sleep
        self._clock = clock
        timeout = opts.http_timeout()
        self.stats = auth.stats if auth is not None else ClientStats()
        self._backoff = Backoff(max_retries=opts.max_retries, cap=opts.backoff_cap, budget=opts.retry_budget)
        self.auth = auth or ClientCredentialsAuth(
            client_id=client_id,
            client_secret=client_secret,
            token_url=self.base_url + api.TOKEN_PATH,
            scopes=scopes,
            transport=transport,
            timeout=timeout,
            max_retries=opts.max_retries,
            backoff=self._backoff,
            sleep=sleep,
            stats=self.stats,
            verify=verify,
            deadline=opts.deadline,
        )
        self.limiter: RequestLimiter = (
            limiter if limiter is not None else RateLimiter(opts.requests_per_second, sleep=sleep)
        )
        limits = httpx.Limits(max_connections=opts.max_connections, max_keepalive_connections=opts.max_connections)
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=self.auth,
            timeout=timeout,
            transport=transport,
            verify=verify,
            limits=limits,
            headers={"Accept": "application/json", "User-Agent": "taptouch-sync/0.1"},
            # plain http is allowed to loopback only: never through a proxy the environment names
            trust_env=urlsplit(self.base_url).scheme != "http",
        )

    @property
    def page_size(self) -> int:
        return self.options.page_size

    @property
    def max_pages(self) -> int:
        return self.options.max_pages

    def __repr__(self) -> str:
        return f"TaptouchClient(base_url={self.base_url!r}, client_id={self.auth.client_id!r})"

    def __enter__(self) -> TaptouchClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- the listings ----------------------------------------------------------------------------
    def list_stores(self) -> Iterator[Any]:
        """Every store the token may read (``integration.store``)."""
        return _parsed(self._paginate(api.STORES_PATH, {}, "stores"))

    def iter_orders(
        self, store_id: int, *, updated_from: datetime | str, updated_to: datetime | str, status: str | None = None
    ) -> Iterator[Any]:
        """Orders of one store with ``updated_at`` in ``[updated_from, updated_to)``, latest versions."""
        pages = self.iter_order_pages(store_id, updated_from=updated_from, updated_to=updated_to, status=status)
        return chain.from_iterable(pages)

    def iter_order_pages(
        self, store_id: int, *, updated_from: datetime | str, updated_to: datetime | str, status: str | None = None
    ) -> Iterator[list[Any]]:
        """Like :meth:`iter_orders`, one list per API page."""
        for page in self.iter_order_record_pages(
            store_id, updated_from=updated_from, updated_to=updated_to, status=status
        ):
            yield _parse_page(page)

    def iter_order_record_pages(
        self,
        store_id: int,
        *,
        updated_from: datetime | str,
        updated_to: datetime | str,
        status: str | None = None,
        confirm_end: bool = False,
        late: timedelta = timedelta(0),
    ) -> OrderListing:
        """Like :meth:`iter_order_pages`, each record as the exact JSON bytes the API sent (what the
        loader stages: no parsing into Python objects on the way).

        The pages come from an :class:`~taptouch_resource.listing.OrderListing` (keyset pages checked
        to be in order, else a verifying pass), which tells afterwards whether the listing is
        ``complete``, when it ``started_at`` (the API's clock, never after this machine's), and the
        ``newest`` instant read.
        ``confirm_end``: the last page is asked for twice, ``late``: how late a record may reach
        the listing (see :class:`OrderListing`)."""
        params: Params = {api.PARAM_UPDATED_TO: iso(updated_to)}
        if status:
            params[api.PARAM_STATUS] = status
        paginator = self._paginator(api.ORDERS_PATH.format(store_id=int(store_id)), f"store {store_id} orders")
        return OrderListing(
            paginator,
            params=params,
            updated_from=updated_from,
            updated_to=updated_to,
            confirm_end=confirm_end,
            late=late,
            clock=self._clock,
        )

    def iter_inventory(self, store_id: int, *, updated_from: datetime | str | None = None) -> Iterator[Any]:
        """Current stock levels of one store (``integration.inventory``)."""
        return _parsed(self._inventory_pages(store_id, updated_from))

    def iter_inventory_records(self, store_id: int, *, updated_from: datetime | str | None = None) -> Iterator[bytes]:
        """Like :meth:`iter_inventory`, each record as the exact JSON bytes the API sent."""
        return chain.from_iterable(self._inventory_pages(store_id, updated_from))

    def _inventory_pages(self, store_id: int, updated_from: datetime | str | None) -> Iterator[list[bytes]]:
        params: Params = {} if updated_from is None else {api.PARAM_UPDATED_FROM: iso(updated_from)}
        # a listing that delists what it misses: its end is asked for twice (an answer cut short
        # looks like the end)
        return self._paginator(
            api.INVENTORY_PATH.format(store_id=int(store_id)), f"store {store_id} inventory"
        ).paginate(params, confirm_end=updated_from is None)

    # -- pagination ----------------------------------------------------------------------------
    def _paginator(self, path: str, what: str) -> Paginator:
        """The page rules of ``path``, each page one retried request of this client."""
        return Paginator(
            lambda params: self._get(path, params),
            page_size=self.page_size,
            max_pages=self.max_pages,
            what=what,
            stats=self.stats,
        )

    def _paginate(self, path: str, params: Params, what: str) -> Iterator[list[bytes]]:
        """The pages of ``path`` by page number (see :meth:`Paginator.paginate`), each a list of the
        records' exact bytes."""
        return self._paginator(path, what).paginate(params)

    # -- one request ---------------------------------------------------------------------------
    def _get(self, path: str, params: Params) -> Page:
        """One page (``data`` of the envelope, its clock and pagination hints), retried by the shared
        engine on 429, 5xx, network errors and an envelope whose ``ack`` is one of those; an envelope
        acking 401 gets one fresh token, like an HTTP 401."""
        state = {"ack_401": False}
        return with_retries(
            lambda: self._attempt(path, params, state),
            what=f"GET {path}",
            backoff=self._backoff,
            stats=self.stats,
            sleep=self._sleep,
        )

    def _attempt(self, path: str, params: Params, state: dict[str, bool]) -> Page:
        response = self._send(path, params)
        status = response.status_code
        if status == 200:
            ack, page = self._envelope(response, path)
            if page is not None:
                return page
            if ack == 401:
                self._refused_token(response, path, state, ack=True)
            error = self._api_error(response, path, ack=ack)
            if ack in RETRY_STATUSES:  # HTTP 200 whose envelope acks a retryable failure: ack is the
                # HTTP code (the contract), so an acked 429 slows everyone down as an HTTP 429 does
                raise self._retryable(response, error, ack, f"ack {ack} in an HTTP 200")
            raise error
        if status == 401:
            self._refused_token(response, path, state, ack=False)
        if status not in RETRY_STATUSES:
            raise self._api_error(response, path)
        raise self._retryable(response, self._api_error(response, path), status, f"HTTP {status}")

    def _retryable(self, response: httpx.Response, error: TaptouchAPIError, status: int, what: str) -> Retryable:
        """A retryable answer (``status``: its HTTP code, or its envelope's ack), counted; a 429
        holds back every request sharing the limiter (its ``Retry-After``, at least 1 s)."""
        wait = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
        if status == 429:
            self.stats.add(rate_limited=1)
            self.limiter.penalize(MIN_429_WAIT if wait is None else wait)  # everyone sharing the limiter slows down
            return Retryable(what, error, rate_limited=True, wait=wait)
        self.stats.add(server_errors=1)
        return Retryable(what, error, wait=wait)

    def _send(self, path: str, params: Params) -> httpx.Response:
        """One GET once the limiter allows it; a network error is :class:`Retryable`, unless no retry
        can cure it (an unusable URL, a certificate that does not verify)."""
        waited = self.limiter.acquire()
        self.stats.add(requests=1, waited_seconds=waited)
        try:
            response = send_bounded(
                self._http,
                "GET",
                path,
                params=params,
                limit=self.options.max_response_bytes,
                what=f"GET {path}",
                deadline=self.options.deadline,
            )
        except httpx.TransportError as exc:
            self.stats.add(network_errors=1)
            if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
                raise TaptouchConfigError(
                    f"Cannot reach the API at {self.base_url}: {type(exc).__name__}. Check TAPTOUCH_BASE_URL."
                ) from None
            if tls_verification_failed(exc):
                raise TaptouchConfigError(
                    f"The TLS certificate of {urlsplit(self.base_url).hostname} could not be verified (retrying "
                    f"cannot cure that). Check TAPTOUCH_BASE_URL; to trust a private CA pass verify= a CA bundle."
                ) from None
            raise Retryable(
                type(exc).__name__,
                TaptouchAPIError(
                    status=0,
                    path=path,
                    message=f"network error {type(exc).__name__}, retries exhausted",
                    hint=f"check that {self.base_url} is reachable",
                ),
            ) from None
        return response

    def _refused_token(self, response: httpx.Response, path: str, state: dict[str, bool], *, ack: bool) -> NoReturn:
        """A 401 (HTTP, after the auth flow's one refresh; or an envelope ack, refreshed here once)."""
        sent = _bearer(response)
        error = TaptouchAuthError(
            f"Taptouch refused the access token {'(ack 401 in an HTTP 200)' if ack else '(HTTP 401)'} on {path}, "
            f"a fresh one too: the token was revoked or the client was disabled. {ENV_HINT}",
            status=401,
            error=self._redact(parse_error_body(response.content).code, response),
        )
        if ack and not state["ack_401"]:
            state["ack_401"] = True
            self.stats.add(unauthorized=1)
            if sent:
                self.auth.invalidate(sent)
            raise Retryable("ack 401: fetching a fresh token", error, wait=0.0)
        raise error

    def _envelope(self, response: httpx.Response, path: str) -> tuple[int, Page | None]:
        """(``ack``, with ack 200 the page: its records each as its exact bytes, the envelope's clock and
        whether it says more records follow). A body that is not the envelope, an ``ack`` that is not a
        status code, or (with ack 200) missing, null or non-list ``data`` is a protocol error."""
        body = as_utf8(response.content, response.headers.get("content-type"))
        extras: dict[str, Any] = {}
        try:
            env: Any = _ENVELOPE.decode(body)  # a struct defined at run time (its hint fields)
            status, data = env.status, bytes(env.data)
            extras = {name: getattr(env, name) for name in _HINT_FIELDS if getattr(env, name) is not None}
            records = None if data in (b"", b"null") or data[:1] != b"[" else [bytes(r) for r in _RAW_LIST.decode(data)]
        except msgspec.ValidationError:  # JSON, but not an object
            raise TaptouchProtocolError(
                f"GET {path}: the response is not the Taptouch envelope (no 'status' object)."
            ) from None
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
                status=200,
                ack=status.get(api.ENVELOPE_ACK),
                path=path,
                message=f"the envelope's status has no usable '{api.ENVELOPE_ACK}' (got "
                f"{_kind_of(status.get(api.ENVELOPE_ACK))}); success cannot be told from failure, so nothing "
                f"is loaded from it",
                hint="check that TAPTOUCH_BASE_URL is the Taptouch API",
            )
        if ack != 200:
            return ack, None
        if records is None:
            shown = "missing" if data == b"" else "null" if data == b"null" else f"not a list ({_kind(data)})"
            raise TaptouchProtocolError(
                f"GET {path}: HTTP 200 but the envelope's '{api.ENVELOPE_DATA}' is {shown}; expected a list of "
                f"records. Nothing is loaded from an incomplete listing (the store is reported as failed)."
            )
        return 200, Page(records, status.get(api.ENVELOPE_TIMESTAMP), _says_more(status, extras))

    def _api_error(self, response: httpx.Response, path: str, *, ack: int | None = None) -> TaptouchAPIError:
        """The error an answer describes; ``ack``: the envelope's error ack inside an HTTP 200 (the
        failure is then classified by it). Text the server sent is shown with every secret this
        client holds (and the bearer token the request carried) masked: a server may echo them."""
        http_status = response.status_code
        status = http_status if ack is None else ack
        body = parse_error_body(as_utf8(response.content, response.headers.get("content-type")))
        message = body.message if body.is_json else f"non-JSON body ({_peek(response)})"
        hint = NO_RETRY_HINTS.get(status) or EXHAUSTED_HINTS.get(status)
        if 300 <= http_status < 400:
            message = f"the API answered with a redirect{redirect_target(response)}"
            hint = (
                "redirects are not followed (the access token would travel with them); set "
                "TAPTOUCH_BASE_URL to the API's own address"
            )
        elif hint is None and status not in RETRY_STATUSES and not 400 <= status < 600:
            hint = "the API answers a listing with 200 and the envelope; check TAPTOUCH_BASE_URL"
        if body.code == api.ERROR_STORE_FORBIDDEN:
            hint = "the merchant has not granted this store to the integration"
        cls = TaptouchRateLimitError if status == 429 else TaptouchAPIError
        return cls(
            status=status,
            ack=body.ack,
            code=self._redact(body.code, response),
            message=self._redact(message, response),
            path=path,
            parameter=self._redact(body.parameter, response),
            hint=hint,
            http_status=http_status,
        )

    def _redact(self, text: str | None, response: httpx.Response) -> str | None:
        if not text:
            return text
        return redact_values(text, [*self.auth.held_secrets(), _bearer(response)])


# Top-level envelope keys that may say more records follow (not in the contract; a server that
# sends them and contradicts a short last page is not trusted: see Paginator.page).
_HINT_FIELDS = (*api.PAGINATION_MORE_FIELDS, *api.PAGINATION_CONTAINERS)

_Envelope = msgspec.defstruct(
    "_Envelope",
    [
        ("status", Any, None),
        ("data", msgspec.Raw, msgspec.Raw(b"")),  # empty: the key is missing
        *[(name, Any, None) for name in _HINT_FIELDS],
    ],
)
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
            f"the listing is ambiguous. Nothing is loaded from it (the store is reported as failed)."
        )


def _kind_of(value: Any) -> str:
    if value is None:
        return "none"
    return f"{type(value).__name__} {str(value)[:20]!r}"


def _says_more(status: Any, extras: dict[str, Any]) -> str | None:
    """The name of the first pagination hint (the envelope's top level, its status, or a
    ``pagination``/``meta`` object, first found wins) that says more records follow (``true``).
    A ``total`` is not read: it is not in the contract, and while data changes under the paginator a
    count taken at one page's time differs from what the pages hold without anything being wrong."""
    places: list[dict[str, Any]] = [extras, status if isinstance(status, dict) else {}]
    places += [extras[c] for c in api.PAGINATION_CONTAINERS if isinstance(extras.get(c), dict)]
    for name in api.PAGINATION_MORE_FIELDS:
        value = next((place[name] for place in places if place.get(name) is not None), None)
        if value is True:
            return name
    return None


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
    split = _TolerantSplit(body.decode("utf-8", "surrogateescape"))
    split.run()
    return split.status, split.data_token, split.records, split.extras


class _TolerantSplit:
    """One walk of :func:`_split_tolerant` over ``text``: its results in the attributes."""

    def __init__(self, text: str):
        self.text, self.n = text, len(text)
        self.dec = json.JSONDecoder(parse_float=Decimal, parse_constant=Decimal)
        self.status: Any = None
        self.data_token = b""
        self.records: list[bytes] | None = None
        self.extras: dict[str, Any] = {}

    def run(self) -> None:
        i = self._ws(0)
        if not self._at(i, "{"):
            raise ValueError("not an object")
        i = self._ws(i + 1)
        if self._at(i, "}"):
            return
        while True:
            if not self._at(i, '"'):
                raise ValueError("expected a key")
            key, i = json.decoder.scanstring(self.text, i + 1)  # type: ignore[attr-defined]
            i = self._ws(i)
            if not self._at(i, ":"):
                raise ValueError("expected ':'")
            i = self._ws(self._member(key, self._ws(i + 1)))
            if self._at(i, ","):
                i = self._ws(i + 1)
                continue
            if self._at(i, "}"):
                break
            raise ValueError("expected ',' or '}'")
        if self._ws(i + 1) != self.n:
            raise ValueError("trailing data")

    def _member(self, key: str, i: int) -> int:
        """Reads the value of ``key`` at ``i``; returns where it ends."""
        if key == api.ENVELOPE_DATA and self._at(i, "["):
            self.data_token = b"["
            return self._record_list(i)
        value, j = self.dec.raw_decode(self.text, i)
        if key == api.ENVELOPE_STATUS:
            self.status = value
        elif key in _HINT_FIELDS and value is not None:
            self.extras[key] = value
        elif key == api.ENVELOPE_DATA:
            self.data_token = self.text[i:j].encode("utf-8", "surrogateescape")
            self.records = None
        return j

    def _record_list(self, i: int) -> int:
        """The records of the list at ``i``, each cut out by its own span; returns where it ends."""
        records: list[bytes] = []
        self.records = records
        i = self._ws(i + 1)
        if self._at(i, "]"):
            return i + 1
        while True:
            j = _value_end(self.dec, self.text, i)
            records.append(self.text[i:j].encode("utf-8", "surrogateescape"))
            i = self._ws(j)
            if self._at(i, ","):
                i = self._ws(i + 1)
                continue
            if self._at(i, "]"):
                return i + 1
            raise ValueError("expected ',' or ']'")

    def _at(self, i: int, char: str) -> bool:
        return i < self.n and self.text[i] == char

    def _ws(self, i: int) -> int:
        text, n = self.text, self.n
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i


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


def _parsed(pages: Iterable[list[bytes]]) -> Iterator[Any]:
    """The records of ``pages`` as parsed JSON, one by one."""
    for page in pages:
        yield from _parse_page(page)


def _parse_page(page: list[bytes]) -> list[Any]:
    """Every record of a page as parsed JSON: one parse of the whole page when it is all JSON (the
    common case), else record by record."""
    try:
        records: list[Any] = jsonutil.loads(b"[" + b",".join(page) + b"]")
        return records
    except (ValueError, RecursionError):
        return [_parse(r) for r in page]


def _peek(response: httpx.Response) -> str:
    ctype = response.headers.get("content-type", "?")
    return f"content-type {ctype}, {len(response.content)} bytes"
