"""The Taptouch client library: OAuth token manager, paginated client, typed errors, and the
Dagster resource that hands assets a configured client (docs/client.md).

Every module but ``resource`` imports neither Dagster nor psycopg. The public names below are
loaded on first use (:pep:`562`): ``from taptouch_resource import TaptouchClient`` imports the
client and httpx, ``TaptouchResource`` Dagster too, and ``taptouch_resource.api`` (the record
types a warehouse's decode workers need) neither.
"""

from importlib import import_module as _import_module
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


def _load(module: str) -> Any:
    """This package's ``module``; an AttributeError raised while it loads (say, a dependency that
    lost a name) is an ImportError here, never mistaken for a name this package lacks."""
    try:
        return _import_module(f".{module}", __name__)
    except AttributeError as exc:
        raise ImportError(f"cannot import {__name__}.{module}: {exc}") from exc


def __getattr__(name: str) -> Any:
    if name in _MODULES:  # ``taptouch_resource.client.X`` after a bare ``import taptouch_resource``
        return _load(name)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_load(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    # the Dagster resource is listed once loaded, as before: listing the package imports no Dagster
    return sorted(set(globals()) | ((set(_WHERE) | _MODULES) - {"TaptouchResource", "resource"}))
