"""Reading an answer with a size limit, for the API and the token endpoint alike."""

from __future__ import annotations

from typing import Any

import httpx

from .errors import TaptouchProtocolError


def send_bounded(http: httpx.Client, method: str, url: str, *, limit: int, what: str, **kwargs: Any) -> httpx.Response:
    """``http.request(method, url, **kwargs)`` with at most ``limit`` bytes of the decoded body read:
    a compressed answer that unpacks to gigabytes (a zip bomb) is refused instead of exhausting
    memory. Returns a fully read response (its body already decoded)."""
    with http.stream(method, url, **kwargs) as streamed:
        chunks, size = [], 0
        for chunk in streamed.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise TaptouchProtocolError(f"{what} answered more than {limit} bytes once decompressed; refusing it.")
            chunks.append(chunk)
    headers = [(k, v) for k, v in streamed.headers.items() if k.lower() not in ("content-encoding", "content-length")]
    return httpx.Response(streamed.status_code, headers=headers, content=b"".join(chunks), request=streamed.request)
