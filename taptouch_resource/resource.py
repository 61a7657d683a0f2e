"""``TaptouchResource``: the Dagster resource that hands assets a configured :class:`TaptouchClient`.

Configure it with ``dg.EnvVar`` so secrets stay out of code and of Dagster's run config::

    TaptouchResource(
        client_id=dg.EnvVar("TAPTOUCH_CLIENT_ID"),
        client_secret=dg.EnvVar("TAPTOUCH_CLIENT_SECRET"),
        base_url=dg.EnvVar("TAPTOUCH_BASE_URL"),   # optional; default https://api.taptouch.net
    )

Clients created by one process for the same credentials, scopes and base URL share one token
cache, so every asset of a run (and every thread) reuses the same access token.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Optional

import dagster as dg
import httpx
from pydantic import Field, PrivateAttr

from . import api
from .auth import ClientCredentialsAuth
from .client import DEFAULT_TIMEOUT, TaptouchClient, check_base_url
from .errors import TaptouchConfigError
from .retry import ClientStats

_auth_cache: dict[tuple, ClientCredentialsAuth] = {}
_auth_cache_lock = threading.Lock()


def shared_auth(*, client_id: str, client_secret: str, base_url: str, scopes: tuple[str, ...],
                timeout: httpx.Timeout, max_retries: int, transport: httpx.BaseTransport | None = None) -> ClientCredentialsAuth:
    """One token manager per (base URL, client id, secret, scopes) in this process."""
    key = (base_url, client_id, hashlib.sha256(client_secret.encode()).hexdigest(), tuple(sorted(scopes)), id(transport))
    with _auth_cache_lock:
        auth = _auth_cache.get(key)
        if auth is None:
            auth = _auth_cache[key] = ClientCredentialsAuth(
                client_id=client_id, client_secret=client_secret, token_url=base_url + api.TOKEN_PATH,
                scopes=scopes, timeout=timeout, max_retries=max_retries, transport=transport,
                stats=ClientStats(),
            )
        return auth


class TaptouchResource(dg.ConfigurableResource):
    """Taptouch API access for assets: credentials, base URL, paging, retries and rate limit.

    Environment variables (documented in the README): ``TAPTOUCH_CLIENT_ID``,
    ``TAPTOUCH_CLIENT_SECRET``, ``TAPTOUCH_BASE_URL``.
    """

    client_id: str = Field(description="OAuth client id (TAPTOUCH_CLIENT_ID).")
    client_secret: str = Field(description="OAuth client secret (TAPTOUCH_CLIENT_SECRET). Never logged.", repr=False)
    base_url: str = Field(default=api.DEFAULT_BASE_URL,
                          description="API base URL (TAPTOUCH_BASE_URL). https, or http only for loopback.")
    scopes: list[str] = Field(default_factory=lambda: list(api.ALL_SCOPES),
                              description="OAuth scopes to request.")
    timeout: float = Field(default=60.0, description="Read timeout per request, seconds (connect: 10 s).")
    page_size: int = Field(default=api.MAX_PAGE_SIZE, description="Records per page ('count'), 1..500.")
    max_retries: int = Field(default=5, description="Retries per request on 429, 5xx and network errors.")
    requests_per_second: Optional[float] = Field(
        default=10.0, description="Client-side request-rate limit shared by all threads of a client (None: off).")

    _transport: Any = PrivateAttr(default=None)

    def __repr__(self) -> str:
        return f"TaptouchResource(base_url={self.base_url!r}, client_id={self.client_id!r}, client_secret=***)"

    def with_transport(self, transport: httpx.BaseTransport) -> "TaptouchResource":
        """A copy that talks through ``transport`` (the in-process sandbox in tests)."""
        copy = self.model_copy()
        copy._transport = transport
        return copy

    def get_client(self) -> TaptouchClient:
        """A new client (cheap); token caches are shared per credentials within the process."""
        if not (self.client_id or "").strip():
            raise TaptouchConfigError("TAPTOUCH_CLIENT_ID is not set: set it to your Taptouch OAuth client id.")
        if not (self.client_secret or "").strip():
            raise TaptouchConfigError("TAPTOUCH_CLIENT_SECRET is not set: set it to your Taptouch OAuth client secret.")
        base_url = check_base_url(self.base_url or api.DEFAULT_BASE_URL)
        timeout = httpx.Timeout(self.timeout, connect=min(10.0, self.timeout))
        auth = shared_auth(client_id=self.client_id, client_secret=self.client_secret, base_url=base_url,
                           scopes=tuple(self.scopes), timeout=timeout, max_retries=self.max_retries,
                           transport=self._transport)
        return TaptouchClient(
            client_id=self.client_id, client_secret=self.client_secret, base_url=base_url,
            scopes=tuple(self.scopes), timeout=timeout, page_size=self.page_size, max_retries=self.max_retries,
            requests_per_second=self.requests_per_second, transport=self._transport, auth=auth,
        )
