"""Where tokens are kept between requests and processes: a small protocol, in memory by default.

:class:`~taptouch_resource.auth.ClientCredentialsAuth` caches its token on the instance. Given a
:class:`TokenPersistence` (``store=``), it also shares tokens with every other process that uses
the same persistence: the Dagster code location passes the Postgres token store
(``pipelines/warehouse/token_store.py``), which also keeps merchants' authorization-code grants.
This module holds only the shapes that cross that boundary; it imports neither Dagster nor psycopg.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .errors import TaptouchConfigError, TaptouchError

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_AUTHORIZATION_CODE = "authorization_code"
REFRESH_LIFETIME = 4 * 86400.0  # a refresh token is usable within 4 days [doc]


class TokenStoreError(TaptouchError):
    """The token store cannot be used as configured (e.g. the tokens were encrypted with another key)."""


def refresh_margin(lifetime: float) -> float:
    """How long before expiry a token is replaced: min(300 s, 10 % of its lifetime)."""
    return min(300.0, 0.1 * lifetime)


@dataclass(frozen=True)
class TokenResponse:
    """A successful token-endpoint answer (any grant), already validated (see ``auth.parse_lifetime``)."""

    access_token: str
    lifetime: float  # expires_in, seconds
    scopes: tuple[str, ...]
    refresh_token: str | None = None
    refresh_lifetime: float | None = None  # seconds, when the server says; else the documented 4 days

    def __repr__(self) -> str:  # never show the tokens
        return (
            f"TokenResponse(scopes={self.scopes!r}, lifetime={self.lifetime}, "
            f"refresh_token={'***' if self.refresh_token else None})"
        )


@dataclass(frozen=True)
class GrantKey:
    """Which grant: (base URL, client id, grant type, label)."""

    base_url: str
    client_id: str
    grant_type: str
    label: str

    @classmethod
    def client_credentials(cls, base_url: str, client_id: str, scopes: Sequence[str]) -> GrantKey:
        return cls(base_url, client_id, GRANT_CLIENT_CREDENTIALS, " ".join(sorted(set(scopes))))

    @classmethod
    def merchant(cls, base_url: str, client_id: str, merchant: str) -> GrantKey:
        if not merchant or not merchant.strip():
            raise TaptouchConfigError("The merchant label is empty: pass --merchant NAME (any name you choose).")
        return cls(base_url, client_id, GRANT_AUTHORIZATION_CODE, merchant.strip())

    def lock_id(self) -> int:
        """A 64-bit advisory-lock key for this grant."""
        digest = hashlib.sha256("\x1f".join(["taptouch-token", *self.__dict__.values()]).encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class StoredAccess:
    """A usable access token; ``expires_at`` is wall-clock (Unix) seconds."""

    access_token: str
    expires_at: float
    lifetime: float
    scopes: tuple[str, ...]

    def __repr__(self) -> str:
        return f"StoredAccess(scopes={self.scopes!r}, expires_at={self.expires_at:.0f})"


@runtime_checkable
class TokenPersistence(Protocol):
    """What an auth flow needs from a place that keeps tokens across processes."""

    def client_credentials(self, key: GrantKey, *, fetch: Callable[[], TokenResponse]) -> StoredAccess:
        """A fresh stored token for ``key``, calling ``fetch`` (once, under a lock) when there is none."""

    def merchant_access(self, key: GrantKey, *, refresh: Callable[[str], TokenResponse]) -> StoredAccess:
        """A fresh access token of a merchant grant, rotating its refresh token with ``refresh``."""

    def invalidate_access(self, key: GrantKey, access_token: str) -> None:
        """Forget ``access_token`` (refused with 401) so no process reuses it."""


class InMemoryTokens:
    """:class:`TokenPersistence` for one process: shares client-credentials tokens between auth
    objects of the process. Merchant grants need a durable store (the warehouse's)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[GrantKey, StoredAccess] = {}

    def client_credentials(self, key: GrantKey, *, fetch: Callable[[], TokenResponse]) -> StoredAccess:
        with self._lock:
            held = self._tokens.get(key)
            if held is not None and self._clock() < held.expires_at - refresh_margin(held.lifetime):
                return held
            issued = self._clock()
            answer = fetch()
            held = self._tokens[key] = StoredAccess(
                answer.access_token, issued + answer.lifetime, answer.lifetime, answer.scopes
            )
            return held

    def merchant_access(self, key: GrantKey, *, refresh: Callable[[str], TokenResponse]) -> StoredAccess:
        raise TokenStoreError(
            "A merchant grant is kept in the warehouse's token store; this process has none "
            "(set TAPTOUCH_DATABASE_URL, or run it through the Dagster code location)."
        )

    def invalidate_access(self, key: GrantKey, access_token: str) -> None:
        with self._lock:
            held = self._tokens.get(key)
            if held is not None and held.access_token == access_token:
                del self._tokens[key]
