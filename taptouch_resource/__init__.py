"""The Taptouch client library: OAuth token manager, paginated client, typed errors, and the
Dagster resource that hands assets a configured client (docs/client.md).

Every module but ``resource`` imports neither Dagster nor psycopg. ``TaptouchResource``
(``resource.py``) is the only Dagster import; it is loaded on first use of the name, so
``from taptouch_resource import TaptouchClient`` stays light.
"""

from typing import TYPE_CHECKING, Any

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
from .tokens import InMemoryTokens, TokenPersistence

if TYPE_CHECKING:
    from .resource import TaptouchResource

__all__ = [
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


def __getattr__(name: str) -> Any:
    if name == "TaptouchResource":  # the Dagster resource: imported on first use only
        from .resource import TaptouchResource

        return TaptouchResource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
