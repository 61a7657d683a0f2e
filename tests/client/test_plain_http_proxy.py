"""Plain http is allowed only to this machine (the sandbox), so that credentials never cross the
network in the clear; the API client's and the token endpoint's httpx clients still read HTTP_PROXY
from the environment and sent the client secret and bearer tokens to it (a hostile review)."""

from __future__ import annotations

import contextlib
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from taptouch_resource import TaptouchClient
from taptouch_sandbox import Sandbox, SandboxConfig


class _Proxy:
    """An "HTTP proxy" on the network: records every request line and body it is sent, answers 502."""

    def __init__(self):
        self.seen: list[tuple[str, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                length = int(self.headers.get("Content-Length", 0) or 0)
                outer.seen.append((self.requestline, self.rfile.read(length) + str(self.headers).encode()))
                self.send_response(502)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_plain_http_loopback_api_is_never_reached_through_an_http_proxy(monkeypatch):
    """The API client allows plain http:// only to this machine (as the alert webhook), for the same
    reason: credentials must not cross the network in the clear. Yet its httpx clients (API and token
    endpoint) still read HTTP_PROXY: the client secret and the bearer token go to the proxy."""
    sb = Sandbox(SandboxConfig(seed=5, stores=2, days=2, end_date=date(2026, 11, 2), orders_per_day=5))
    with sb.serve() as served, _Proxy() as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        client = TaptouchClient(
            client_id="sandbox-client",
            client_secret="sandbox-secret",
            base_url=served,
            requests_per_second=None,
            sleep=lambda s: None,
            max_retries=0,
        )
        with client, contextlib.suppress(Exception):  # the proxy's 502s: what matters is what it was sent
            list(client.list_stores())
        assert proxy.seen == [], f"sent through the proxy in the clear: {[line for line, _ in proxy.seen]}"
