"""``TaptouchResource``: the Dagster resource that hands assets a configured :class:`TaptouchClient`.

Credentials and base URL left unset are read, when a client is made, from ``TAPTOUCH_CLIENT_ID``,
``TAPTOUCH_CLIENT_SECRET`` and ``TAPTOUCH_BASE_URL``. Clients of one process share a token per
credentials; given the warehouse's token store, every process does. Grants (``grant=``,
``merchant=``): docs/authorization.md.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import dagster as dg
import httpx
from pydantic import Field

from . import api
from .auth import ClientCredentialsAuth, MerchantAuth
from .client import DEFAULT_REQUESTS_PER_SECOND, ClientOptions, TaptouchClient, check_base_url
from .errors import TaptouchConfigError
from .retry import ClientStats, RequestLimiter
from .tokens import TokenPersistence

ENV_CLIENT_ID = "TAPTOUCH_CLIENT_ID"
ENV_CLIENT_SECRET = "TAPTOUCH_CLIENT_SECRET"
ENV_BASE_URL = "TAPTOUCH_BASE_URL"
ENV_MERCHANT = "TAPTOUCH_MERCHANT"
ENV_DATABASE_URL = "TAPTOUCH_DATABASE_URL"
GRANTS = ("client_credentials", "authorization_code")

_auth_cache: dict[tuple[Any, ...], ClientCredentialsAuth] = {}
_auth_cache_lock = threading.Lock()


def shared_auth(
    *,
    client_id: str,
    client_secret: str,
    base_url: str,
    scopes: tuple[str, ...],
    timeout: httpx.Timeout,
    max_retries: int,
    transport: httpx.BaseTransport | None = None,
    token_store: TokenPersistence | None = None,
    merchant: str | None = None,
) -> ClientCredentialsAuth:
    """One token manager per (base URL, client id, secret, scopes, token store, merchant) in this process.

    ``token_store``: share tokens with other processes through it (its ``identity`` attribute, when
    it has one, says which stores are the same). ``merchant``: the merchant's authorization-code
    grant (needs a durable ``token_store``) instead of client credentials."""
    store_id = getattr(token_store, "identity", id(token_store)) if token_store is not None else None
    key = (
        base_url,
        client_id,
        hashlib.sha256(client_secret.encode()).hexdigest(),
        tuple(sorted(scopes)),
        id(transport),
        store_id,
        merchant,
    )
    with _auth_cache_lock:
        auth = _auth_cache.get(key)
        if auth is None:
            store = token_store
            common: dict[str, Any] = dict(
                client_id=client_id,
                client_secret=client_secret,
                token_url=base_url + api.TOKEN_PATH,
                scopes=scopes,
                timeout=timeout,
                max_retries=max_retries,
                transport=transport,
                stats=ClientStats(),
                store=store,
            )
            if merchant is not None:
                if store is None:
                    raise TaptouchConfigError(
                        "grant='authorization_code' keeps the merchant's tokens in the warehouse database: "
                        f"set {ENV_DATABASE_URL}, or pass token_store=."
                    )
                auth = MerchantAuth(merchant=merchant, **common)
            else:
                auth = ClientCredentialsAuth(**common)
            _auth_cache[key] = auth
        return auth


def checked_base_url(base_url: str, source: str = ENV_BASE_URL) -> str:
    """``base_url`` as :func:`~taptouch_resource.client.check_base_url` accepts it (https unless
    loopback, no credentials, a valid port, no trailing slash), and usable as a prefix of every
    request path: no whitespace inside, no query or fragment. Every error names ``source`` (the
    variable or field the value came from) and never echoes the URL (it could carry credentials)."""
    text = base_url.strip()
    try:
        checked = check_base_url(text)
        if any(ch.isspace() for ch in checked):
            raise TaptouchConfigError(
                f"{source} must not contain spaces: set it to a URL such as {api.DEFAULT_BASE_URL}."
            )
        if "?" in checked or "#" in checked:
            raise TaptouchConfigError(
                f"{source} must not have a query (?...) or fragment (#...): the API paths are "
                f"appended to it. Set it to the API's base URL, e.g. {api.DEFAULT_BASE_URL} "
                f"(a path prefix such as https://proxy.example/taptouch is fine)."
            )
    except TaptouchConfigError as err:
        message = str(err)
        if source != ENV_BASE_URL:
            message = message.replace(ENV_BASE_URL, source)
        if source not in message:
            message = f"{source}: {message}"
        raise TaptouchConfigError(message) from None
    return checked


class TaptouchResource(dg.ConfigurableResource):  # type: ignore[type-arg]  # generic only to type checkers
    """Taptouch API access for assets: credentials, base URL, paging, retries and rate limit.

    Every field is documented in the README's Settings table. A tunable left unset (None) takes the
    code location's value when a run starts (``pipelines.settings.for_run``: its variable, else the
    default), or the library default when the resource is used on its own.
    """

    client_id: str | None = Field(
        default=None, description="OAuth client id. Unset: the TAPTOUCH_CLIENT_ID environment variable."
    )
    client_secret: str | None = Field(
        default=None,
        repr=False,
        description="OAuth client secret. Unset: TAPTOUCH_CLIENT_SECRET. Never logged or shown.",
    )
    base_url: str | None = Field(
        default=None,
        description=f"API base URL. Unset: TAPTOUCH_BASE_URL, else {api.DEFAULT_BASE_URL}. "
        "https, or plain http only for loopback hosts (the sandbox).",
    )
    scopes: list[str] = Field(default_factory=lambda: list(api.ALL_SCOPES), description="OAuth scopes to request.")
    timeout: float = Field(default=60.0, description="Read timeout per request, seconds (connect: 10 s).")
    max_retries: int = Field(default=5, description="Retries per request on 429, 5xx and network errors.")
    page_size: int | None = Field(
        default=None, description="Records per API page, 1..500. Unset: TAPTOUCH_PAGE_SIZE, else 100."
    )
    requests_per_second: float | None = Field(
        default=None, description="Request-rate limit of a run, 0: none. Unset: TAPTOUCH_REQUESTS_PER_SECOND, else 10."
    )
    store_workers: int | None = Field(
        default=None, description="Stores fetched in parallel in a run. Unset: TAPTOUCH_STORE_WORKERS, else 4."
    )
    grant: str = Field(
        default="client_credentials",
        description="How the stores asset (integration.store) authenticates: 'client_credentials', or "
        "'authorization_code' with the grant stored by `taptouch-sync authorize --merchant NAME`. "
        "Orders and inventory always use client credentials.",
    )
    merchant: str | None = Field(
        default=None,
        description="With grant='authorization_code': the merchant label given to "
        "`taptouch-sync authorize`. Unset: TAPTOUCH_MERCHANT, else 'default'.",
    )
    share_tokens: bool = Field(
        default=True,
        description="Share tokens between processes through taptouch_auth.tokens in the "
        "warehouse database (when one is known).",
    )

    def __repr__(self) -> str:
        return f"TaptouchResource(base_url={self.base_url!r}, client_id={self.client_id!r}, client_secret=***)"

    __str__ = __repr__

    def resolved(self) -> tuple[str, str, str]:
        """(client id, client secret, base URL) from the fields, else the environment variables."""
        client_id = (self.client_id if self.client_id is not None else os.environ.get(ENV_CLIENT_ID, "")).strip()
        # surrounding whitespace is never part of a secret: it is a newline left by a secret file or `echo`
        secret = (
            self.client_secret if self.client_secret is not None else os.environ.get(ENV_CLIENT_SECRET, "")
        ).strip()
        configured = (self.base_url or "").strip()
        base_url = configured or os.environ.get(ENV_BASE_URL, "").strip() or api.DEFAULT_BASE_URL
        source = f"the resource's base_url ({ENV_BASE_URL})" if configured else ENV_BASE_URL
        if not client_id:
            raise TaptouchConfigError(
                f"{ENV_CLIENT_ID} is not set: set it to your Taptouch OAuth client id "
                f"(and {ENV_CLIENT_SECRET} to its secret). To try the project without credentials, run the demo: ./dev demo"
            )
        if not secret:
            raise TaptouchConfigError(
                f"{ENV_CLIENT_SECRET} is not set or empty: set it to the secret of Taptouch client {client_id!r}."
            )
        return client_id, secret, checked_base_url(base_url, source)

    def get_client(
        self, *, token_store: TokenPersistence | None = None, limiter: RequestLimiter | None = None
    ) -> TaptouchClient:
        """A new client (cheap) with client credentials; tokens are shared per credentials within the
        process and, given a ``token_store`` (the code location passes the warehouse's), by every
        process using that store. ``limiter``: the request-rate limiter (e.g. the warehouse's shared
        budget); unset, the client limits itself to ``requests_per_second``."""
        return self._client(token_store, merchant=None, scopes=tuple(self.scopes), limiter=limiter)

    def get_store_client(
        self, *, token_store: TokenPersistence | None = None, limiter: RequestLimiter | None = None
    ) -> TaptouchClient:
        """A client for the Store API (``integration.store``) with the configured ``grant``."""
        if self.grant not in GRANTS:
            raise TaptouchConfigError(f"grant must be one of {', '.join(GRANTS)}, got {self.grant!r}.")
        if self.grant == "client_credentials":
            return self.get_client(token_store=token_store, limiter=limiter)
        return self._client(token_store, merchant=self.merchant_label(), scopes=(api.SCOPE_STORE,), limiter=limiter)

    def _rate_limit(self) -> float | None:
        """The client's limit: unset -> the library default (10/s), 0 -> none."""
        rate = DEFAULT_REQUESTS_PER_SECOND if self.requests_per_second is None else self.requests_per_second
        return None if rate == 0 else rate  # a negative or non-finite rate: ClientOptions refuses it

    def merchant_label(self) -> str:
        return (self.merchant or "").strip() or os.environ.get(ENV_MERCHANT, "").strip() or "default"

    def _client(
        self,
        token_store: TokenPersistence | None,
        *,
        merchant: str | None,
        scopes: tuple[str, ...],
        limiter: RequestLimiter | None = None,
    ) -> TaptouchClient:
        client_id, secret, base_url = self.resolved()
        timeout = httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))
        if merchant is None and not self.share_tokens:
            token_store = None
        auth = shared_auth(
            client_id=client_id,
            client_secret=secret,
            base_url=base_url,
            scopes=scopes,
            timeout=timeout,
            max_retries=self.max_retries,
            transport=None,
            token_store=token_store,
            merchant=merchant,
        )
        options = ClientOptions(
            timeout=timeout,
            page_size=api.DEFAULT_PAGE_SIZE if self.page_size is None else self.page_size,
            max_retries=self.max_retries,
            requests_per_second=self._rate_limit(),
        )
        return TaptouchClient(
            client_id=client_id,
            client_secret=secret,
            base_url=base_url,
            scopes=scopes,
            options=options,
            auth=auth,
            limiter=limiter,
        )
