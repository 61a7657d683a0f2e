"""The Taptouch client library: OAuth token manager, paginated client, typed errors, and the
Dagster resource that hands assets a configured client (docs/client.md).

Every module but ``resource`` imports neither Dagster nor psycopg. The public names below are
loaded on first use (:pep:`562`): ``from taptouch_resource import TaptouchClient`` imports the
client and httpx, ``TaptouchResource`` Dagster too, and ``taptouch_resource.api`` (the record
types a warehouse's decode workers need) neither.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import ALL_SCOPES, DEFAULT_BASE_URL, InvalidRecord
    from .auth import ClientCredentialsAuth
    from .client import ClientOptions, TaptouchClient
    from .errors import (
        TaptouchAPIError,
        TaptouchAuthError,
        TaptouchConfigError,
        TaptouchError,
        TaptouchProtocolError,
        TaptouchRateLimitError,
    )
    from .resource import TaptouchResource
    from .tokens import InMemoryTokens, TokenPersistence

# public name -> the module (of this package) that defines it
_WHERE = {
    "ALL_SCOPES": "api",
    "DEFAULT_BASE_URL": "api",
    "InvalidRecord": "api",
    "ClientCredentialsAuth": "auth",
    "ClientOptions": "client",
    "TaptouchClient": "client",
    "TaptouchAPIError": "errors",
    "TaptouchAuthError": "errors",
    "TaptouchConfigError": "errors",
    "TaptouchError": "errors",
    "TaptouchProtocolError": "errors",
    "TaptouchRateLimitError": "errors",
    "TaptouchResource": "resource",
    "InMemoryTokens": "tokens",
    "TokenPersistence": "tokens",
}

__all__ = [  # the same names (tests/client/test_package.py)
    "ALL_SCOPES",
    "DEFAULT_BASE_URL",
    "ClientCredentialsAuth",
    "ClientOptions",
    "InMemoryTokens",
    "InvalidRecord",
    "TaptouchAPIError",
    "TaptouchAuthError",
    "TaptouchClient",
    "TaptouchConfigError",
    "TaptouchError",
    "TaptouchProtocolError",
    "TaptouchRateLimitError",
    "TaptouchResource",
    "TokenPersistence",
]


# the package's modules, found as attributes as when this file imported them all
_MODULES = frozenset({"api", "auth", "client", "errors", "http", "jsonutil", "listing", "resource", "retry", "tokens"})


def __getattr__(name: str) -> Any:
    if name in _MODULES:  # ``taptouch_resource.client.X`` after a bare ``import taptouch_resource``
        return import_module(f".{name}", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | _MODULES)
