"""Typed errors. Every message says what went wrong and what to do next; none contains a secret."""

from __future__ import annotations

from typing import Any


class TaptouchError(Exception):
    """Base class of every error raised by the Taptouch client."""


class TaptouchConfigError(TaptouchError, ValueError):
    """The client is configured in a way that cannot work or is unsafe (e.g. plain http to a remote host)."""


class TaptouchAuthError(TaptouchError):
    """Authentication failed: bad credentials, a revoked token, or a scope that was not granted.

    ``missing_scopes`` lists scopes that were asked for but not granted, when that is the cause.
    """

    def __init__(self, message: str, *, status: int | None = None, error: str | None = None,
                 missing_scopes: tuple[str, ...] = ()):
        super().__init__(message)
        self.status = status
        self.error = error
        self.missing_scopes = tuple(missing_scopes)


class TaptouchAPIError(TaptouchError):
    """The API answered with an error (HTTP status and/or envelope ``ack``).

    Attributes: ``status`` (HTTP), ``ack`` (envelope), ``code`` and ``message`` (from
    ``status.errors``), ``path`` (the request path, without query secrets), ``parameter`` (for 422).
    """

    def __init__(self, *, status: int, ack: Any = None, code: str | None = None, message: str | None = None,
                 path: str = "", parameter: str | None = None, hint: str | None = None):
        self.status = status
        self.ack = ack
        self.code = code
        self.message = message
        self.path = path
        self.parameter = parameter
        parts = [f"Taptouch API error HTTP {status}"]
        if ack is not None and ack != status:
            parts.append(f"(ack {ack})")
        parts.append(f"on {path}:" if path else ":")
        if code:
            parts.append(f"[{code}]")
        if message:
            parts.append(message)
        if parameter:
            parts.append(f"(parameter {parameter!r})")
        if hint:
            parts.append(f"-- {hint}")
        super().__init__(" ".join(parts))


class TaptouchRateLimitError(TaptouchAPIError):
    """HTTP 429 persisted after every retry the client was allowed."""


class TaptouchProtocolError(TaptouchError):
    """The server broke the protocol: a body that is not the envelope, a repeated page, too many pages."""
