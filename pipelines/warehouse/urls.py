"""Database URLs read the way libpq reads them, and redacted before anything shows them.

libpq's user info runs to the first ``@`` and may hold ``#`` or ``?``, which :mod:`urllib.parse`
misreads, so URLs are parsed here by hand: :func:`redact_url` hides everything up to the **last**
``@`` and every ``password``; :func:`redact_text` cleans any text that may quote a URL; and
:func:`redacted_error` re-raises a psycopg error without the password or a chained original.
docs/security.md, "Database URLs and passwords".
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from urllib.parse import unquote

REDACTED = "***"
ACCEPTED_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>]*")
_SECRET_KEYS = frozenset({"password", "sslpassword"})  # libpq's: the user's, and the client key's passphrase
_KV_PASSWORD = re.compile(
    r"(?P<key>(?:^|(?<=\s))(?:ssl)?password\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)+)", re.IGNORECASE
)


class _Parts:
    """A URI split at the user info: ``prefix`` (``scheme://``), ``user``, ``password`` (None: no
    ``:`` in the user info), ``rest`` (hosts, path, query), ``conservative`` (see module doc)."""

    __slots__ = ("prefix", "user", "password", "rest")

    def __init__(self, prefix: str, user: str | None, password: str | None, rest: str):
        self.prefix, self.user, self.password, self.rest = prefix, user, password, rest


def _split(url: str, *, libpq: bool) -> _Parts | None:
    """``url`` split at its user info; None when it is not ``scheme://...``.

    ``libpq=True``: exactly libpq's rule (user info ends at the first ``@`` met before any
    ``/``). ``libpq=False``: the user info ends at the last ``@`` of the whole URL (what a
    person meant when the password holds an unencoded ``@`` or ``/``)."""
    match = _SCHEME.match(url)
    if not match:
        return None
    prefix, body = match.group(0), url[match.end() :]
    if libpq:
        end = len(body)
        for i, ch in enumerate(body):
            if ch in "@/":
                end = i
                break
        at = end if end < len(body) and body[end] == "@" else -1
    else:
        at = body.rfind("@")
    if at < 0:
        return _Parts(prefix, None, None, body)
    userinfo, rest = body[:at], body[at + 1 :]
    user, colon, password = userinfo.partition(":")
    return _Parts(prefix, user, password if colon else None, rest)


def _split_query(rest: str) -> tuple[str, str | None]:
    head, mark, query = rest.partition("?")
    return head, (query if mark else None)


def _redact_query(query: str) -> str:
    out = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        secret = eq and value and unquote(key).strip().lower() in _SECRET_KEYS  # an empty one hides nothing
        out.append(f"{key}={REDACTED}" if secret else pair)
    return "&".join(out)


def is_uri(url: str) -> bool:
    return _SCHEME.match(url) is not None


def scheme_of(url: str) -> str:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


def redact_url(url: str) -> str:
    """``url`` with its password hidden (``***``): the user info's password as libpq or a person
    would read it, every ``password=`` query parameter, or the ``password`` of a key/value
    connection string. Safe to print and log."""
    if not isinstance(url, str):
        return "<not a database URL>"
    parts = _split(url, libpq=False)
    if parts is None:  # a libpq key/value string, or not a URL at all
        return _KV_PASSWORD.sub(lambda m: m.group("key") + REDACTED, url)
    netloc_user = ""
    if parts.user is not None:
        netloc_user = parts.user + (f":{REDACTED}" if parts.password else ":" if parts.password == "" else "") + "@"
    head, query = _split_query(parts.rest)
    return parts.prefix + netloc_user + head + ("" if query is None else "?" + _redact_query(query))


def secrets_of(url: str) -> set[str]:
    """Every string that is (part of) the password of ``url``, in every reading: libpq's, the
    conservative one, percent-decoded or not, and query ``password=`` values."""
    found: set[str] = set()
    if not isinstance(url, str) or not url:
        return found
    readings = [p for p in (_split(url, libpq=True), _split(url, libpq=False)) if p is not None]
    for parts in readings:
        if parts.password:
            found.add(parts.password)
            # libpq reads ``a@b`` in a password as the end of the user info: ``b`` becomes a host
            pieces = parts.password.split("@")
            found.update(piece + "@" for piece in pieces[1:] if piece)
            found.update(piece for piece in re.split(r"[@/?#]", parts.password) if piece)
        _, query = _split_query(parts.rest)
        for pair in (query or "").split("&"):
            key, eq, value = pair.partition("=")
            if eq and value and unquote(key).strip().lower() in _SECRET_KEYS:
                found.add(value)
    if not readings:
        for match in _KV_PASSWORD.finditer(url):
            value = match.group("value")
            found.add(value)
            found.add(value.strip("'").replace("\\'", "'").replace("\\\\", "\\"))
    for value in list(found):
        with contextlib.suppress(UnicodeDecodeError):
            found.add(unquote(value, errors="strict"))
    return {s for s in found if s}


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets`` (longest first), every URL's password and every
    ``password=`` value hidden."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, REDACTED)
        elif secret:  # a short one only as a whole word: "p" must not mask every p of the message
            text = re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", REDACTED, text)
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    return _KV_PASSWORD.sub(lambda m: m.group("key") + REDACTED, text)


def redacted_error(exc: BaseException, url: str | None) -> BaseException:
    """A copy of ``exc`` (same class when it can be rebuilt from a message, else ``RuntimeError``)
    whose text carries no password of ``url``. Raise it outside the ``except`` block that caught
    ``exc`` so the original is not chained as its context."""
    message = redact_text(str(exc), secrets_of(url or ""))
    try:
        clean = type(exc)(message)
    except Exception:  # noqa: BLE001 - an exception class with another constructor
        clean = RuntimeError(f"{type(exc).__name__}: {message}")
    clean.__suppress_context__ = True
    return clean


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (the path replaced; the user info
    and the query, ``host=/socket/dir`` for instance, kept), read the way libpq reads it."""
    parts = _split(url, libpq=True)
    if parts is None:
        raise ValueError("not a URL")
    head, query = _split_query(parts.rest)
    hosts = head.split("/", 1)[0]
    userinfo = "" if parts.user is None else parts.user + ("" if parts.password is None else ":" + parts.password) + "@"
    return f"{parts.prefix}{userinfo}{hosts}/{database}" + ("" if query is None else "?" + query)
