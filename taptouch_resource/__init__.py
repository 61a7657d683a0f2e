"""Taptouch API client library: OAuth token manager, paginated client, Dagster resource, sandbox."""

from .api import ALL_SCOPES, DEFAULT_BASE_URL, InvalidRecord
from .auth import ClientCredentialsAuth
from .client import TaptouchClient
from .errors import (
    TaptouchAPIError,
    TaptouchAuthError,
    TaptouchConfigError,
    TaptouchError,
    TaptouchProtocolError,
    TaptouchRateLimitError,
)
from .resource import TaptouchResource

__all__ = [
    "ALL_SCOPES",
    "DEFAULT_BASE_URL",
    "ClientCredentialsAuth",
    "InvalidRecord",
    "TaptouchAPIError",
    "TaptouchAuthError",
    "TaptouchClient",
    "TaptouchConfigError",
    "TaptouchError",
    "TaptouchProtocolError",
    "TaptouchRateLimitError",
    "TaptouchResource",
]
