"""Typed errors. Every message says what went wrong and what to do next; none contains a secret."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from . import api, jsonutil


def ack_status(value: Any) -> int | None:
    """An envelope ``ack`` as a status code: an int (or a numeric string, or an integral float) in
    100..599; None for anything else. One reading for API answers and token answers alike."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, (float, Decimal)) and math.isfinite(value) and value == int(value):
        value = int(value)
    return value if isinstance(value, int) and 100 <= value <= 599 else None


class TaptouchError(Exception):
    """Base class of every error raised by the Taptouch client."""


class TaptouchConfigError(TaptouchError, ValueError):
    """The client is configured in a way that cannot work or is unsafe (e.g. plain http to a remote host)."""


class TaptouchAuthError(TaptouchError):
    """Authentication failed: bad credentials, a revoked token, or a scope that was not granted.

    ``missing_scopes`` lists scopes that were asked for but not granted, when that is the cause.
    """

    def __init__(
        self, message: str, *, status: int | None = None, error: str | None = None, missing_scopes: tuple[str, ...] = ()
    ):
        super().__init__(message)
        self.status = status
        self.error = error
        self.missing_scopes = tuple(missing_scopes)


class TaptouchAPIError(TaptouchError):
    """The API answered with an error (HTTP status and/or envelope ``ack``).

    Attributes: ``status`` (the failure's status: the HTTP status, or the envelope's ``ack`` when an
    HTTP 200 carries an error ack, so that a 200 acking 503 is classified like a 503), ``http_status``
    (the HTTP status as sent), ``ack`` (envelope), ``code`` and ``message`` (from ``status.errors``),
    ``path`` (the request path, without query secrets), ``parameter`` (for 422).
    """

    def __init__(
        self,
        *,
        status: int,
        ack: Any = None,
        code: str | None = None,
        message: str | None = None,
        path: str = "",
        parameter: str | None = None,
        hint: str | None = None,
        http_status: int | None = None,
    ):
        self.status = status
        self.http_status = status if http_status is None else http_status
        self.ack = ack
        self.code = code
        self.message = message
        self.path = path
        self.parameter = parameter
        if self.http_status != status:
            parts = [f"Taptouch API error ack {status} (in an HTTP {self.http_status} answer)"]
        else:
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

    def __reduce__(self) -> tuple[Any, ...]:
        # its constructor takes keywords only: rebuilt from its message and attributes, so that it
        # crosses a process boundary (a process pool, a worker's answer) as raised
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[TaptouchAPIError], args: tuple[Any, ...], state: dict[str, Any]) -> TaptouchAPIError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class TaptouchRateLimitError(TaptouchAPIError):
    """HTTP 429 persisted after every retry the client was allowed."""


class TaptouchProtocolError(TaptouchError):
    """The server broke the protocol: a body that is not the envelope, a repeated page, too many pages."""


@dataclass(frozen=True)
class ErrorBody:
    """What an error answer says, from any of its forms: the envelope (``status.ack`` and
    ``status.errors`` with ``code``/``message``/``parameter``) or RFC 6749 §5.2
    (``error``/``error_description``, the token endpoint). ``is_json`` is False for a body that is
    not JSON (an HTML error page from a proxy)."""

    ack: Any = None
    code: str | None = None
    message: str | None = None
    parameter: str | None = None
    is_json: bool = True


def parse_error_body(body: bytes | str | Any) -> ErrorBody:
    """The one parser of error answers (API and token endpoint). ``body``: raw bytes, or a parsed doc."""
    if isinstance(body, (bytes, bytearray, str)):
        try:
            doc = jsonutil.loads(body)
        except ValueError:
            return ErrorBody(is_json=False)
    else:
        doc = body
    if not isinstance(doc, dict):
        return ErrorBody()
    if isinstance(doc.get("error"), str):  # RFC 6749
        return ErrorBody(code=_short(doc["error"], 100), message=_short(doc.get("error_description"), 500))
    status = doc.get(api.ENVELOPE_STATUS)
    if not isinstance(status, dict):
        return ErrorBody()
    errors = status.get(api.ENVELOPE_ERRORS)
    ack = status.get(api.ENVELOPE_ACK)
    if isinstance(errors, dict):
        return ErrorBody(
            ack=ack,
            code=_short(errors.get(api.ERROR_CODE) or errors.get("error"), 100),
            message=_short(errors.get(api.ERROR_MESSAGE) or errors.get("error_description"), 500),
            parameter=_short(errors.get(api.ERROR_PARAMETER), 200),
        )
    return ErrorBody(ack=ack, message=_short(errors, 500) if errors else None)


def _short(value: Any, limit: int) -> str | None:
    if value is None or value == "":
        return None
    return storable_text(str(value)[:limit])


def storable_text(text: str) -> str:
    """``text`` with a NUL shown as ``\\x00`` and a lone surrogate as ``\\udXXX``: a server's
    text may carry both (the API contract), and neither can be written to PostgreSQL's text or
    jsonb, encoded as UTF-8 or, in places, logged. Every text a server sent that the package puts
    in an error goes through it; the warehouse cleans what it writes with it too."""
    if "\x00" not in text and not _SURROGATE.search(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")


_SURROGATE = re.compile("[\ud800-\udfff]")
