"""Reading an answer with a size limit and a total deadline, for the API and the token endpoint alike."""

from __future__ import annotations

import codecs
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

from .errors import TaptouchProtocolError

# However slowly a server trickles its answer, one request ends after this many seconds (httpx's
# timeouts bound each read, not the whole answer: a byte every 59 s would otherwise never end).
DEFAULT_DEADLINE = 300.0


def send_bounded(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    limit: int,
    what: str,
    deadline: float | None = DEFAULT_DEADLINE,
    clock: Callable[[], float] = time.monotonic,
    **kwargs: Any,
) -> httpx.Response:
    """``http.request(method, url, **kwargs)`` with at most ``limit`` bytes of the decoded body read:
    a compressed answer that unpacks to gigabytes (a zip bomb) is refused instead of exhausting
    memory. The body must be complete within ``deadline`` seconds of the headers, else
    :class:`httpx.ReadTimeout` (a network fault: the caller retries it). A body that does not decode
    as its ``Content-Encoding`` says is a :class:`TaptouchProtocolError`. Returns a fully read
    response (its body already decoded)."""
    with http.stream(method, url, **kwargs) as streamed:
        started = clock()  # the body's deadline: the token fetch (its own deadline) and the headers are before
        chunks, size = [], 0
        try:
            for chunk in streamed.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise TaptouchProtocolError(
                        f"{what} answered more than {limit} bytes once decompressed; refusing it."
                    )
                chunks.append(chunk)
                if deadline is not None and clock() - started > deadline:
                    raise httpx.ReadTimeout(
                        f"the answer took longer than {deadline:.0f} s in total", request=streamed.request
                    )
        except httpx.DecodingError:
            encoding = printable(streamed.headers.get("content-encoding", "?"), 40)
            raise TaptouchProtocolError(
                f"{what} sent a body that is not valid {encoding} although its Content-Encoding says so; "
                f"the answer cannot be read (a misconfigured server or proxy)."
            ) from None
    headers = [(k, v) for k, v in streamed.headers.items() if k.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(streamed.status_code, headers=headers, content=b"".join(chunks), request=streamed.request)


def redirect_target(response: httpx.Response) -> str:
    """`` to https://host`` of a redirect (scheme and host only: a query could carry anything)."""
    try:
        target = urlsplit(response.headers.get("location", ""))
        host = target.hostname
    except ValueError:
        return ""
    if not host:
        return " (same host)" if response.headers.get("location") else ""
    shown = "".join(c for c in f"{target.scheme}://{host}" if c.isalnum() or c in ":/.-[]")[:100]
    return f" to {shown}"


def tls_verification_failed(exc: BaseException) -> bool:
    """True when ``exc`` (an httpx transport error) comes from a certificate that failed verification:
    a configuration problem that no retry cures."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def printable(text: str, limit: int) -> str:
    """The first ``limit`` characters of a server-given value, fit to quote in an error (printable
    ASCII only: no control characters or look-alikes reach a log)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


_UTF8 = {"utf-8", "utf8", "utf_8"}
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def as_utf8(body: bytes, content_type: str | None) -> bytes:
    """``body`` as UTF-8 JSON text: a UTF-8 byte-order mark dropped (RFC 8259 §8.1 lets a parser
    ignore it), a UTF-16/32 body (by its BOM) or a body in the charset its ``Content-Type`` names
    re-encoded. A body that is valid UTF-8 is never re-read in a declared charset (a server that
    says latin-1 but sends UTF-8 is common; reading it as latin-1 would garble every accent)."""
    if body.startswith(codecs.BOM_UTF8):
        return body[len(codecs.BOM_UTF8) :]
    for bom, codec in _BOMS:
        if body.startswith(bom):
            try:
                return body.decode(codec).encode("utf-8", "surrogatepass")
            except UnicodeError:
                return body
    charset = _charset(content_type)
    if charset is None or charset in _UTF8:
        return body
    if not charset.startswith(("utf-16", "utf-32", "utf16", "utf32")):  # those are never valid UTF-8 JSON
        try:
            body.decode("utf-8")
            return body  # ASCII or UTF-8, whatever the header says
        except UnicodeDecodeError:
            pass
        text = body.decode("utf-8", "surrogateescape")
        if any(ord(c) >= 0x80 and not 0xDC80 <= ord(c) <= 0xDCFF for c in text):
            return body  # UTF-8 with a broken record somewhere: the record boundary quarantines that one
    try:
        return body.decode(charset).encode("utf-8", "surrogatepass")
    except (LookupError, UnicodeError):
        return body


def _charset(content_type: str | None) -> str | None:
    for part in (content_type or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower() or None
    return None
